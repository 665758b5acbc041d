"""Request validation: everything checked before the author sees a request.

Every rule answers with the spec's status and a description naming what is wrong:
malformed JSON (a body over `MAX_BODY` bytes, nested deeper than `MAX_DEPTH`, or with a string
that is not Unicode text) → 400 before anything runs; wrong types and missing or empty ids →
400 (via `osb.parse`); unknown
`service_id` / `plan_id` (checked against the catalog) → 400; parameters violating the plan's
JSON schema → 400 naming the field; a `maintenance_info.version` other than the plan's → 422
MaintenanceInfoConflict (spec "Provisioning" / "Updating a Service Instance"; an empty
`maintenance_info: {}` names no version and is tolerated).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from servicebay import osb
from servicebay.broker._routing import OSBRequest

__all__ = [
    "MAX_BODY",
    "MAX_DEPTH",
    "CatalogIndex",
    "accepts_incomplete",
    "check_maintenance_info",
    "fingerprint",
    "optional_query_id",
    "parse_body",
    "read_json",
    "require_path_id",
    "require_query_id",
    "validated_parameters",
]

#: Largest request body accepted; catalog schemas alone are bounded to 64 kB by the spec.
MAX_BODY = 1024 * 1024
#: Deepest nesting of objects and arrays accepted in a body: far more than any parameter set
#: needs, and far enough below Python's recursion limit for every later step (schema check,
#: encoding, sealing) to handle the body without a RecursionError.
MAX_DEPTH = 64

M = TypeVar("M", bound=BaseModel)


class CatalogIndex:
    """The catalog with services and plans indexed by id, checked once at app creation."""

    def __init__(self, catalog: osb.Catalog) -> None:
        self.catalog = catalog
        self.body = catalog.to_json()
        self._services: dict[str, osb.Service] = {}
        self._plans: dict[tuple[str, str], osb.Plan] = {}
        for service in catalog.services:
            if service.id in self._services:
                raise ValueError(f"catalog: service id {service.id!r} appears twice")
            self._services[service.id] = service
            for plan in service.plans:
                if (service.id, plan.id) in self._plans:
                    raise ValueError(f"catalog: plan id {plan.id!r} appears twice")
                self._plans[(service.id, plan.id)] = plan
                for schema in (
                    plan.instance_create_schema(),
                    plan.instance_update_schema(),
                    plan.binding_create_schema(),
                ):
                    if schema is not None:
                        osb.check_schema(schema)

    def service(self, service_id: str) -> osb.Service:
        """The service with that id, or 400 naming the unknown `service_id`."""
        service = self._services.get(service_id)
        if service is None:
            raise osb.BadRequest(f"service_id: unknown service {service_id!r}")
        return service

    def plan(self, service: osb.Service, plan_id: str) -> osb.Plan:
        """The plan of `service` with that id, or 400 naming the unknown `plan_id`."""
        plan = self._plans.get((service.id, plan_id))
        if plan is None:
            raise osb.BadRequest(f"plan_id: unknown plan {plan_id!r} of service {service.name!r}")
        return plan

    def lookup(self, service_id: str, plan_id: str) -> tuple[osb.Service, osb.Plan]:
        """Service and plan by id, both checked against the catalog (400 if unknown)."""
        service = self.service(service_id)
        return service, self.plan(service, plan_id)

    def knows(self, service_id: str, plan_id: str) -> bool:
        """True while the catalog still offers that plan of that service."""
        return (service_id, plan_id) in self._plans

    def recorded(self, service_id: str, plan_id: str) -> tuple[osb.Service, osb.Plan]:
        """Service and plan of a recorded resource, even if the catalog has since dropped them.

        spec "Catalog Management": brokers MAY remove plans while instances of them exist; those
        instances must still be fetched, polled and deleted. A dropped plan (or service) is
        stood in for by a minimal placeholder with the recorded id.
        """
        plan = self._plans.get((service_id, plan_id))
        service = self._services.get(service_id)
        if service is not None and plan is not None:
            return service, plan
        placeholder = osb.Plan(
            id=plan_id, name=plan_id, description="no longer in the catalog", bindable=True
        )
        if service is None:
            service = osb.Service(
                id=service_id,
                name=service_id,
                description="no longer in the catalog",
                bindable=True,
                plans=[placeholder],
            )
        return service, plan or placeholder


async def read_json(request: OSBRequest) -> dict[str, Any]:
    """The request body as a JSON object; 400 when it is too large, not JSON, not Unicode text,
    holds a number no double or Python int can hold, nests deeper than `MAX_DEPTH` or is not
    an object."""
    body = await _read_body(request)
    if not body.strip():
        raise osb.BadRequest("request body is empty; a JSON object is required")
    try:
        # Strict: a lone surrogate encoded in the bytes is not text (json.loads would pass it).
        text = body.decode(json.detect_encoding(body))
        data = _JSON.decode(text)
    except UnicodeDecodeError as error:
        raise osb.BadRequest(f"request body is not valid JSON: {error}") from None
    except ValueError as error:
        # JSONDecodeError, and an integer of more digits than Python converts (4,300).
        raise osb.BadRequest(f"request body is not valid JSON: {error}") from None
    except RecursionError:
        raise osb.BadRequest(_TOO_DEEP) from None
    # Both checks scan the text first (in C) and walk the data only if the text allows it.
    if text.count("[") + text.count("{") > MAX_DEPTH and _deeper_than(data, MAX_DEPTH):
        raise osb.BadRequest(_TOO_DEEP)
    if _SURROGATE_ESCAPE.search(text) and not _is_text(data):
        # A "\ud800" escape is valid JSON but no Unicode text: it could be neither stored
        # (UTF-8) nor answered, so it is refused here, before anything is recorded.
        raise osb.BadRequest(
            "request body is not valid JSON text: a string holds a lone UTF-16 surrogate "
            "(such as \\ud800 without its pair), which is not a Unicode character"
        )
    if not isinstance(data, dict):
        raise osb.BadRequest("request body must be a JSON object")
    return data


_TOO_DEEP = f"request body nests objects and arrays deeper than {MAX_DEPTH} levels"
# The escape of a UTF-16 surrogate (D800-DFFF), paired or not: the only way JSON text that
# decoded as UTF-8 can yield a string that is not Unicode text.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _deeper_than(data: Any, limit: int) -> bool:
    """True if `data` nests objects and arrays more than `limit` levels (level by level, so a
    body the JSON decoder accepted cannot exhaust the stack here)."""
    level = [data] if isinstance(data, dict | list) else []
    for _ in range(limit):
        level = [
            child
            for value in level
            for child in (value.values() if isinstance(value, dict) else value)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True


def _is_text(data: Any) -> bool:
    """True if every string in `data` (keys included) is Unicode text, i.e. encodes as UTF-8."""
    try:
        _exact(data).encode()
    except UnicodeEncodeError:
        return False
    return True


async def _read_body(request: OSBRequest) -> bytes:
    message = await request.receive()
    if message["type"] == "http.request" and not message.get("more_body", False):
        body = bytes(message.get("body", b""))  # the usual case: the whole body at once
    else:
        parts = bytearray()
        while message["type"] == "http.request":
            parts += message.get("body", b"")
            if len(parts) > MAX_BODY or not message.get("more_body", False):
                break
            message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        body = bytes(parts)
    if len(body) > MAX_BODY:
        raise osb.BadRequest(f"request body exceeds {MAX_BODY} bytes")
    return body


def _not_json(token: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (RFC 8259) does not, nor can we store them.
    raise osb.BadRequest(f"request body is not valid JSON: {token} is not a JSON number")


def _finite(token: str) -> float:
    # A number beyond a double's range (1e999) decodes as infinity, which no JSON text can
    # hold: it could be neither stored nor answered, so it is refused like NaN.
    number = float(token)
    if math.isinf(number):
        raise osb.BadRequest(
            f"request body is not valid JSON: the number {token[:40]} is out of range "
            "(beyond a 64-bit floating point number)"
        )
    return number


# As json.loads(body, parse_constant=..., parse_float=...) does, with one decoder for all.
_JSON = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite)


def parse_body(model: type[M], data: Mapping[str, Any]) -> M:
    """The body as `model`, or 400 naming the first offending field."""
    return osb.parse(model, dict(data))


def accepts_incomplete(request: OSBRequest) -> bool:
    """The `accepts_incomplete` query parameter: true, or false when absent."""
    value = request.query_params.get("accepts_incomplete")
    if value is None or value.lower() == "false":
        return False
    if value.lower() == "true":
        return True
    raise osb.BadRequest(f"accepts_incomplete: must be true or false (got {value!r})")


def require_path_id(request: OSBRequest, name: str) -> str:
    """A path id (instance_id, binding_id); 400 when empty."""
    value = str(request.path_params.get(name, ""))
    if not value:
        raise osb.BadRequest(f"{name}: must be a non-empty string")
    return value


def require_query_id(request: OSBRequest, name: str) -> str:
    """A mandatory query id (deprovision/unbind `service_id`, `plan_id`); 400 if missing/empty."""
    value = request.query_params.get(name)
    if not value:
        raise osb.BadRequest(f"{name}: query parameter is required and must be non-empty")
    return value


def optional_query_id(request: OSBRequest, name: str) -> str | None:
    """An optional query id; if present it MUST be non-empty (400 otherwise)."""
    value = request.query_params.get(name)
    if value is not None and not value:
        raise osb.BadRequest(f"{name}: if present, must be a non-empty string")
    return value


def check_maintenance_info(requested: osb.MaintenanceInfo | None, plan: osb.Plan) -> None:
    """422 MaintenanceInfoConflict unless `requested` names the plan's maintenance version."""
    version = requested.version if requested is not None else None
    if not version:
        return  # nothing requested, or an empty `maintenance_info: {}`: tolerated
    current = plan.maintenance_info.version if plan.maintenance_info is not None else None
    if version != current:
        expected = f"{current!r}" if current else "none"
        raise osb.MaintenanceInfoConflict(
            f"maintenance_info.version {version!r} does not match the plan's ({expected}); "
            "fetch the catalog again"
        )


