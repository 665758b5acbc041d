"""Parameters on the command line: ``-p key=value`` typed by the plan's schema, files, checks.

``-p max_users=50`` becomes the integer 50 because the plan's schema says ``max_users`` is an
integer; ``-p limits.queues=5`` sets a nested property; ``-p tags:=["a","b"]`` takes raw JSON.
``--params-file`` reads JSON or YAML; ``-p`` values override it. Before anything is sent, the
result is checked with servicebay.osb's validator (the same one the platform and brokers use)
against the plan's schema and the namespace's constraints, so a mistake is reported at once
with the field, the rule and the range.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from servicebay.cli._api import JSON, Plan, Service
from servicebay.cli.output import CLIError

# servicebay.osb (pydantic models, jsonschema) is imported inside the functions that validate:
# most `bay` commands never need it, and every command pays for what the module imports.
REDACTED = "***"  # the same marker servicebay.osb.REDACTED uses

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def plan_schema(plan: Plan, action: str) -> JSON | None:
    """Return a plan's schema: ``instance_create``, ``instance_update`` or ``binding_create``."""
    return (plan.get("schemas") or {}).get(action)


def find_plan(service: Service, name: str) -> Plan:
    """Return the plan ``name`` of ``service`` or stop with the plans there are (exit 4)."""
    for plan in service["plans"]:
        if plan["name"] == name:
            return plan
    known = ", ".join(plan["name"] for plan in service["plans"]) or "none visible"
    raise CLIError(f"service {service['name']!r} has no plan {name!r} (plans: {known})", 4)


def from_command_line(
    assignments: list[str], params_file: Path | None, schema: JSON | None
) -> JSON:
    """Build the parameters object from ``--params-file`` then each ``-p`` assignment."""
    parameters = load_file(params_file) if params_file else {}
    for assignment in assignments:
        path, value = parse_assignment(assignment, schema)
        _set_path(parameters, path, value)
    return parameters


