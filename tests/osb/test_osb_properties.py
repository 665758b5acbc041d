"""Property-based tests of protocol invariants (hypothesis)."""

import base64
import contextlib
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servicebay import osb

ids = st.text(min_size=1, max_size=40)
json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
objects = st.dictionaries(st.text(max_size=10), json_values, max_size=5)
optional_objects = st.none() | objects
maintenance = st.none() | st.builds(
    osb.MaintenanceInfo, version=st.none() | ids, description=st.none() | st.text(max_size=30)
)

provision_requests = st.builds(
    osb.ProvisionRequest,
    service_id=ids,
    plan_id=ids,
    context=optional_objects,
    organization_guid=st.none() | ids,
    space_guid=st.none() | ids,
    parameters=optional_objects,
    maintenance_info=maintenance,
)
bind_requests = st.builds(
    osb.BindRequest,
    service_id=ids,
    plan_id=ids,
    context=optional_objects,
    app_guid=st.none() | ids,
    bind_resource=st.none()
    | st.builds(osb.BindResource, app_guid=st.none() | ids, route=st.none() | ids),
    parameters=optional_objects,
    predecessor_binding_id=st.none() | ids,
)
bind_responses = st.builds(
    osb.BindResponse,
    credentials=optional_objects,
    syslog_drain_url=st.none() | st.text(max_size=30),
    route_service_url=st.none() | st.text(max_size=30),
    endpoints=st.none()
    | st.lists(
        st.builds(
            osb.Endpoint,
            host=ids,
            ports=st.lists(st.integers(1, 65535).map(str), min_size=1, max_size=3),
            protocol=st.sampled_from([None, "tcp", "udp", "all"]),
        ),
        max_size=3,
    ),
    operation=st.none() | st.text(max_size=30),
)
last_operations = st.builds(
    osb.LastOperationResponse,
    state=st.sampled_from(list(osb.OperationState)),
    description=st.none() | st.text(max_size=30),
    instance_usable=st.none() | st.booleans(),
    update_repeatable=st.none() | st.booleans(),
)


@given(st.one_of(provision_requests, bind_requests, bind_responses, last_operations))
def test_to_wire_then_parse_is_identity(model: osb.WireModel) -> None:
    """Any model written to the wire and read back is equal to itself."""
    again = osb.parse(type(model), model.to_json())
    assert again == model
    assert again.to_wire() == model.to_wire()


@given(provision_requests)
def test_to_wire_never_writes_null_fields(request: osb.ProvisionRequest) -> None:
    """Absent optional fields are left out rather than written as null."""
    body = request.to_wire()
    assert all(value is not None for value in body.values())


@given(st.sampled_from(["service_id", "plan_id"]), st.sampled_from(["", None, 5, [], {}]))
def test_bad_required_id_is_refused_naming_it(field: str, bad: Any) -> None:
    """A missing, empty or mistyped required id is a 400 naming that field."""
    body: dict[str, Any] = {"service_id": "s", "plan_id": "p"}
    if bad is None:
        del body[field]
    else:
        body[field] = bad
    for model in (osb.ProvisionRequest, osb.BindRequest):
        try:
            osb.parse(model, body)
        except osb.BadRequest as exc:
            assert exc.description.startswith(f"{field}: ")
        else:
            raise AssertionError(f"{model.__name__} accepted {field}={bad!r}")


@given(st.text(min_size=1, max_size=20).filter(lambda s: not any(c.isspace() for c in s)), objects)
def test_originating_identity_round_trips(platform: str, value: dict[str, Any]) -> None:
    """Any platform and JSON object survive to_header() and parse()."""
    identity = osb.OriginatingIdentity(platform=platform, value=value)
    assert osb.OriginatingIdentity.parse(identity.to_header()) == identity