def validated_parameters(
    schema: dict[str, Any] | None, parameters: Mapping[str, Any] | None, *, defaults: bool
) -> dict[str, Any]:
    """Parameters checked against the plan's schema (400 naming the field), defaults applied.

    Platforms send the same few parameter sets again and again, and checking one against its
    schema cost more than the rest of a provision's logic: the outcome for a valid set is
    remembered per schema and handed out as a copy. Only small sets (`_CACHED_MAX` characters
    of JSON, with defaults) of schemas without sensitive fields are remembered, keyed by a
    digest of their exact JSON: the memory stays a few MiB, and no password stays in it.
    """
    given = dict(parameters or {})
    if schema is None:
        osb.validate_parameters(schema, given)  # still refuses a non-object
        return given
    key = _cache_key(schema, defaults, given)
    if key is None:
        osb.validate_parameters(schema, given)
        return osb.apply_defaults(schema, given) if defaults else given
    known = _VALIDATED.get(key)
    if known is not None and known[0] is schema:
        result: dict[str, Any] = json.loads(known[1])
        return result
    osb.validate_parameters(schema, given)
    result = osb.apply_defaults(schema, given) if defaults else given
    kept = _exact(result)
    if len(kept) <= _CACHED_MAX:
        _keep(_VALIDATED, key, (schema, kept))
    return result


