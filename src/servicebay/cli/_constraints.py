"""``--constraint`` on the command line: a namespace's extra parameter rules, written short.

The platform keeps a namespace's constraints as JSON schemas keyed ``service`` (every plan of
the service) or ``service/plan``; parameters must satisfy them on top of the plan's own schema
(PLATFORM_API, namespaces). Most rules are a bound or a list of allowed values, so
``bay namespace create|update --constraint TARGET:RULE`` writes them short:

=====================================  ========================================================
``sandbox/param:size<=3``              ``{"properties": {"size": {"maximum": 3}}}``
``sandbox/param:size>=2``              ``{"properties": {"size": {"minimum": 2}}}``
``chat:version=1,2``                   ``{"properties": {"version": {"enum": [1, 2]}}}``
``chat/small:limits.rooms<=10``        a nested property (``properties.limits.properties…``)
``chat:={"required": ["version"]}``    any JSON schema, taken as it is
=====================================  ========================================================

Rules for the same target merge into one schema (``size>=2`` and ``size<=3`` give both bounds).
Values after ``=`` are read as JSON when they parse (``1`` is a number, ``true`` a boolean),
as text otherwise. The platform checks the resulting schema when it stores it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from servicebay.cli._api import JSON
from servicebay.cli.output import CLIError

# The platform's key rule (namespaces.py), minus ':' which separates target and rule here.
_TARGET = re.compile(r"^[^/\s:]+(/[^/\s:]+)?$")
_RULE = re.compile(r"^(?P<field>[^<>=\s]+)\s*(?P<op><=|>=|=)\s*(?P<value>.*)$")
_BOUND = {"<=": "maximum", ">=": "minimum"}
FORMS = "TARGET:FIELD<=N, TARGET:FIELD>=N, TARGET:FIELD=A,B,… or TARGET:=JSON-SCHEMA"


def parse(text: str) -> tuple[str, JSON]:
    """Split ``TARGET:RULE`` into the target and the JSON schema the rule stands for."""
    target, colon, rule = text.partition(":")
    target = target.strip()
    if not colon or not _TARGET.match(target):
        raise CLIError(
            f"--constraint {text!r}: expected {FORMS} (TARGET is service or service/plan)"
        )
    if rule.startswith("="):
        return target, _raw_schema(text, rule[1:])
    found = _RULE.match(rule.strip())
    if not found:
        raise CLIError(f"--constraint {text!r}: expected {FORMS}")
    op, value = found["op"], found["value"].strip()
    if op in _BOUND:
        keyword: dict[str, Any] = {_BOUND[op]: _number(text, value)}
    else:
        keyword = {"enum": _values(text, value)}
    schema: JSON = keyword
    for name in reversed(found["field"].split(".")):
        if not name:
            raise CLIError(f"--constraint {text!r}: empty name in field path")
        schema = {"properties": {name: schema}}
    return target, schema


def apply(constraints: dict[str, JSON], rules: list[str]) -> dict[str, JSON]:
    """Return ``constraints`` with each ``TARGET:RULE`` merged into its target's schema."""
    result = {key: dict(value) for key, value in constraints.items()}
    for text in rules:
        target, schema = parse(text)
        result[target] = merge(result.get(target, {}), schema)
    return result


def merge(base: JSON, extra: JSON) -> JSON:
    """Deep-merge two schemas: objects merge key by key, anything else is replaced by ``extra``."""
    merged = dict(base)
    for key, value in extra.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            merged[key] = merge(current, value)
        else:
            merged[key] = value
    return merged


def fields(schema: JSON, prefix: str = "") -> list[str]:
    """The dotted property paths a constraint schema names (``limits.rooms``...)."""
    found: list[str] = []
    for branch in [schema, *(b for b in schema.get("allOf") or [] if isinstance(b, dict))]:
        for name, sub in (branch.get("properties") or {}).items():
            path = f"{prefix}{name}"
            nested = fields(sub, f"{path}.") if isinstance(sub, dict) else []
            found.extend(nested or [path])
    return found


def _raw_schema(text: str, raw: str) -> JSON:
    try:
        schema = json.loads(raw)
    except json.JSONDecodeError as error:
        raise CLIError(f"--constraint {text!r}: not valid JSON ({error.msg})") from None
    if not isinstance(schema, dict):
        raise CLIError(f"--constraint {text!r}: the schema must be a JSON object")
    return schema


def _number(text: str, value: str) -> int | float:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    raise CLIError(f"--constraint {text!r}: a bound must be a number, not {value!r}")


def _values(text: str, value: str) -> list[Any]:
    if not value:
        raise CLIError(f"--constraint {text!r}: give the allowed values after '='")
    values: list[Any] = []
    for part in (p.strip() for p in value.split(",")):
        try:
            values.append(json.loads(part))
        except json.JSONDecodeError:
            values.append(part)
    return values
