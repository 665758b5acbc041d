"""The parameter validator: schema checks, messages naming field, rule and range, defaults,
sensitive fields and redaction."""

from typing import Any

import pytest

from servicebay import osb

DRAFT4 = "http://json-schema.org/draft-04/schema#"

CHAT: dict[str, Any] = {
    "$schema": DRAFT4,
    "type": "object",
    "properties": {
        "max_users": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
        "version": {"type": "integer", "enum": [1, 2], "default": 2},
        "name": {"type": "string", "minLength": 3, "maxLength": 20, "pattern": "^[a-z-]+$"},
        "ratio": {"type": "number", "minimum": 0, "maximum": 1, "exclusiveMaximum": True},
        "admin_token": {"type": "string", "writeOnly": True, "minLength": 8},
        "limits": {
            "type": "object",
            "properties": {
                "queues": {"type": "integer", "maximum": 50, "default": 5},
                "api_key": {"type": "string", "x-sensitive": True},
            },
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
    },
    "required": ["name"],
    "additionalProperties": False,
}


def _problems(parameters: Any, schema: dict[str, Any] | None = CHAT) -> list[osb.ParameterProblem]:
    with pytest.raises(osb.InvalidParameters) as info:
        osb.validate_parameters(schema, parameters)
    assert info.value.http_status == 400
    for problem in info.value.problems:
        assert problem.message in info.value.description
    return info.value.problems


def test_valid_parameters_pass() -> None:
    """Parameters inside every rule raise nothing."""
    osb.validate_parameters(CHAT, {"name": "team-chat", "max_users": 50, "limits": {"queues": 3}})


def test_no_schema_accepts_any_object_and_none() -> None:
    """Without a schema, any object (or no parameters) is accepted."""
    osb.validate_parameters(None, {"anything": [1, {"x": None}]})
    osb.validate_parameters(None, None)
    osb.validate_parameters(CHAT, {"name": "abc"})


@pytest.mark.parametrize(
    ("parameters", "path", "rule", "message"),
    [
        (
            {"name": "abc", "max_users": 500},
            "max_users",
            "maximum",
            "max_users: must be <= 100 (got 500)",
        ),
        (
            {"name": "abc", "max_users": 0},
            "max_users",
            "minimum",
            "max_users: must be >= 1 (got 0)",
        ),
        ({"name": "abc", "ratio": 1}, "ratio", "maximum", "ratio: must be < 1 (got 1)"),
        (
            {"name": "abc", "max_users": "many"},
            "max_users",
            "type",
            'max_users: must be of type integer (got "many")',
        ),
        ({"name": "abc", "version": 3}, "version", "enum", "version: must be one of 1, 2 (got 3)"),
        (
            {"name": "ab"},
            "name",
            "minLength",
            'name: must be at least 3 characters long (got "ab")',
        ),
        ({"name": "ABC"}, "name", "pattern", 'name: must match the pattern ^[a-z-]+$ (got "ABC")'),
        ({}, "name", "required", "name: is required"),
        (
            {"name": "abc", "colour": "red"},
            "colour",
            "additionalProperties",
            "colour: is not allowed (allowed: max_users, version, name, ratio, admin_token, "
            "limits, tags)",
        ),
        (
            {"name": "abc", "limits": {"queues": 51}},
            "limits.queues",
            "maximum",
            "limits.queues: must be <= 50 (got 51)",
        ),
        (
            {"name": "abc", "tags": ["a", 1]},
            "tags[1]",
            "type",
            "tags[1]: must be of type string (got 1)",
        ),
        (
            {"name": "abc", "tags": ["a", "b", "c"]},
            "tags",
            "maxItems",
            "tags: must have at most 2 items",
        ),
    ],
)
def test_violation_message_names_field_rule_and_range(
    parameters: dict[str, Any], path: str, rule: str, message: str
) -> None:
    """Each violation is reported with its path, rule and a readable message."""
    problems = _problems(parameters)
    assert [(p.path, p.rule, p.message) for p in problems] == [(path, rule, message)]


def test_all_violations_are_reported_at_once() -> None:
    """Several problems are listed together; object-level ones (required) first."""
    problems = _problems({"max_users": 500, "version": 9})
    assert [p.path for p in problems] == ["name", "max_users", "version"]
    assert len(problems) == 3


def test_sensitive_value_is_never_echoed_in_messages() -> None:
    """A writeOnly / x-sensitive value that breaks a rule is shown as *** in the message."""
    secret = "short"
    problems = _problems({"name": "abc", "admin_token": secret, "limits": {"api_key": 12345}})
    text = " ".join(p.message for p in problems)
    assert secret not in text
    assert "12345" not in text
    assert "admin_token: must be at least 8 characters long (got ***)" in text


def test_parameters_must_be_an_object() -> None:
    """A non-object parameters value is refused even without a schema."""
    problems = _problems([1, 2], schema=None)
    assert problems[0].path == "parameters"


def test_later_draft_schema_is_honoured() -> None:
    """A schema declaring draft-07 is validated with draft-07 rules (exclusiveMaximum number)."""
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"n": {"type": "integer", "exclusiveMaximum": 10}},
    }
    osb.check_schema(schema)
    osb.validate_parameters(schema, {"n": 9})
    assert _problems({"n": 10}, schema)[0].message == "n: must be < 10 (got 10)"