def _cache_key(
    schema: dict[str, Any], defaults: bool, given: dict[str, Any]
) -> tuple[int, bool, bytes] | None:
    """Where the outcome for `given` is remembered, or None if it must not be: not plain JSON
    (never from a request), too large, or the schema has sensitive fields."""
    try:
        text = _exact(given)
    except (TypeError, ValueError):
        return None
    if len(text) > _CACHED_MAX or _has_sensitive_fields(schema):
        return None
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=32).digest()
    return id(schema), defaults, digest


def _has_sensitive_fields(schema: dict[str, Any]) -> bool:
    known = _SENSITIVE.get(id(schema))
    if known is None or known[0] is not schema:
        known = (schema, _marks_sensitive(schema))
        _keep(_SENSITIVE, id(schema), known)
    return known[1]


def _marks_sensitive(node: Any) -> bool:
    """True if any subschema is marked ``writeOnly`` or ``x-sensitive``: wherever it sits, even
    under ``items`` or in an unused definition, which `osb.sensitive_paths` does not list."""
    if isinstance(node, dict):
        if node.get("writeOnly") is True or node.get("x-sensitive") is True:
            return True
        return any(_marks_sensitive(value) for value in node.values())
    if isinstance(node, list):
        return any(_marks_sensitive(value) for value in node)
    return False


def _keep(memory: dict[Any, Any], key: Any, value: Any) -> None:
    if len(memory) >= _VALIDATED_KEPT:
        memory.pop(next(iter(memory)))
    # The schema is kept alongside, so its id cannot be reused by another dict meanwhile.
    memory[key] = value


_VALIDATED: dict[tuple[int, bool, bytes], tuple[dict[str, Any], str]] = {}
_SENSITIVE: dict[int, tuple[dict[str, Any], bool]] = {}
_VALIDATED_KEPT = 1024
_CACHED_MAX = 4096  # characters of JSON: 1024 sets stay under ~5 MiB (a body may be 1 MiB)
_exact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def fingerprint(request: Mapping[str, Any]) -> str:
    """A stable digest of the attributes that make two requests "the same" (idempotency)."""
    return hashlib.sha256(_canonical(request).encode()).hexdigest()


# One encoder for every call: json.dumps with options builds a new one each time.
_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str).encode
