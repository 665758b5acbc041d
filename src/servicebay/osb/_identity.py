"""Who asked, and from where: the originating identity header and the context objects.

``X-Broker-API-Originating-Identity: <platform> <base64 JSON object>`` names the platform user
behind a request (spec "Originating Identity"). ``context`` objects describe where an instance
lives; profile.md defines them for Cloud Foundry and Kubernetes, and servicebay sends its own
(``platform: "servicebay"``). Context models keep unknown properties, since platforms MAY add
their own.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StringConstraints, ValidationError

from servicebay.osb._errors import BadRequest
from servicebay.osb._parse import describe_validation_error
from servicebay.osb._wire import Id, OptionalId, WireModel

__all__ = [
    "CloudFoundryContext",
    "Context",
    "KubernetesContext",
    "OriginatingIdentity",
    "ServicebayContext",
    "parse_context",
]


class OriginatingIdentity(WireModel):
    """The platform user behind a request: a platform name and a JSON object about the user."""

    platform: Annotated[Id, StringConstraints(pattern=r"^\S+$")]
    value: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def parse(cls, header: str) -> OriginatingIdentity:
        """Decode a header value; raise ``BadRequest`` if it is not ``platform base64(json)``."""
        parts = header.strip().split()
        if len(parts) != 2:
            raise BadRequest(
                "X-Broker-API-Originating-Identity must be '<platform> <base64 JSON object>'"
            )
        platform, encoded = parts
        try:
            raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
            value = json.loads(raw)
        except (binascii.Error, ValueError, RecursionError):  # nested too deep to decode
            raise BadRequest(
                "X-Broker-API-Originating-Identity value must be a base64-encoded JSON object"
            ) from None
        if not isinstance(value, dict):
            raise BadRequest(
                "X-Broker-API-Originating-Identity value must be a base64-encoded JSON object"
            )
        return cls(platform=platform, value=value)

    def to_header(self) -> str:
        """Encode as the header value."""
        raw = json.dumps(self.value, separators=(",", ":"), sort_keys=True).encode()
        return f"{self.platform} {base64.b64encode(raw).decode('ascii')}"


class Context(WireModel):
    """A context object: ``platform`` plus platform-specific properties (kept, not dropped)."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    platform: Id


class CloudFoundryContext(Context):
    """Cloud Foundry Context Object (profile.md)."""

    platform: Literal["cloudfoundry"] = "cloudfoundry"
    organization_guid: Id
    organization_name: OptionalId = None
    organization_annotations: dict[str, Any] | None = None
    space_guid: Id
    space_name: OptionalId = None
    space_annotations: dict[str, Any] | None = None
    instance_name: OptionalId = None
    instance_annotations: dict[str, Any] | None = None


class KubernetesContext(Context):
    """Kubernetes Context Object (profile.md)."""

    platform: Literal["kubernetes"] = "kubernetes"
    namespace: Id
    namespace_annotations: dict[str, Any] | None = None
    instance_annotations: dict[str, Any] | None = None
    clusterid: OptionalId = None
    instance_name: OptionalId = None


class ServicebayContext(Context):
    """The context servicebay's platform sends: the namespace and name of the instance."""

    platform: Literal["servicebay"] = "servicebay"
    namespace: OptionalId = None
    instance_name: OptionalId = None
    app: OptionalId = None


_CONTEXTS: dict[str, type[Context]] = {
    "cloudfoundry": CloudFoundryContext,
    "kubernetes": KubernetesContext,
    "servicebay": ServicebayContext,
}


def parse_context(data: Any) -> Context:
    """Read a ``context`` object as the model of its platform (plain ``Context`` if unknown).

    Raises ``BadRequest`` naming the property when the object breaks its profile.
    """
    if not isinstance(data, dict):
        raise BadRequest("context: must be a JSON object")
    platform = data.get("platform")
    model = _CONTEXTS.get(platform, Context) if isinstance(platform, str) else Context
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(describe_validation_error(exc, prefix="context")) from None