def test_apply_defaults_fills_missing_values_without_touching_input() -> None:
    """Defaults fill absent properties, nested ones too; the input dict is unchanged."""
    given = {"name": "abc", "limits": {}}
    result = osb.apply_defaults(CHAT, given)
    assert result == {"name": "abc", "max_users": 10, "version": 2, "limits": {"queues": 5}}
    assert given == {"name": "abc", "limits": {}}
    assert osb.apply_defaults(CHAT, {"name": "x", "max_users": 3})["max_users"] == 3
    assert osb.apply_defaults(None, None) == {}


def test_apply_defaults_follows_local_refs_and_allof() -> None:
    """Defaults declared behind a local $ref or in allOf are applied."""
    schema = {
        "definitions": {"size": {"type": "integer", "default": 1}},
        "allOf": [{"properties": {"size": {"$ref": "#/definitions/size"}}}],
    }
    assert osb.apply_defaults(schema, {}) == {"size": 1}


def test_sensitive_paths_finds_write_only_and_x_sensitive() -> None:
    """writeOnly and x-sensitive properties are found, nested ones with dotted paths."""
    assert osb.sensitive_paths(CHAT) == {"admin_token", "limits.api_key"}
    assert osb.sensitive_paths(None) == set()


def test_redact_replaces_only_sensitive_values() -> None:
    """Sensitive values become ***; others and the input dict are unchanged."""
    given = {"name": "abc", "admin_token": "s3cret-token", "limits": {"api_key": "k", "queues": 2}}
    assert osb.redact(CHAT, given) == {
        "name": "abc",
        "admin_token": "***",
        "limits": {"api_key": "***", "queues": 2},
    }
    assert given["admin_token"] == "s3cret-token"


def test_redact_covers_additional_properties_maps() -> None:
    """A sensitive additionalProperties schema redacts every key of that map."""
    schema = {
        "type": "object",
        "properties": {"env": {"type": "object", "additionalProperties": {"writeOnly": True}}},
    }
    assert osb.sensitive_paths(schema) == {"env.*"}
    assert osb.redact(schema, {"env": {"A": "1", "B": "2"}, "x": 1}) == {
        "env": {"A": "***", "B": "***"},
        "x": 1,
    }


