"""Request validation: every bad input gets the spec's status, a readable description, and
changes nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_broker_support import (
    ASYNC,
    FIXED,
    SERVICE,
    SYNC,
    UNBINDABLE,
    SampleBroker,
    bind_body,
    ids,
    provision_body,
    running,
)

from servicebay import osb
from servicebay.broker import BindDetails, BindResult, OperationContext
from servicebay.broker._store import Store
from servicebay.broker._validation import MAX_DEPTH

INSTANCE = "/v2/service_instances/i-1"
BINDING = INSTANCE + "/service_bindings/b-1"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[SampleBroker, httpx.AsyncClient]]:
    broker = SampleBroker()
    async with running(broker, f"sqlite:///{tmp_path}/broker.db") as client:
        yield broker, client


def _store(client: httpx.AsyncClient) -> Store:
    store: Store = client.app.state.store  # type: ignore[attr-defined]
    return store


async def _provisioned(client: httpx.AsyncClient, plan: str = SYNC) -> None:
    response = await client.put(INSTANCE, json=provision_body(plan))
    assert response.status_code == 201, response.text


def _description(response: httpx.Response) -> str:
    description = response.json()["description"]
    assert isinstance(description, str)
    return description


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b"[1, 2]", b'"text"', b"", b"null"])
async def test_malformed_json_body_is_400(
    env: tuple[SampleBroker, httpx.AsyncClient], body: bytes
) -> None:
    """A body that is not a JSON object is a bad request; nothing is provisioned."""
    broker, client = env
    response = await client.put(INSTANCE, content=body)
    assert response.status_code == 400
    assert _description(response)
    assert broker.calls == []
    assert await _store(client).get_instance("i-1") is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"service_id": 42}, "service_id"),
        ({"plan_id": ["x"]}, "plan_id"),
        ({"parameters": "size=1"}, "parameters"),
        ({"context": "dev"}, "context"),
        ({"organization_guid": 7}, "organization_guid"),
        ({"maintenance_info": "1.2.0"}, "maintenance_info"),
    ],
)
async def test_wrong_types_are_400_naming_the_field(
    env: tuple[SampleBroker, httpx.AsyncClient], change: dict[str, Any], field: str
) -> None:
    """A field of the wrong JSON type is refused with a description naming it."""
    broker, client = env
    response = await client.put(INSTANCE, json={**provision_body(), **change})
    assert response.status_code == 400
    assert field in _description(response)
    assert broker.calls == []


@pytest.mark.parametrize("field", ["service_id", "plan_id"])
@pytest.mark.parametrize("value", [None, ""])
async def test_missing_or_empty_ids_are_400(
    env: tuple[SampleBroker, httpx.AsyncClient], field: str, value: str | None
) -> None:
    """service_id and plan_id must be present and non-empty, on provision and bind."""
    broker, client = env
    body = provision_body()
    if value is None:
        del body[field]
    else:
        body[field] = value
    response = await client.put(INSTANCE, json=body)
    assert response.status_code == 400
    assert field in _description(response)
    await _provisioned(client)
    bind = bind_body()
    bind[field] = value
    response = await client.put(BINDING, json={k: v for k, v in bind.items() if v is not None})
    assert response.status_code == 400
    assert field in _description(response)
    assert broker.count("bind") == 0


async def test_empty_path_ids_are_400(env: tuple[SampleBroker, httpx.AsyncClient]) -> None:
    """An empty instance or binding id in the path is a bad request, not a missing route."""
    broker, client = env
    response = await client.put("/v2/service_instances/", json=provision_body())
    assert response.status_code == 400
    assert "instance_id" in _description(response)
    await _provisioned(client)
    response = await client.put(INSTANCE + "/service_bindings/", json=bind_body())
    assert response.status_code == 400
    assert "binding_id" in _description(response)
    assert broker.count("bind") == 0


async def test_unknown_service_id_is_400(env: tuple[SampleBroker, httpx.AsyncClient]) -> None:
    """A service_id not in the catalog is refused, naming the field."""
    broker, client = env
    response = await client.put(INSTANCE, json={**provision_body(), "service_id": "nope"})
    assert response.status_code == 400
    assert "service_id" in _description(response)
    assert broker.calls == []


async def test_unknown_plan_id_is_400(env: tuple[SampleBroker, httpx.AsyncClient]) -> None:
    """A plan_id that is not a plan of the service is refused, naming the field."""
    broker, client = env
    response = await client.put(INSTANCE, json={**provision_body(), "plan_id": "nope"})
    assert response.status_code == 400
    assert "plan_id" in _description(response)
    assert broker.calls == []


async def test_parameters_violating_the_schema_are_400_naming_the_field(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """Parameters outside the plan's JSON schema are refused with the field and the rule."""
    broker, client = env
    response = await client.put(INSTANCE, json=provision_body(size=50))
    assert response.status_code == 400
    description = _description(response)
    assert "size" in description
    assert "10" in description
    assert broker.calls == []
    assert await _store(client).get_instance("i-1") is None