@given(st.binary(max_size=60))
def test_originating_identity_parse_never_crashes(raw: bytes) -> None:
    """Arbitrary header bytes give an identity or BadRequest, never another exception."""
    header = "p " + base64.b64encode(raw).decode()
    try:
        identity = osb.OriginatingIdentity.parse(header)
    except osb.BadRequest:
        return
    assert isinstance(identity.value, dict)


@given(st.binary(max_size=200))
def test_parse_of_arbitrary_bytes_is_model_or_bad_request(raw: bytes) -> None:
    """parse() turns any input into a model or BadRequest, nothing else."""
    for model in (osb.ProvisionRequest, osb.Catalog, osb.LastOperationResponse):
        with contextlib.suppress(osb.BadRequest):
            osb.parse(model, raw)


SECRET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "password": {"type": "string", "writeOnly": True, "minLength": 12},
        "nested": {
            "type": "object",
            "properties": {"token": {"type": "string", "x-sensitive": True, "maxLength": 4}},
        },
        "keys": {
            "type": "object",
            "additionalProperties": {"type": "string", "writeOnly": True, "minLength": 40},
        },
        "size": {"type": "integer"},
    },
}
secrets = st.text(min_size=6, max_size=30).filter(lambda s: s.strip() == s and '"' not in s)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(secrets, secrets, st.dictionaries(st.text(min_size=1, max_size=5), secrets, max_size=3))
def test_redact_never_leaks_a_sensitive_value(
    password: str, token: str, keys: dict[str, str]
) -> None:
    """No sensitive value survives redact(), nor appears in a validation message."""
    parameters = {"password": password, "nested": {"token": token}, "keys": keys, "size": "x"}
    redacted = json.dumps(osb.redact(SECRET_SCHEMA, parameters))
    texts = [redacted]
    try:
        osb.validate_parameters(SECRET_SCHEMA, parameters)
    except osb.InvalidParameters as exc:
        texts.append(exc.description)
        texts.extend(p.message for p in exc.problems)
    for secret in [password, token, *keys.values()]:
        for text in texts:
            assert json.dumps(secret) not in text


@given(objects)
def test_apply_defaults_never_changes_given_values(parameters: dict[str, Any]) -> None:
    """Defaults only add keys; every given value is kept as given."""
    schema = {
        "type": "object",
        "properties": {"a": {"default": 1}, "b": {"default": {"c": 2}}, "": {"default": None}},
    }
    filled = osb.apply_defaults(schema, parameters)
    for key, value in parameters.items():
        assert filled[key] == value
    assert set(filled) >= {"a", "b", ""}


@given(st.integers(-1000, 1000), st.integers(0, 1000), st.integers(-3000, 3000))
def test_range_violations_are_reported_with_their_bound(low: int, span: int, value: int) -> None:
    """An integer outside minimum..maximum is refused naming field, rule, bound and value;
    inside, it passes."""
    high = low + span
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": low, "maximum": high}},
    }
    try:
        osb.validate_parameters(schema, {"n": value})
    except osb.InvalidParameters as exc:
        assert not low <= value <= high
        (problem,) = exc.problems
        assert problem.path == "n"
        if value < low:
            assert (problem.rule, problem.message) == (
                "minimum",
                f"n: must be >= {low} (got {value})",
            )
        else:
            assert (problem.rule, problem.message) == (
                "maximum",
                f"n: must be <= {high} (got {value})",
            )
    else:
        assert low <= value <= high


@given(st.integers(1, 10), st.integers(0, 5))
def test_defaults_that_fit_the_schema_validate(default: int, extra: int) -> None:
    """Parameters completed by apply_defaults from valid defaults always validate."""
    schema = {
        "type": "object",
        "properties": {
            "size": {"type": "integer", "minimum": 1, "maximum": 10, "default": default},
            "limits": {
                "type": "object",
                "properties": {"queues": {"type": "integer", "maximum": 5, "default": extra}},
            },
        },
        "required": ["size"],
    }
    filled = osb.apply_defaults(schema, {"limits": {}})
    osb.validate_parameters(schema, filled)
    assert filled == {"size": default, "limits": {"queues": extra}}