def test_redact_covers_array_items() -> None:
    """Sensitive values inside array elements (items, tuple items, additionalItems) are
    found and redacted in every element; a refusal never echoes them either."""
    schema = {
        "type": "object",
        "properties": {
            "servers": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "host": {"type": "string"},
                        "password": {"type": "string", "minLength": 8, "writeOnly": True},
                    },
                },
            },
            "tokens": {"type": "array", "items": {"type": "string", "x-sensitive": True}},
            "pair": {
                "type": "array",
                "items": [{"type": "string"}, {"type": "string", "writeOnly": True}],
                "additionalItems": {"type": "object", "properties": {"key": {"writeOnly": True}}},
            },
        },
    }
    assert osb.sensitive_paths(schema) == {
        "servers.[].password",
        "tokens.[]",
        "pair.[]",
        "pair.[].key",
    }
    given = {
        "servers": [
            {"host": "a", "password": "pa55word-a"},
            {"host": "b", "password": "pw-b-long"},
        ],
        "tokens": ["t1-secret", "t2-secret"],
        "pair": ["user", "pass-secret"],
        "other": [1, 2],
    }
    assert osb.redact(schema, given) == {
        "servers": [{"host": "a", "password": "***"}, {"host": "b", "password": "***"}],
        "tokens": ["***", "***"],
        "pair": ["***", "***"],
        "other": [1, 2],
    }
    assert given["tokens"] == ["t1-secret", "t2-secret"]
    problems = _problems({"servers": [{"host": "a", "password": "short"}]}, schema)
    assert "short" not in " ".join(p.message for p in problems)


@pytest.mark.parametrize(
    ("schema", "needle"),
    [
        ([], "must be a JSON object"),
        ({"type": "nonsense"}, "not valid JSON Schema"),
        (
            {"properties": {"a": {"minimum": "one"}}},
            "not valid JSON Schema at properties.a.minimum",
        ),
        ({"properties": {"a": {"$ref": "https://example.com/x.json"}}}, "external reference"),
        ({"description": "x" * 70_000}, "the limit is 65536"),
    ],
)
def test_check_schema_refuses_bad_schemas(schema: Any, needle: str) -> None:
    """Invalid, external-referencing or oversized schemas are BadRequest."""
    with pytest.raises(osb.BadRequest) as info:
        osb.check_schema(schema)
    assert needle in info.value.description


def test_check_schema_accepts_schema_without_dollar_schema() -> None:
    """A schema without $schema is read as draft-04."""
    osb.check_schema({"type": "object", "properties": {"a": {"type": "integer", "maximum": 3}}})
    osb.check_schema(CHAT)


def test_every_missing_required_property_is_named_once() -> None:
    """Each missing required property gets its own problem, even when names overlap."""
    schema = {"type": "object", "required": ["a", "name", "ame"]}
    problems = _problems({}, schema)
    assert [p.path for p in problems] == ["a", "name", "ame"]
    assert all(p.rule == "required" for p in problems)


def test_every_unexpected_property_is_named() -> None:
    """Several unknown properties: one problem each; patternProperties count as declared."""
    schema = {
        "type": "object",
        "properties": {"known": {}},
        "patternProperties": {"^x-": {}},
        "additionalProperties": False,
    }
    problems = _problems({"known": 1, "x-ok": 2, "b": 3, "c": 4}, schema)
    assert sorted(p.path for p in problems) == ["b", "c"]
    allowed = "(allowed: known; names matching ^x-)"
    assert {p.message for p in problems} == {
        f"b: is not allowed {allowed}",
        f"c: is not allowed {allowed}",
    }


@pytest.mark.parametrize(
    "declared",
    [
        "http://json-schema.org/draft-04/schema#",
        "http://json-schema.org/draft-04/schema",
        "https://json-schema.org/draft-04/schema#",
        "http://json-schema.org/draft-06/schema#",
        "http://json-schema.org/draft-07/schema#",
        "https://json-schema.org/draft/2019-09/schema",
        "https://json-schema.org/draft/2020-12/schema",
    ],
)
def test_known_drafts_are_accepted(declared: str) -> None:
    """draft-04 and later drafts are understood, with or without trailing # or https."""
    osb.check_schema({"$schema": declared, "type": "object"})


@pytest.mark.parametrize("declared", ["http://example.com/my-meta", 4, "draft-04"])
def test_unknown_dollar_schema_is_refused(declared: object) -> None:
    """A $schema naming no known draft cannot be honoured: BadRequest naming it."""
    with pytest.raises(osb.BadRequest) as info:
        osb.check_schema({"$schema": declared, "type": "object"})
    assert "$schema" in info.value.description
