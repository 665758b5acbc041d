"""Request bodies of the platform API: strict, unknown fields refused, names checked.

Parsing goes through :func:`parse_body`, which turns any problem into ``BadRequest`` naming
every offending field, so handlers only ever see valid input.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from servicebay.platform.services.errors import BadRequest, PayloadTooLarge

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
MAX_BODY = 1024 * 1024

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
NonEmpty = Annotated[str, StringConstraints(min_length=1, max_length=255)]
# A user name as tokens map to it (the same width as ``created_by``), no blanks.
Member = Annotated[str, StringConstraints(pattern=r"^\S{1,63}$")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class BrokerIn(_Body):
    """``POST /brokers``."""

    name: Name
    url: Annotated[str, StringConstraints(pattern=r"^https?://\S+$", max_length=2048)]
    # Sent in HTTP headers: no control characters (CR/LF would add headers), no ':' in a Basic user.
    username: Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f\x7f:]{1,255}$")] | None = None
    password: Annotated[str, StringConstraints(max_length=1024)] | None = None
    bearer_token: Annotated[str, StringConstraints(pattern=r"^[\x21-\x7e]{1,4096}$")] | None = None

    @model_validator(mode="after")
    def _one_kind_of_auth(self) -> BrokerIn:
        parts = urlsplit(self.url)
        if "@" in parts.netloc or parts.query or parts.fragment:
            # The URL is stored, listed and logged as is: credentials go in their own fields.
            raise ValueError(
                "url: give the broker's base URL without user, password, query or fragment "
                "(credentials go in username/password or bearer_token)"
            )
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.bearer_token is not None and self.username is not None:
            raise ValueError("give either username/password or bearer_token, not both")
        return self


class NamespaceSettings(_Body):
    """``PUT /namespaces/{name}``."""

    description: Annotated[str, StringConstraints(max_length=1024)] = ""
    visible_plans: list[NonEmpty] | None = None
    constraints: dict[str, dict[str, Any]] = Field(default_factory=dict)
    max_instances: Annotated[int, Field(ge=0)] | None = None
    # Who may use the namespace (user names); empty = every user. Left out of a PUT: kept.
    members: Annotated[list[Member], Field(max_length=1000)] | None = None


class NamespaceIn(NamespaceSettings):
    """``POST /namespaces``."""

    name: Name


class ProvisionIn(_Body):
    """``POST /instances``."""

    service: NonEmpty
    plan: NonEmpty
    name: Name
    namespace: Name = "default"
    parameters: dict[str, Any] = Field(default_factory=dict)
    maintenance_info: dict[str, Any] | None = None
    dry_run: bool = False


class UpdateIn(_Body):
    """``PATCH /instances/{name}``."""

    plan: NonEmpty | None = None
    parameters: dict[str, Any] | None = None
    maintenance_info: dict[str, Any] | None = None
    dry_run: bool = False


class BindIn(_Body):
    """``POST /bindings``."""

    instance: Name
    namespace: Name = "default"
    kind: Literal["app", "key"] = "app"
    app: Name | None = None
    name: Name | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class PurgeIn(_Body):
    """``POST /instances/{name}/purge`` (the body is optional)."""


M = TypeVar("M", bound=BaseModel)


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "body"
        if error["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown field")
        elif error["type"] == "string_pattern_mismatch" and error["loc"][-1] != "url":
            parts.append(f"{where}: must be a lowercase name (a-z, 0-9, '-', 1-63 chars)")
        else:
            parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def parse_body(model: type[M], raw: bytes, *, optional: bool = False) -> M:
    """Parse a JSON body into ``model`` or raise ``BadRequest``/``PayloadTooLarge``."""
    if len(raw) > MAX_BODY:
        raise PayloadTooLarge(f"the body exceeds {MAX_BODY} bytes")
    if not raw.strip() and optional:
        raw = b"{}"
    try:
        data = json.loads(raw)
    except ValueError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(_describe(exc)) from None