async def test_unknown_parameter_is_400(env: tuple[SampleBroker, httpx.AsyncClient]) -> None:
    """A parameter the schema does not allow (additionalProperties false) is refused by name."""
    _, client = env
    response = await client.put(INSTANCE, json=provision_body(colour="red"))
    assert response.status_code == 400
    assert "colour" in _description(response)


async def test_sensitive_parameter_value_is_not_echoed(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """A wrong writeOnly parameter is named but its value never appears in the error."""
    _, client = env
    response = await client.put(INSTANCE, json=provision_body(secret=12345678))
    assert response.status_code == 400
    assert "secret" in _description(response)
    assert "12345678" not in response.text


async def test_schema_defaults_reach_the_author(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """The author receives parameters with the schema's defaults applied."""
    broker, client = env
    await _provisioned(client)
    assert broker.calls[0][1].parameters == {"size": 1}


async def test_repeated_parameter_sets_are_checked_and_defaulted_each_time(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """The same parameters again are refused again, or accepted with fresh defaults that no
    earlier author call could have changed."""
    broker, client = env
    for _ in range(2):
        response = await client.put(INSTANCE, json=provision_body(size=50))
        assert response.status_code == 400 and "size" in _description(response)
    for n in (1, 2):
        response = await client.put(f"/v2/service_instances/i-{n}", json=provision_body())
        assert response.status_code == 201
        broker.calls[-1][1].parameters["size"] = 99  # an author mutating what it was given
    assert [call[1].parameters for call in broker.calls] == [{"size": 99}, {"size": 99}]
    record = await _store(client).get_instance("i-2")
    assert record is not None and record.parameters == {"size": 1}


async def test_bind_parameters_are_validated(env: tuple[SampleBroker, httpx.AsyncClient]) -> None:
    """Bind parameters are checked against the plan's binding schema."""
    broker, client = env
    await _provisioned(client)
    response = await client.put(BINDING, json=bind_body(size=0))
    assert response.status_code == 400
    assert "size" in _description(response)
    assert broker.count("bind") == 0
    assert await _store(client).get_binding("i-1", "b-1") is None


async def test_update_parameters_are_validated(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """Update parameters are checked against the plan's update schema; nothing changes."""
    broker, client = env
    await _provisioned(client)
    response = await client.patch(
        INSTANCE, json={"service_id": SERVICE, "parameters": {"size": "big"}}
    )
    assert response.status_code == 400
    assert "size" in _description(response)
    assert broker.count("update") == 0
    record = await _store(client).get_instance("i-1")
    assert record is not None
    assert record.parameters == {"size": 1}


async def test_plan_not_bindable_is_400(env: tuple[SampleBroker, httpx.AsyncClient]) -> None:
    """A bind on a plan declared bindable: false is refused."""
    broker, client = env
    await _provisioned(client, UNBINDABLE)
    response = await client.put(BINDING, json=bind_body(UNBINDABLE))
    assert response.status_code == 400
    assert "bindable" in _description(response)
    assert broker.count("bind") == 0


async def test_requires_app_is_422_when_app_guid_missing(tmp_path: Path) -> None:
    """A broker that binds applications only answers 422 RequiresApp without app_guid."""

    class AppsOnly(SampleBroker):
        def requires_app(self, service: osb.Service, plan: osb.Plan) -> bool:
            return True

        async def bind(self, details: BindDetails, ctx: OperationContext) -> BindResult:
            return BindResult(credentials={"app": details.app_guid})

    async with running(AppsOnly(), f"sqlite:///{tmp_path}/b.db") as client:
        await _provisioned(client)
        body = bind_body()
        del body["bind_resource"]
        response = await client.put(BINDING, json=body)
        assert response.status_code == 422
        assert response.json()["error"] == "RequiresApp"
        legacy = await client.put(BINDING, json={**body, "app_guid": "app-9"})
        assert legacy.status_code == 201
        assert legacy.json()["credentials"] == {"app": "app-9"}


async def test_maintenance_info_conflict_is_422(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """A maintenance_info.version other than the plan's is 422 MaintenanceInfoConflict."""
    broker, client = env
    body = {**provision_body(), "maintenance_info": {"version": "1.1.0"}}
    response = await client.put(INSTANCE, json=body)
    assert response.status_code == 422
    assert response.json()["error"] == "MaintenanceInfoConflict"
    assert broker.calls == []
    await _provisioned(client)
    update = {"service_id": SERVICE, "maintenance_info": {"version": "9.0.0"}}
    response = await client.patch(INSTANCE, json=update)
    assert response.status_code == 422
    assert response.json()["error"] == "MaintenanceInfoConflict"


async def test_matching_maintenance_info_is_accepted(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """The plan's own maintenance_info.version is accepted."""
    _, client = env
    body = {**provision_body(), "maintenance_info": {"version": "1.2.0"}}
    assert (await client.put(INSTANCE, json=body)).status_code == 201


async def test_empty_maintenance_info_is_tolerated(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """An empty `maintenance_info: {}` names no version and is not a conflict."""
    _, client = env
    body = {**provision_body(), "maintenance_info": {}}
    assert (await client.put(INSTANCE, json=body)).status_code == 201
    update = {"service_id": SERVICE, "maintenance_info": {}}
    assert (await client.patch(INSTANCE, json=update)).status_code == 200


@pytest.mark.parametrize("missing", ["service_id", "plan_id"])
async def test_delete_without_service_or_plan_id_is_400(
    env: tuple[SampleBroker, httpx.AsyncClient], missing: str
) -> None:
    """Deprovision and unbind need service_id and plan_id in the query string."""
    broker, client = env
    await _provisioned(client)
    query = {k: v for k, v in ids().items() if k != missing}
    response = await client.delete(INSTANCE, params=query)
    assert response.status_code == 400
    assert missing in _description(response)
    response = await client.delete(INSTANCE, params={**query, missing: ""})
    assert response.status_code == 400
    response = await client.delete(BINDING, params=query)
    assert response.status_code == 400
    assert broker.count("deprovision") == 0


async def test_delete_with_unknown_plan_is_400(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """Deprovision query ids are checked against the catalog."""
    _, client = env
    await _provisioned(client)
    response = await client.delete(INSTANCE, params={"service_id": SERVICE, "plan_id": "nope"})
    assert response.status_code == 400
    assert "plan_id" in _description(response)


@pytest.mark.parametrize("value", ["yes", "1", ""])
async def test_invalid_accepts_incomplete_is_400(
    env: tuple[SampleBroker, httpx.AsyncClient], value: str
) -> None:
    """accepts_incomplete must be true or false."""
    _, client = env
    response = await client.put(
        INSTANCE, params={"accepts_incomplete": value}, json=provision_body()
    )
    assert response.status_code == 400
    assert "accepts_incomplete" in _description(response)


@pytest.mark.parametrize("name", ["service_id", "plan_id", "operation"])
async def test_empty_optional_query_ids_are_400(
    env: tuple[SampleBroker, httpx.AsyncClient], name: str
) -> None:
    """Optional query ids (fetch, last_operation) must be non-empty when present."""
    _, client = env
    await _provisioned(client)
    response = await client.get(INSTANCE + "/last_operation", params={name: ""})
    assert response.status_code == 400
    assert name in _description(response)


async def test_unknown_extension_fields_are_ignored(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """Vendor extension fields in a request are accepted and ignored (spec MUST)."""
    _, client = env
    body = {**provision_body(), "x-vendor-thing": {"a": 1}}
    assert (await client.put(INSTANCE, json=body)).status_code == 201


async def test_oversized_body_is_400(env: tuple[SampleBroker, httpx.AsyncClient]) -> None:
    """A body over 1 MiB is refused before it is parsed."""
    broker, client = env
    body = {**provision_body(), "context": {"platform": "x", "blob": "a" * (1024 * 1024 + 1)}}
    response = await client.put(INSTANCE, json=body)
    assert response.status_code == 400
    assert broker.calls == []


async def test_plan_change_on_non_updateable_plan_is_422(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """Changing away from a plan with plan_updateable: false is refused as unsupported."""
    broker, client = env
    await _provisioned(client, FIXED)
    response = await client.patch(INSTANCE, json={"service_id": SERVICE, "plan_id": SYNC})
    assert response.status_code == 422
    body = response.json()
    assert "plan_updateable" in body["description"]
    assert body["update_repeatable"] is False
    assert broker.count("update") == 0


async def test_update_of_another_service_is_400(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """An update naming an unknown service_id is refused."""
    _, client = env
    await _provisioned(client)
    response = await client.patch(INSTANCE, json={"service_id": "other"})
    assert response.status_code == 400
    assert "service_id" in _description(response)


async def test_bind_with_other_plan_than_instance_is_400(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """A bind naming a plan the instance does not use is refused."""
    _, client = env
    await _provisioned(client)
    response = await client.put(BINDING, json=bind_body(ASYNC))
    assert response.status_code == 400
    assert "plan_id" in _description(response)


async def test_bind_to_unknown_instance_is_404(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """A bind to an instance the broker does not know is 404."""
    broker, client = env
    response = await client.put(BINDING, json=bind_body())
    assert response.status_code == 404
    assert broker.calls == []


async def test_update_of_unknown_instance_is_404(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """An update of an instance the broker does not know is 404."""
    _, client = env
    response = await client.patch(INSTANCE, json={"service_id": SERVICE})
    assert response.status_code == 404


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
async def test_non_json_numbers_are_400(
    env: tuple[SampleBroker, httpx.AsyncClient], token: str
) -> None:
    """NaN and Infinity are not JSON: refused like any malformed body."""
    broker, client = env
    body = f'{{"service_id": "{SERVICE}", "plan_id": "{SYNC}", "parameters": {{"size": {token}}}}}'
    response = await client.put(INSTANCE, content=body.encode())
    assert response.status_code == 400
    assert token in _description(response)
    assert broker.calls == []


@pytest.mark.parametrize("number", ["1e999", "-1e999", "1.5E+400"])
@pytest.mark.parametrize(
    "where",
    [
        '{"size": NUMBER}',
        '{"name": "\\ud83d\\ude00", "x": NUMBER}',  # review F12: was a 500
        '{"\\ud83d\\ude00": [NUMBER]}',
    ],
)
async def test_numbers_out_of_range_are_400_on_provision_and_bind(
    env: tuple[SampleBroker, httpx.AsyncClient], number: str, where: str
) -> None:
    """A number beyond a double's range decodes as infinity, which JSON cannot hold: a bad
    request naming the number, even beside a paired surrogate escape, and nothing recorded."""
    broker, client = env
    await _provisioned(client)
    raw = where.replace("NUMBER", number)
    for url, body in ((INSTANCE.replace("i-1", "i-2"), provision_body()), (BINDING, bind_body())):
        for field in ("parameters", "context"):
            response = await client.put(url, content=_with(body, field, raw))
            assert response.status_code == 400, response.text
            assert f"number {number} is out of range" in _description(response)
        response = await client.put(url, content=_with(body, "extension", number))
        assert response.status_code == 400, response.text
    assert broker.count("provision") == 1 and broker.count("bind") == 0
    assert await _store(client).get_instance("i-2") is None
    assert await _store(client).get_binding("i-1", "b-1") is None


async def test_integers_too_long_to_convert_are_400(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """An integer of more digits than Python converts (4,300) is a bad request, not a 500."""
    broker, client = env
    response = await client.put(INSTANCE, content=_with(provision_body(), "x", "9" * 5000))
    assert response.status_code == 400, response.text
    assert "not valid JSON" in _description(response)
    assert broker.calls == []


def _with(body: dict[str, Any], name: str, raw: str) -> bytes:
    """`body` as JSON text with `name`'s value replaced by the raw JSON text `raw`."""
    text = json.dumps({**body, name: "\x00placeholder"})
    return text.replace(json.dumps("\x00placeholder"), raw).encode()


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def _surrogate_bodies(body: dict[str, Any]) -> list[bytes]:
    return [
        _with(body, "parameters", '{"name": "\\ud800"}'),  # escaped, valid JSON
        _with(body, "parameters", '{"name": "half an emoji: \\ud83d"}'),
        _with(body, "parameters", '{"\\udfff": "a key"}'),
        _with(body, "context", '{"platform": "x", "note": "\\uDC00"}'),
        _with(body, "parameters", '{"name": "X"}').replace(b'"X"', b'"\xed\xa0\x80"'),  # raw
    ]


@pytest.mark.parametrize("where", ["parameters", "context"])
@pytest.mark.parametrize("depth", [100_000, 990, MAX_DEPTH + 1])
async def test_deeply_nested_json_is_400_on_provision_and_bind(
    env: tuple[SampleBroker, httpx.AsyncClient], where: str, depth: int
) -> None:
    """JSON nested deeper than MAX_DEPTH levels (or too deep to decode at all) is a bad request
    naming the limit, on provision and bind alike, and nothing is recorded or called."""
    broker, client = env
    await _provisioned(client)
    for url, body in ((INSTANCE.replace("i-1", "i-2"), provision_body()), (BINDING, bind_body())):
        response = await client.put(url, content=_with(body, where, _deep(depth)))
        assert response.status_code == 400, response.text
        assert f"deeper than {MAX_DEPTH} levels" in _description(response)
    assert broker.count("provision") == 1 and broker.count("bind") == 0
    assert await _store(client).get_instance("i-2") is None
    assert await _store(client).get_binding("i-1", "b-1") is None


async def test_nesting_up_to_the_limit_is_accepted(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """A body nested exactly MAX_DEPTH levels (the body object included) is provisioned."""
    _, client = env
    inner = _deep(MAX_DEPTH - 2)  # body object and context object are two levels
    response = await client.put(
        INSTANCE, content=_with(provision_body(), "context", f'{{"platform": "x", "n": {inner}}}')
    )
    assert response.status_code == 201, response.text


async def test_lone_surrogates_are_400_on_provision_and_bind(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """A string holding a lone UTF-16 surrogate (escaped: valid JSON but no Unicode text; or
    encoded in the bytes) is a bad request, on provision and bind, in parameters, keys or
    context, and nothing is recorded or called; a properly paired surrogate escape is fine."""
    broker, client = env
    await _provisioned(client)
    for body in _surrogate_bodies(provision_body()):
        response = await client.put(INSTANCE.replace("i-1", "i-2"), content=body)
        assert response.status_code == 400, response.text
        assert "surrogate" in _description(response) or "utf-8" in _description(response)
    for body in _surrogate_bodies(bind_body()):
        response = await client.put(BINDING, content=body)
        assert response.status_code == 400, response.text
    assert broker.count("provision") == 1 and broker.count("bind") == 0
    assert await _store(client).get_instance("i-2") is None
    assert await _store(client).get_binding("i-1", "b-1") is None
    paired = _with(bind_body(), "parameters", '{"name": "\\ud83d\\ude00"}')
    response = await client.put(BINDING, content=paired)
    assert response.status_code == 201, response.text
    assert broker.count("bind") == 1