def load_file(path: Path, what: str = "parameters file") -> JSON:
    """Read a JSON or YAML object from ``path`` (YAML is a superset, so one parser reads both)."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise CLIError(f"cannot read {what} {str(path)!r}: {error.strerror}") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise CLIError(f"{what} {str(path)!r} is not valid JSON/YAML{at}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CLIError(f"{what} {str(path)!r} must hold an object")
    return data


def parse_assignment(assignment: str, schema: JSON | None) -> tuple[list[str], Any]:
    """Split ``key=value`` (typed by the schema) or ``key:=json`` into a path and a value."""
    raw_json = False
    if ":=" in assignment and assignment.index(":=") < assignment.find("=") + 1:
        key, text = assignment.split(":=", 1)
        raw_json = True
    elif "=" in assignment:
        key, text = assignment.split("=", 1)
    else:
        # Not echoed: a mistyped -p may be a bare secret.
        raise CLIError("a -p parameter must look like key=value or key:=json")
    if not key:
        raise CLIError("a -p parameter has no name before '='")
    path = _split_key(key, schema)
    if raw_json:
        try:
            return path, json.loads(text)
        except json.JSONDecodeError:
            raise CLIError(f"parameter {key!r}: the value after := is not JSON") from None
    return path, coerce(text, property_schema(schema, path))


def _split_key(key: str, schema: JSON | None) -> list[str]:
    """``limits.queues`` → ``["limits", "queues"]``, unless the schema has a property ``a.b``."""
    if schema and key in (schema.get("properties") or {}):
        return [key]
    return key.split(".")


def property_schema(schema: JSON | None, path: list[str]) -> JSON | None:
    """Return the sub-schema describing ``path``, following properties, allOf and local $refs."""
    node: Any = schema
    for name in path:
        found = None
        for branch in _branches(node, schema):
            properties = branch.get("properties") or {}
            if name in properties:
                found = _resolve(properties[name], schema)
                break
        if found is None:
            return None
        node = found
    return node if isinstance(node, dict) else None


def coerce(text: str, schema: JSON | None) -> Any:
    """Type a command-line string as the schema wants it; leave it a string when unsure.

    A value that fits no declared type stays a string, so the validator reports it with the
    field and the expected type instead of this function guessing.
    """
    if not schema:
        return text
    enum = schema.get("enum")
    if isinstance(enum, list):
        for candidate in enum:
            if _as_text(candidate) == text:
                return candidate
    declared = schema.get("type")
    types = declared if isinstance(declared, list) else [declared] if declared else []
    # Try the most specific readings first; "string" last, as it accepts anything.
    for kind in sorted(types, key=lambda t: t == "string"):
        converted = _convert(text, kind, schema)
        if converted is not _NO:
            return converted
    return text


_NO = object()


def _convert(text: str, kind: str, schema: JSON) -> Any:
    """Convert ``text`` to JSON type ``kind``, or return ``_NO``."""
    lowered = text.strip().lower()
    if kind == "string":
        return text
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            return _NO
    if kind == "number":
        for number in (int, float):
            try:
                return number(text)
            except ValueError:
                continue
        return _NO
    if kind == "boolean":
        return True if lowered in _TRUE else False if lowered in _FALSE else _NO
    if kind == "null":
        return None if lowered in {"null", "none", ""} else _NO
    if kind in {"array", "object"}:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = _NO
        if kind == "array" and not isinstance(value, list):
            items = schema.get("items") if isinstance(schema.get("items"), dict) else None
            return [coerce(part.strip(), items) for part in text.split(",")] if text else []
        return value if isinstance(value, dict) or kind == "array" else _NO
    return _NO


def _as_text(value: Any) -> str:
    """How a user would type an enum value."""
    return value if isinstance(value, str) else json.dumps(value)


def _set_path(target: JSON, path: list[str], value: Any) -> None:
    """Set ``target[a][b]... = value``, creating objects on the way."""
    node = target
    for name in path[:-1]:
        child = node.get(name)
        if not isinstance(child, dict):
            child = {}
            node[name] = child
        node = child
    node[path[-1]] = value


def check(
    schema: JSON | None,
    constraints: JSON | None,
    parameters: JSON,
    namespace: str | None = None,
    *,
    defaults: bool = True,
) -> JSON:
    """Validate parameters (after defaults) against the plan schema and namespace constraints.

    Returns the parameters with defaults filled in (``defaults=False``, for an update: as given,
    since an update sends only what the user gives). Raises ``InvalidParameters`` listing every
    problem of both schemas; a constraint's problems end ``[namespace NAME]``, as the platform's
    do, so the user sees which namespace refused (it may come from the environment or login).
    """
    from servicebay.osb import InvalidParameters, apply_defaults, validate_parameters

    filled = apply_defaults(schema, parameters) if defaults else parameters
    problems = []
    origin = f" [namespace {namespace}]" if namespace else " [namespace constraint]"
    for current, suffix in ((schema, ""), (constraints, origin)):
        try:
            validate_parameters(current, filled)
        except InvalidParameters as error:
            for problem in error.problems:
                problems.append(type(problem)(problem.path, problem.rule, problem.message + suffix))
    if problems:
        raise InvalidParameters(
            "invalid parameters: " + "; ".join(p.message for p in problems), problems=problems
        )
    return filled


def redact(schema: JSON | None, parameters: JSON) -> JSON:
    """Return parameters with every value the schema marks sensitive replaced by ``***``."""
    from servicebay.osb import redact as osb_redact

    return osb_redact(schema, parameters)


def describe(schema: JSON | None) -> list[dict[str, Any]]:
    """Flatten a schema into rows for ``bay marketplace``: one per (nested) property."""
    rows: list[dict[str, Any]] = []
    if schema:
        _describe(schema, schema, "", set(schema.get("required") or []), rows)
        from servicebay.osb import sensitive_paths

        hidden = sensitive_paths(schema)
        for row in rows:
            row["sensitive"] = row["name"] in hidden
            if row["sensitive"] and row["default"] is not None:
                row["default"] = REDACTED
    return rows


def _describe(
    node: JSON, root: JSON, prefix: str, required: set[str], rows: list[dict[str, Any]]
) -> None:
    """Append one row per property of ``node`` (recursing into nested objects)."""
    for branch in _branches(node, root):
        required = required | set(branch.get("required") or [])
        for name, raw in (branch.get("properties") or {}).items():
            prop = _resolve(raw, root)
            if not isinstance(prop, dict):
                continue
            path = f"{prefix}{name}"
            rows.append(
                {
                    "name": path,
                    "type": _type_text(prop),
                    "required": name in required,
                    "default": prop.get("default"),
                    "allowed": _allowed_text(prop),
                    "description": prop.get("description") or prop.get("title"),
                }
            )
            if prop.get("properties") or prop.get("allOf"):
                _describe(prop, root, f"{path}.", set(prop.get("required") or []), rows)


def _type_text(prop: JSON) -> str:
    """``integer``, ``string|null``, ``array of string``..."""
    declared = prop.get("type")
    text = "|".join(declared) if isinstance(declared, list) else str(declared or "any")
    items = prop.get("items")
    if text == "array" and isinstance(items, dict) and items.get("type"):
        text += f" of {items['type']}"
    return text


def _allowed_text(prop: JSON) -> str | None:
    """The rule a value must satisfy, in words: ``1..10``, ``one of a, b``, ``<= 64 chars``."""
    parts = []
    if isinstance(prop.get("enum"), list):
        parts.append("one of " + ", ".join(_as_text(v) for v in prop["enum"]))
    low, high = prop.get("minimum"), prop.get("maximum")
    if low is not None and high is not None:
        parts.append(f"{low}..{high}")
    elif low is not None:
        parts.append(f">= {low}")
    elif high is not None:
        parts.append(f"<= {high}")
    if prop.get("minLength") is not None:
        parts.append(f">= {prop['minLength']} chars")
    if prop.get("maxLength") is not None:
        parts.append(f"<= {prop['maxLength']} chars")
    if prop.get("pattern"):
        parts.append(f"matches {prop['pattern']}")
    if prop.get("format"):
        parts.append(f"format {prop['format']}")
    return ", ".join(parts) or None


def _branches(node: Any, root: Any) -> list[JSON]:
    """The schema and its ``allOf`` branches, local refs resolved."""
    node = _resolve(node, root)
    if not isinstance(node, dict):
        return []
    found = [node]
    for branch in node.get("allOf") or []:
        found.extend(_branches(branch, root))
    return found


def _resolve(node: Any, root: Any) -> Any:
    """Follow a local ``$ref`` such as ``#/definitions/limits`` (bounded, cycles stop)."""
    for _ in range(32):
        if not (isinstance(node, dict) and isinstance(node.get("$ref"), str)):
            return node
        ref: str = node["$ref"]
        if not ref.startswith("#"):
            return node
        target: Any = root
        for part in (p for p in ref[1:].split("/") if p):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                return node
            target = target[part]
        node = target
    return node
