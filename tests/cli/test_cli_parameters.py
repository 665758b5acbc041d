"""Command-line parameters: typed by the schema, merged with files, checked before sending."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servicebay.cli import _parameters as params
from servicebay.cli.output import CLIError
from servicebay.osb import InvalidParameters

SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-04/schema#",
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "size": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
        "ratio": {"type": "number"},
        "ha": {"type": "boolean"},
        "name": {"type": "string", "maxLength": 8, "description": "Display name."},
        "secret": {"type": "string", "writeOnly": True, "default": "dflt"},
        "version": {"enum": [1, 2, "beta"]},
        "tags": {"type": "array", "items": {"type": "integer"}},
        "limits": {"$ref": "#/definitions/limits"},
        "maybe": {"type": ["integer", "null"]},
    },
    "definitions": {"limits": {"type": "object", "properties": {"queues": {"type": "integer"}}}},
}


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        ("size=5", 5),
        ("ratio=0.5", 0.5),
        ("ratio=2", 2),
        ("ha=yes", True),
        ("ha=false", False),
        ("name=42", "42"),
        ("version=2", 2),
        ("version=beta", "beta"),
        ("tags=1,2,3", [1, 2, 3]),
        ("tags=[4, 5]", [4, 5]),
        ("maybe=null", None),
        ("maybe=7", 7),
        ("size=abc", "abc"),
    ],
)
def test_values_are_typed_by_the_schema(assignment: str, expected: Any) -> None:
    """`-p key=value` gets the JSON type the schema declares; no fit leaves the string."""
    _path, value = params.parse_assignment(assignment, SCHEMA)
    assert value == expected
    assert type(value) is type(expected)


def test_nested_keys_follow_refs() -> None:
    """`limits.queues=5` sets a nested property, typed through a local $ref."""
    result = params.from_command_line(["limits.queues=5", "name=x"], None, SCHEMA)
    assert result == {"limits": {"queues": 5}, "name": "x"}


def test_raw_json_assignment() -> None:
    """`key:=json` takes the value as JSON, whatever the schema says."""
    assert params.from_command_line(['extra:={"a": [1]}'], None, None) == {"extra": {"a": [1]}}


def test_unknown_keys_without_schema_stay_strings() -> None:
    """No schema: values stay as typed on the command line."""
    assert params.from_command_line(["size=5"], None, None) == {"size": "5"}


@pytest.mark.parametrize("bad", ["size", "=5", "x:=nope"])
def test_malformed_assignments_are_refused(bad: str) -> None:
    """An assignment without a name or with broken JSON is a clear error (exit 2)."""
    with pytest.raises(CLIError) as caught:
        params.parse_assignment(bad, SCHEMA)
    assert caught.value.exit_code == 2


def test_file_then_flags(tmp_path: Path) -> None:
    """--params-file (YAML or JSON) is read first; -p overrides it."""
    path = tmp_path / "p.yaml"
    path.write_text("size: 3\nname: from-file\nlimits:\n  queues: 1\n")
    result = params.from_command_line(["size=4", "limits.queues=2"], path, SCHEMA)
    assert result == {"size": 4, "name": "from-file", "limits": {"queues": 2}}


def test_bad_file_names_the_file_not_the_content(tmp_path: Path) -> None:
    """A file that is not an object is refused with its name."""
    path = tmp_path / "p.json"
    path.write_text("[1, 2]")
    with pytest.raises(CLIError, match=r"p\.json"):
        params.from_command_line([], path, SCHEMA)
    with pytest.raises(CLIError, match="cannot read"):
        params.from_command_line([], tmp_path / "missing.json", SCHEMA)


def test_check_names_field_rule_and_range() -> None:
    """Violations are reported with the field, the rule and the allowed range."""
    with pytest.raises(InvalidParameters) as caught:
        params.check(SCHEMA, None, {"size": 50, "name": "ok"})
    assert str(caught.value) == "invalid parameters: size: must be <= 10 (got 50)"
    assert [(p.path, p.rule) for p in caught.value.problems] == [("size", "maximum")]


def test_check_applies_defaults_and_namespace_constraints() -> None:
    """Defaults are filled before checking; namespace constraints apply on top."""
    constraints = {"properties": {"size": {"maximum": 2}}}
    filled = params.check(SCHEMA, constraints, {"name": "ok"})
    assert filled == {"name": "ok", "size": 1, "secret": "dflt"}
    with pytest.raises(InvalidParameters, match=r"size: must be <= 2 \(got 3\) \[namespace"):
        params.check(SCHEMA, constraints, {"name": "ok", "size": 3})


def test_check_never_echoes_a_sensitive_value() -> None:
    """A sensitive parameter's bad value does not appear in the message."""
    schema = {"properties": {"secret": {"type": "string", "writeOnly": True, "minLength": 20}}}
    with pytest.raises(InvalidParameters) as caught:
        params.check(schema, None, {"secret": "hunter2"})
    assert "hunter2" not in str(caught.value)


def test_redact_hides_sensitive_values() -> None:
    """Sensitive parameters are replaced by *** for display."""
    assert params.redact(SCHEMA, {"secret": "hunter2", "size": 2}) == {"secret": "***", "size": 2}


def test_describe_renders_schema_rows() -> None:
    """marketplace rows: type, required, default, allowed, sensitive (default hidden)."""
    rows = {row["name"]: row for row in params.describe(SCHEMA)}
    assert rows["size"]["allowed"] == "1..10"
    assert rows["size"]["default"] == 1
    assert rows["name"]["required"] is True
    assert rows["name"]["allowed"] == "<= 8 chars"
    assert rows["name"]["description"] == "Display name."
    assert rows["secret"]["sensitive"] is True
    assert rows["secret"]["default"] == "***"
    assert rows["version"]["allowed"] == "one of 1, 2, beta"
    assert rows["tags"]["type"] == "array of integer"
    assert rows["limits.queues"]["type"] == "integer"
    assert rows["maybe"]["type"] == "integer|null"


@given(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans())
def test_typed_values_round_trip_through_text(number: int, real: float, flag: bool) -> None:
    """Whatever a user types for a typed field comes back as the same JSON value."""
    assert params.coerce(str(number), {"type": "integer"}) == number
    assert params.coerce(repr(real), {"type": "number"}) == real
    assert params.coerce(str(flag).lower(), {"type": "boolean"}) is flag
    assert params.coerce(str(number), {"type": "string"}) == str(number)
