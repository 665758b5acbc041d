"""The one parameter validator shared by the SDK, the platform and the CLI.

Plans describe their input parameters with JSON Schema (spec "Input Parameters Schema Object":
platforms MUST support draft-04 and SHOULD be prepared for later drafts). A schema without
``$schema`` is read as draft-04. Here a schema is checked, parameters are validated against it
with messages that name the field, the rule and the allowed range, defaults are filled in, and
parameters marked sensitive (``writeOnly: true`` or ``x-sensitive: true``) are found and redacted
so that they never reach a log, a table or an error message.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

from jsonschema import (
    Draft4Validator,
    Draft6Validator,
    Draft7Validator,
    Draft201909Validator,
    Draft202012Validator,
)
from jsonschema.exceptions import SchemaError, ValidationError

from servicebay.osb._errors import BadRequest, InvalidParameters, ParameterProblem

__all__ = [
    "REDACTED",
    "apply_defaults",
    "check_schema",
    "redact",
    "sensitive_paths",
    "validate_parameters",
]

#: What a sensitive value is replaced with.
REDACTED = "***"
# spec: "Schemas MUST NOT be larger than 64kB."
_MAX_SCHEMA_BYTES = 64 * 1024
# Marks a path segment that matches any property name (additionalProperties, patternProperties).
_ANY = "*"
_ITEMS = "[]"  # a path segment: every element of an array


def _key(uri: str) -> str:
    return uri.split("://", 1)[-1].rstrip("#")


# Drafts a schema may declare: draft-04 (which the spec requires) and the later ones it says
# platforms SHOULD be prepared for. Keys are meta-schema URIs without scheme and trailing "#".
_DRAFTS: dict[str, Any] = {
    _key(klass.META_SCHEMA.get("$id") or klass.META_SCHEMA["id"]): klass
    for klass in (
        Draft4Validator,
        Draft6Validator,
        Draft7Validator,
        Draft201909Validator,
        Draft202012Validator,
    )
}


def _validator_class(schema: dict[str, Any]) -> Any:
    # A schema without (or with an unknown) $schema is read as draft-04; check_schema refuses
    # unknown ones before a schema reaches a catalog.
    declared = schema.get("$schema")
    if not isinstance(declared, str):
        return Draft4Validator
    return _DRAFTS.get(_key(declared), Draft4Validator)


def check_schema(schema: Any) -> None:
    """Raise ``BadRequest`` unless ``schema`` is a usable parameters schema.

    Checked: it is an object, at most 64 kB, has no external ``$ref`` (spec: "Schemas MUST NOT
    contain any external references"), and is valid against its draft's meta-schema.
    """
    if not isinstance(schema, dict):
        raise BadRequest("parameters schema must be a JSON object")
    size = len(json.dumps(schema, separators=(",", ":")).encode())
    if size > _MAX_SCHEMA_BYTES:
        raise BadRequest(f"parameters schema is {size} bytes; the limit is {_MAX_SCHEMA_BYTES}")
    for ref in _refs(schema):
        if not ref.startswith("#"):
            raise BadRequest(f"parameters schema has an external reference {ref!r}")
    declared = schema.get("$schema")
    if declared is not None and (not isinstance(declared, str) or _key(declared) not in _DRAFTS):
        raise BadRequest(
            f"parameters schema declares $schema {declared!r}; supported: JSON Schema draft-04, "
            "draft-06, draft-07, 2019-09 and 2020-12"
        )
    try:
        _validator_class(schema).check_schema(schema)
    except SchemaError as exc:
        where = ".".join(str(p) for p in exc.path)
        raise BadRequest(
            f"parameters schema is not valid JSON Schema{' at ' + where if where else ''}: "
            f"{exc.message}"
        ) from None


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


_VALIDATORS: dict[int, tuple[dict[str, Any], Any]] = {}
_VALIDATORS_KEPT = 256


def _validator_for(schema: dict[str, Any]) -> Any:
    """The validator of ``schema``, built once per schema object (a plan's schemas are fixed
    when its catalog is built, and building a validator costs as much as using it)."""
    cached = _VALIDATORS.get(id(schema))
    if cached is not None and cached[0] is schema:
        return cached[1]
    validator = _validator_class(schema)(schema)
    if len(_VALIDATORS) >= _VALIDATORS_KEPT:
        _VALIDATORS.pop(next(iter(_VALIDATORS)))
    # The schema is kept alongside, so its id cannot be reused by another dict meanwhile.
    _VALIDATORS[id(schema)] = (schema, validator)
    return validator


def validate_parameters(schema: dict[str, Any] | None, parameters: Any) -> None:
    """Raise ``InvalidParameters`` listing every way ``parameters`` violate ``schema``.

    Each message names the field, the rule and the allowed range, e.g.
    ``max_users: must be <= 100 (got 500)``. Values of sensitive fields are never echoed.
    Without a schema any JSON object (or no parameters) is accepted.
    """
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        problem = ParameterProblem("parameters", "type", "parameters: must be a JSON object")
        raise InvalidParameters(problem.message, problems=[problem])
    if schema is None:
        return
    validator = _validator_for(schema)
    errors = sorted(validator.iter_errors(parameters), key=lambda e: [str(p) for p in e.path])
    if errors:
        # Only a refusal needs to know what to hide; valid requests skip the walk.
        hidden = sensitive_paths(schema)
        problems = [problem for error in errors for problem in _problems(error, hidden)]
        raise InvalidParameters(
            "invalid parameters: " + "; ".join(p.message for p in problems), problems=problems
        )


def _join(path: list[str | int]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _problems(error: ValidationError, hidden: set[str]) -> list[ParameterProblem]:
    path: list[str | int] = list(error.absolute_path)
    rule = str(error.validator)
    if rule == "required" and isinstance(error.instance, dict):
        # jsonschema reports each missing property as its own error: "'name' is a required ..."
        names = [n for n in _names(error.validator_value) if n not in error.instance]
        names = [n for n in names if error.message.startswith(f"{n!r} ")] or names[:1]
        return [_located(rule, [*path, name], "is required") for name in names]
    if rule == "additionalProperties" and isinstance(error.instance, dict):
        detail = f"is not allowed ({_allowed_names(error)})"
        return [_located(rule, [*path, name], detail) for name in _extras(error)]
    detail = _describe(error)
    got = error.instance
    if not isinstance(got, (dict, list)):
        shown = REDACTED if _is_hidden(path, hidden) else json.dumps(got)
        detail += f" (got {shown})"
    return [_located(rule, path, detail)]


def _located(rule: str, path: list[str | int], detail: str) -> ParameterProblem:
    where = _join(path) or "parameters"
    return ParameterProblem(path=where, rule=rule, message=f"{where}: {detail}")


def _names(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _extras(error: ValidationError) -> list[str]:
    """The property names additionalProperties refused (not declared, matching no pattern)."""
    schema = error.schema if isinstance(error.schema, dict) else {}
    known = set(schema.get("properties") or {})
    patterns = list(schema.get("patternProperties") or {})
    return [
        str(name)
        for name in error.instance
        if name not in known and not any(re.search(p, str(name)) for p in patterns)
    ]


def _allowed_names(error: ValidationError) -> str:
    """What a refused property name could have been: the declared names and name patterns."""
    schema = error.schema if isinstance(error.schema, dict) else {}
    parts = [", ".join(str(name) for name in schema.get("properties") or {})]
    parts += [f"names matching {pattern}" for pattern in schema.get("patternProperties") or {}]
    allowed = "; ".join(part for part in parts if part)
    return f"allowed: {allowed}" if allowed else "no parameters are allowed here"


def _describe(error: ValidationError) -> str:
    rule, value = error.validator, error.validator_value
    schema = error.schema if isinstance(error.schema, dict) else {}
    if rule == "maximum":
        exclusive = schema.get("exclusiveMaximum") is True
        return f"must be {'<' if exclusive else '<='} {value}"
    if rule == "minimum":
        exclusive = schema.get("exclusiveMinimum") is True
        return f"must be {'>' if exclusive else '>='} {value}"
    if rule == "exclusiveMaximum":
        return f"must be < {schema.get('maximum', value)}"
    if rule == "exclusiveMinimum":
        return f"must be > {schema.get('minimum', value)}"
    simple: dict[str, Callable[[], str]] = {
        "type": lambda: f"must be of type {_either(value)}",
        "enum": lambda: f"must be one of {', '.join(json.dumps(v) for v in value)}",
        "const": lambda: f"must be {json.dumps(value)}",
        "minLength": lambda: f"must be at least {value} characters long",
        "maxLength": lambda: f"must be at most {value} characters long",
        "pattern": lambda: f"must match the pattern {value}",
        "multipleOf": lambda: f"must be a multiple of {value}",
        "minItems": lambda: f"must have at least {value} items",
        "maxItems": lambda: f"must have at most {value} items",
        "uniqueItems": lambda: "must not contain duplicate items",
        "minProperties": lambda: f"must have at least {value} properties",
        "maxProperties": lambda: f"must have at most {value} properties",
        "format": lambda: f"must be a valid {value}",
        "anyOf": lambda: "must match at least one of the allowed forms",
        "oneOf": lambda: "must match exactly one of the allowed forms",
        "not": lambda: "must not match the excluded form",
    }
    describe = simple.get(str(rule))
    if describe is not None:
        return describe()
    return f"violates rule {rule}"


def _either(value: Any) -> str:
    if isinstance(value, list):
        return " or ".join(str(v) for v in value)
    return str(value)


def _is_hidden(path: list[str | int], hidden: set[str]) -> bool:
    names = [_ITEMS if isinstance(p, int) else p for p in path]
    for length in range(1, len(names) + 1):
        prefix = names[:length]
        for candidate in hidden:
            parts = candidate.split(".")
            if len(parts) == length and all(
                c == p or (c == _ANY and p != _ITEMS) for c, p in zip(parts, prefix, strict=True)
            ):
                return True
    return False


def apply_defaults(
    schema: dict[str, Any] | None, parameters: dict[str, Any] | None
) -> dict[str, Any]:
    """Return a new dict: ``parameters`` with every absent property's schema ``default`` filled in.

    Nested objects are filled too when they are present (or have a default of their own).
    """
    result = copy.deepcopy(parameters) if parameters else {}
    if schema:
        _fill(schema, result, _definitions(schema))
    return result


def _fill(schema: dict[str, Any], target: dict[str, Any], defs: dict[str, Any]) -> None:
    for sub in _branches(schema, defs):
        for name, prop in (sub.get("properties") or {}).items():
            prop = _resolve(prop, defs)
            if not isinstance(prop, dict):
                continue
            if name not in target and "default" in prop:
                target[name] = copy.deepcopy(prop["default"])
            if isinstance(target.get(name), dict):
                _fill(prop, target[name], defs)


def sensitive_paths(schema: dict[str, Any] | None) -> set[str]:
    """Return the dotted paths of properties marked ``writeOnly: true`` or ``x-sensitive: true``.

    ``*`` stands for any property name (from ``additionalProperties`` or ``patternProperties``),
    ``[]`` for every element of an array (from ``items`` or ``additionalItems``).
    """
    found: set[str] = set()
    if schema:
        _collect(schema, "", found, _definitions(schema), depth=0)
    return found


def _collect(schema: Any, prefix: str, found: set[str], defs: dict[str, Any], depth: int) -> None:
    if depth > 32:  # a recursive $ref: stop rather than loop
        return
    for sub in _branches(schema, defs):
        children: list[tuple[str, Any]] = list((sub.get("properties") or {}).items())
        children += [(_ANY, s) for s in (sub.get("patternProperties") or {}).values()]
        if isinstance(sub.get("additionalProperties"), dict):
            children.append((_ANY, sub["additionalProperties"]))
        items = sub.get("items")
        # A tuple's schemas each apply at one position; hiding every element is the safe side.
        children += [(_ITEMS, s) for s in (items if isinstance(items, list) else [items])]
        if isinstance(sub.get("additionalItems"), dict):
            children.append((_ITEMS, sub["additionalItems"]))
        for name, prop in children:
            path = f"{prefix}.{name}" if prefix else name
            prop = _resolve(prop, defs)
            if not isinstance(prop, dict):
                continue
            if prop.get("writeOnly") is True or prop.get("x-sensitive") is True:
                found.add(path)
            else:
                _collect(prop, path, found, defs, depth + 1)


def redact(schema: dict[str, Any] | None, parameters: dict[str, Any] | None) -> dict[str, Any]:
    """Return a copy of ``parameters`` with every sensitive value replaced by ``"***"``."""
    result = copy.deepcopy(parameters) if parameters else {}
    for path in sensitive_paths(schema):
        _mask(result, path.split("."))
    return result


def _mask(node: Any, parts: list[str]) -> None:
    if not parts:
        return
    head, rest = parts[0], parts[1:]
    if head == _ITEMS:
        if isinstance(node, list):
            for index, element in enumerate(node):
                if rest:
                    _mask(element, rest)
                else:
                    node[index] = REDACTED
        return
    if not isinstance(node, dict):
        return
    names = list(node) if head == _ANY else [head] if head in node else []
    for name in names:
        if rest:
            _mask(node[name], rest)
        else:
            node[name] = REDACTED


def _definitions(schema: dict[str, Any]) -> dict[str, Any]:
    return {"#": schema}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Follow a local ``$ref`` (``#/definitions/x``); external refs are refused by check_schema."""
    seen = 0
    while isinstance(node, dict) and isinstance(node.get("$ref"), str) and seen < 32:
        ref: str = node["$ref"]
        if not ref.startswith("#"):
            return node
        target: Any = defs["#"]
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                return node
            target = target[part]
        node = target
        seen += 1
    return node


def _branches(schema: Any, defs: dict[str, Any]) -> list[dict[str, Any]]:
    """The schema itself plus its allOf/anyOf/oneOf branches, refs resolved."""
    schema = _resolve(schema, defs)
    if not isinstance(schema, dict):
        return []
    found = [schema]
    for key in ("allOf", "anyOf", "oneOf"):
        for branch in schema.get(key) or []:
            found.extend(_branches(branch, defs))
    return found
