"""The memory of validated parameter sets: small, free of secrets, and never wrong."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servicebay import osb
from servicebay.broker import _validation
from servicebay.broker._validation import validated_parameters

SECRET = "hunter2-never-kept"


def _schema(**extra: Any) -> dict[str, Any]:
    return {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "properties": {
            "size": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
            "name": {"type": "string", "maxLength": 20_000},
            **extra,
        },
        "additionalProperties": False,
    }


def _kept() -> str:
    """Everything the memory holds, as text."""
    return repr(list(_validation._VALIDATED.items()))


@pytest.fixture(autouse=True)
def _empty_memory() -> None:
    _validation._VALIDATED.clear()
    _validation._SENSITIVE.clear()


def test_a_remembered_valid_set_validates_equal_and_as_a_copy() -> None:
    """The second check of a valid set answers what the first did, as a fresh copy."""
    schema = _schema()
    first = validated_parameters(schema, {"name": "db"}, defaults=True)
    assert len(_validation._VALIDATED) == 1
    first["size"] = 99  # an author mutating what it was given
    again = validated_parameters(schema, {"name": "db"}, defaults=True)
    assert again == {"name": "db", "size": 1}
    assert validated_parameters(schema, {"name": "db"}, defaults=False) == {"name": "db"}


def test_a_large_parameter_set_is_not_kept() -> None:
    """A set over the bound is checked every time and nothing of it stays in memory."""
    schema = _schema()
    large = {"name": "x" * (_validation._CACHED_MAX + 1)}
    assert validated_parameters(schema, large, defaults=True) == {**large, "size": 1}
    assert _validation._VALIDATED == {}
    assert validated_parameters(schema, {"name": "small"}, defaults=True)
    assert len(_validation._VALIDATED) == 1


@pytest.mark.parametrize(
    "marked",
    [
        {"password": {"type": "string", "writeOnly": True}},
        {"password": {"type": "string", "x-sensitive": True}},
        {"keys": {"type": "array", "items": {"type": "string", "writeOnly": True}}},
        {"db": {"type": "object", "properties": {"password": {"x-sensitive": True}}}},
    ],
)
def test_parameters_of_a_schema_with_sensitive_fields_are_not_kept(marked: dict[str, Any]) -> None:
    """Nothing of a schema with writeOnly / x-sensitive fields (anywhere) is remembered: no
    secret, not even a digest of a set that holds one."""
    schema = _schema(**marked)
    field = next(iter(marked))
    value: Any = {"password": SECRET} if field == "db" else SECRET
    if field == "keys":
        value = [SECRET]
    for _ in range(2):
        assert validated_parameters(schema, {field: value}, defaults=True)[field] == value
    assert _validation._VALIDATED == {}
    assert SECRET not in _kept()


def test_only_a_digest_of_the_given_set_is_kept() -> None:
    """The key is a digest: the given JSON text is not held a second time."""
    validated_parameters(_schema(), {"name": "a-rather-distinctive-name"}, defaults=False)
    ((key, (_, result)),) = _validation._VALIDATED.items()
    assert "a-rather-distinctive-name" not in repr(key)
    assert json.loads(result) == {"name": "a-rather-distinctive-name"}


_VALUES = st.one_of(
    st.integers(-3, 12),
    st.sampled_from([1.0, 2.5, True, False, None, "1", [], {}]),
    st.text(max_size=5),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.sampled_from(["size", "name", "other"]), _VALUES, max_size=3),
        min_size=1,
        max_size=6,
    )
)
def test_invalid_input_is_never_answered_valid(sets: list[dict[str, Any]]) -> None:
    """Whatever was remembered before (1 and 1.0 and true included), each set gets exactly the
    outcome of a fresh check."""
    schema = _schema()
    for parameters in sets + sets:
        try:
            osb.validate_parameters(schema, dict(parameters))
        except osb.BadRequest:
            with pytest.raises(osb.BadRequest):
                validated_parameters(schema, parameters, defaults=True)
        else:
            expected = osb.apply_defaults(schema, dict(parameters))
            assert validated_parameters(schema, parameters, defaults=True) == expected
