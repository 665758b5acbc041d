"""Parameter samples derived from a plan's JSON schema, so the self-test can drive any broker.

The self-test knows nothing about the broker under test except its catalog. To provision or bind
on a plan whose schema requires parameters it builds a *valid* sample from the schema (defaults,
enums, minimums), a *variant* that is valid but different (to provoke 409 Conflict on a reused
id), and an *invalid* one (to provoke 400 Bad Request naming the field). Only the draft-04
keywords that shape simple values are understood; anything the generator cannot satisfy is
reported as "no sample", and the checks that need one are skipped rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jsonschema

JSON = dict[str, Any]


@dataclass(frozen=True)
class InvalidSample:
    """Parameters that violate ``schema`` at ``field``; the broker's 400 should name the field."""

    parameters: JSON
    field: str


def _value(schema: JSON, variant: bool) -> Any:
    """A value satisfying ``schema``; ``variant`` picks a different one where there is room."""
    if schema.get("enum"):
        options = list(schema["enum"])
        return options[1] if variant and len(options) > 1 else options[0]
    if "default" in schema and not variant:
        return schema["default"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "integer":
        low = int(schema.get("minimum", 0))
        high = int(schema.get("maximum", low + 1))
        return min(low + 1, high) if variant else low
    if kind == "number":
        lowest = float(schema.get("minimum", 0))
        highest = float(schema.get("maximum", lowest + 1))
        return min(lowest + 1, highest) if variant else lowest
    if kind == "boolean":
        # False is the safe choice: flags like "fail" or "delete_data" mean "do something".
        return False
    if kind == "string":
        text = "conformance-b" if variant else "conformance-a"
        return text[: int(schema.get("maxLength", len(text)))]
    if kind == "array":
        return []
    if kind == "object":
        return _object(schema, variant)
    return None


def _object(schema: JSON, variant: bool) -> JSON:
    """Required properties always; optional ones only when they carry a default."""
    properties: JSON = schema.get("properties", {})
    required = set(schema.get("required", []))
    out: JSON = {}
    for name, sub in properties.items():
        if name in required or "default" in sub:
            out[name] = _value(sub, variant=False)
    if variant:
        for name, sub in properties.items():
            changed = _value(sub, variant=True)
            if changed != out.get(name) and changed is not None:
                out[name] = changed
                break
    return out


def _is_valid(schema: JSON, parameters: JSON) -> bool:
    return bool(jsonschema.Draft4Validator(schema).is_valid(parameters))


def valid_sample(schema: JSON | None) -> JSON | None:
    """Parameters valid under ``schema`` (``{}`` when there is none), or None if not found."""
    if not schema:
        return {}
    sample = _object(schema, variant=False)
    return sample if _is_valid(schema, sample) else None


def variant_sample(schema: JSON | None) -> JSON | None:
    """Valid parameters that differ from :func:`valid_sample`, or None if there is no room."""
    base = valid_sample(schema)
    if base is None:
        return None
    if not schema:
        return {"conformance_variant": True}
    sample = _object(schema, variant=True)
    if sample != base and _is_valid(schema, sample):
        return sample
    if schema.get("additionalProperties", True) is not False:
        extra = {**base, "conformance_variant": True}
        if _is_valid(schema, extra):
            return extra
    return None


def invalid_sample(schema: JSON | None) -> InvalidSample | None:
    """Parameters that break one property's type or range, or None if the schema allows all."""
    base = valid_sample(schema)
    if not schema or base is None:
        return None
    for name, sub in schema.get("properties", {}).items():
        kind = sub.get("type")
        if "maximum" in sub and kind in ("integer", "number"):
            bad: Any = int(sub["maximum"]) + 1000 if kind == "integer" else sub["maximum"] + 1000.5
        elif kind in ("integer", "number", "boolean"):
            bad = "not-a-" + str(kind)
        elif kind == "string":
            bad = 12345
        else:
            continue
        candidate = {**base, name: bad}
        if not _is_valid(schema, candidate):
            return InvalidSample(candidate, name)
    return None
