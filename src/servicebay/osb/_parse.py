"""Reading untrusted bodies into models, with errors that name the field.

``parse(Model, data)`` is the single way the SDK and the client turn JSON (bytes, text or an
already decoded object) into a model: malformed JSON, a non-object body, a missing or empty
id, a wrong type — each becomes ``BadRequest`` whose description names every offending field,
e.g. ``service_id: must be a non-empty string; plan_id: is required``.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from servicebay.osb._errors import BadRequest

__all__ = ["describe_validation_error", "parse"]

M = TypeVar("M", bound=BaseModel)

_MESSAGES = {
    "missing": "is required",
    "string_type": "must be a string",
    "string_too_short": "must be a non-empty string",
    "bool_type": "must be a boolean",
    "int_type": "must be an integer",
    "dict_type": "must be a JSON object",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "list_type": "must be an array",
    "too_short": "must not be empty",
}


# pydantic's phrasing, reworded to read like the rest of our messages.
_REWORDING = (
    ("input should be greater than or equal to", "must be >="),
    ("input should be less than or equal to", "must be <="),
    ("input should be", "must be"),
    ("string should have", "must have"),
    ("list should have", "must have"),
)


def parse(model: type[M], data: Any) -> M:
    """Validate ``data`` (bytes, str or decoded JSON) as ``model``; raise ``BadRequest`` if not."""
    if isinstance(data, (bytes, bytearray, str)):
        if not data:
            data = "{}"
        try:
            data = json.loads(data, parse_constant=_no_constant)
        except ValueError:
            raise BadRequest("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(describe_validation_error(exc)) from None


def _no_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity, which JSON (RFC 8259) does not; letting them in
    # would store values that cannot be written back out.
    raise ValueError(f"{name} is not a JSON value")


def describe_validation_error(exc: ValidationError, *, prefix: str = "") -> str:
    """One readable line per problem: ``field.path: what is wrong`` (the input is not echoed)."""
    lines: list[str] = []
    for error in exc.errors(include_url=False, include_input=False):
        where = _location(error["loc"], prefix)
        message = _MESSAGES.get(error["type"])
        if message is None:
            message = str(error["msg"])
            message = message.removeprefix("Value error, ")
            message = message[:1].lower() + message[1:]
            for before, after in _REWORDING:
                message = message.replace(before, after)
        line = f"{where}: {message}" if where else message
        if line not in lines:
            lines.append(line)
    return "; ".join(lines)


def _location(loc: tuple[int | str, ...], prefix: str) -> str:
    text = prefix
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text
