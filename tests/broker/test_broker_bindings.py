"""Bindings: rotation with predecessor_binding_id, fetch, the binding kinds, author overrides."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from test_broker_support import (
    ROTATABLE,
    SERVICE,
    SYNC,
    SampleBroker,
    bind_body,
    ids,
    provision_body,
    running,
)

from servicebay import osb
from servicebay.broker import (
    BindDetails,
    BindResult,
    FetchBindingDetails,
    FetchBindingResult,
    FetchInstanceDetails,
    FetchInstanceResult,
    OperationContext,
)

INSTANCE = "/v2/service_instances/i-1"
BINDING = INSTANCE + "/service_bindings/b-1"
SUCCESSOR = INSTANCE + "/service_bindings/b-2"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[SampleBroker, httpx.AsyncClient]]:
    broker = SampleBroker()
    async with running(broker, f"sqlite:///{tmp_path}/broker.db") as client:
        yield broker, client


async def _bound(client: httpx.AsyncClient, plan: str = ROTATABLE, **parameters: object) -> None:
    assert (await client.put(INSTANCE, json=provision_body(plan))).status_code == 201
    response = await client.put(BINDING, json=bind_body(plan, **parameters))
    assert response.status_code == 201, response.text


async def test_rotation_creates_a_successor_and_keeps_the_predecessor(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """A bind with predecessor_binding_id creates a new binding; both stay valid (spec)."""
    broker, client = env
    await _bound(client, name="x")
    body = {**bind_body(ROTATABLE), "predecessor_binding_id": "b-1"}
    response = await client.put(SUCCESSOR, json=body)
    assert response.status_code == 201
    details = broker.calls[-1][1]
    assert isinstance(details, BindDetails)
    assert details.predecessor_binding_id == "b-1"
    assert (await client.get(BINDING)).status_code == 200
    assert (await client.get(SUCCESSOR)).status_code == 200
    old = (await client.get(BINDING)).json()["credentials"]
    new = (await client.get(SUCCESSOR)).json()["credentials"]
    assert old != new


async def test_rotation_request_may_carry_only_the_predecessor(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """A rotation body may hold only predecessor_binding_id; its parameters are reused."""
    broker, client = env
    await _bound(client, size=4)
    response = await client.put(SUCCESSOR, json={"predecessor_binding_id": "b-1"})
    assert response.status_code == 201, response.text
    details = broker.calls[-1][1]
    assert details.parameters == {"size": 4}
    assert details.plan.id == ROTATABLE


async def test_rotation_on_a_plan_without_binding_rotatable_is_400(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """Plans that do not declare binding_rotatable refuse rotation."""
    broker, client = env
    await _bound(client, SYNC)
    body = {**bind_body(SYNC), "predecessor_binding_id": "b-1"}
    response = await client.put(SUCCESSOR, json=body)
    assert response.status_code == 400
    assert "rotation" in response.json()["description"]
    assert broker.count("bind") == 1


async def test_rotation_of_unknown_predecessor_is_400(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """The predecessor must be a binding of the same instance."""
    _, client = env
    await _bound(client)
    body = {**bind_body(ROTATABLE), "predecessor_binding_id": "nope"}
    response = await client.put(SUCCESSOR, json=body)
    assert response.status_code == 400
    assert "predecessor_binding_id" in response.json()["description"]


async def test_rotation_of_expired_predecessor_is_400(tmp_path: Path) -> None:
    """An expired binding cannot be rotated (spec: MUST be a non-expired binding)."""

    class Expiring(SampleBroker):
        async def bind(self, details: BindDetails, ctx: OperationContext) -> BindResult:
            past = datetime.now(UTC) - timedelta(minutes=1)
            stamp = past.strftime("%Y-%m-%dT%H:%M:%S.0Z")
            metadata = osb.BindingMetadata(expires_at=stamp)
            return BindResult(credentials={"k": "v"}, metadata=metadata)

    async with running(Expiring(), f"sqlite:///{tmp_path}/b.db") as client:
        await _bound(client)
        response = await client.put(SUCCESSOR, json={"predecessor_binding_id": "b-1"})
        assert response.status_code == 400
        assert "expired" in response.json()["description"]


async def test_all_binding_kinds_are_returned_and_replayed(tmp_path: Path) -> None:
    """Every binding kind is answered on bind and replayed unchanged on retry and fetch."""

    class Everything(SampleBroker):
        async def bind(self, details: BindDetails, ctx: OperationContext) -> BindResult:
            return BindResult(
                credentials={"uri": "amqp://u:p@h/v"},
                syslog_drain_url="syslog://logs.example:514",
                route_service_url="https://proxy.example",
                volume_mounts=[
                    osb.VolumeMount(
                        driver="nfs",
                        container_dir="/data",
                        mode="rw",
                        device_type="shared",
                        device=osb.VolumeDevice(volume_id="vol-1"),
                    )
                ],
                endpoints=[osb.Endpoint(host="h.example", ports=["5672"])],
                metadata=osb.BindingMetadata(renew_before="2030-01-01T00:00:00.0Z"),
            )

    async with running(Everything(), f"sqlite:///{tmp_path}/b.db") as client:
        await client.put(INSTANCE, json=provision_body())
        first = await client.put(BINDING, json=bind_body())
        assert first.status_code == 201
        body = first.json()
        assert set(body) == {
            "credentials",
            "syslog_drain_url",
            "route_service_url",
            "volume_mounts",
            "endpoints",
            "metadata",
        }
        again = await client.put(BINDING, json=bind_body())
        assert again.json() == body
        fetched = (await client.get(BINDING)).json()
        assert {k: v for k, v in fetched.items() if k != "parameters"} == body
        assert fetched["parameters"] == {"size": 1}


async def test_fetch_binding_redacts_sensitive_parameters(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """Parameters marked writeOnly are shown as *** when a binding is fetched."""
    _, client = env
    await _bound(client, SYNC, secret="hunter2")
    fetched = await client.get(BINDING)
    assert fetched.json()["parameters"] == {"size": 1, "secret": "***"}
    assert "hunter2" not in fetched.text


async def test_author_fetch_overrides_the_records(tmp_path: Path) -> None:
    """fetch_instance / fetch_binding results replace what the SDK recorded."""

    class Live(SampleBroker):
        async def fetch_instance(
            self, details: FetchInstanceDetails, ctx: OperationContext
        ) -> FetchInstanceResult | None:
            assert details.parameters == {"size": 1}
            return FetchInstanceResult(
                parameters={"size": 9},
                metadata=osb.InstanceMetadata(labels={"tier": "gold"}),
            )

        async def fetch_binding(
            self, details: FetchBindingDetails, ctx: OperationContext
        ) -> FetchBindingResult | None:
            return FetchBindingResult(credentials={"rotated": True})

    async with running(Live(), f"sqlite:///{tmp_path}/b.db") as client:
        await _bound(client, SYNC)
        instance = (await client.get(INSTANCE)).json()
        assert instance["parameters"] == {"size": 9}
        assert instance["metadata"] == {"labels": {"tier": "gold"}}
        assert instance["dashboard_url"] == "https://dash.example/i-1"
        binding = (await client.get(BINDING)).json()
        assert binding["credentials"] == {"rotated": True}


async def test_unbind_calls_the_author_and_forgets_the_binding(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """Unbind answers 200 {} and the binding is gone."""
    broker, client = env
    await _bound(client, SYNC)
    response = await client.delete(BINDING, params=ids())
    assert response.status_code == 200
    assert response.json() == {}
    assert broker.count("unbind") == 1
    assert (await client.get(BINDING)).status_code == 404


async def test_bind_details_carry_context_app_and_instance_parameters(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """The author sees the app, bind_resource, context and the instance's parameters."""
    broker, client = env
    await client.put(INSTANCE, json=provision_body(SYNC, size=3))
    body = {**bind_body(SYNC), "context": {"platform": "servicebay", "app": "chat"}}
    assert (await client.put(BINDING, json=body)).status_code == 201
    details = broker.calls[-1][1]
    assert details.app_guid == "app-1"
    assert details.bind_resource == osb.BindResource(app_guid="app-1")
    assert details.context == {"platform": "servicebay", "app": "chat"}
    assert details.instance_parameters == {"size": 3}
    assert details.service.id == SERVICE
