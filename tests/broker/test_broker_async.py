"""Asynchronous operations: 202 + operation, last_operation with Retry-After and progress,
AsyncRequired, ConcurrencyError, failures with their flags, maximum_polling_duration."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from test_broker_support import (
    ASYNC,
    SERVICE,
    SHORT,
    SYNC,
    SampleBroker,
    bind_body,
    eventually,
    ids,
    provision_body,
    running,
    wait_state,
)

from servicebay import osb
from servicebay.broker import OperationContext, ProvisionDetails, ProvisionResult

INSTANCE = "/v2/service_instances/i-1"
BINDING = INSTANCE + "/service_bindings/b-1"
ASYNC_OK = {"accepts_incomplete": "true"}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[SampleBroker, httpx.AsyncClient]]:
    broker = SampleBroker()
    async with running(broker, f"sqlite:///{tmp_path}/broker.db") as client:
        yield broker, client


async def _ready(client: httpx.AsyncClient, plan: str = ASYNC) -> None:
    response = await client.put(INSTANCE, params=ASYNC_OK, json=provision_body(plan))
    assert response.status_code in (201, 202), response.text
    if response.status_code == 202:
        await wait_state(client, INSTANCE, "succeeded")


async def _bound(client: httpx.AsyncClient, plan: str = ASYNC) -> None:
    response = await client.put(BINDING, params=ASYNC_OK, json=bind_body(plan))
    assert response.status_code in (201, 202), response.text
    if response.status_code == 202:
        await wait_state(client, BINDING, "succeeded")


async def test_async_provision_without_accepts_incomplete_is_422_async_required(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """An async plan refuses a provision lacking accepts_incomplete=true; nothing is recorded."""
    broker, client = env
    for query in ({}, {"accepts_incomplete": "false"}):
        response = await client.put(INSTANCE, params=query, json=provision_body(ASYNC))
        assert response.status_code == 422
        assert response.json()["error"] == "AsyncRequired"
    assert broker.calls == []
    assert (await client.get(INSTANCE + "/last_operation")).status_code == 404


async def test_every_async_operation_requires_accepts_incomplete(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """Update, deprovision, bind and unbind on an async plan also answer 422 AsyncRequired."""
    broker, client = env
    await _ready(client)
    await _bound(client)
    calls = len(broker.calls)
    attempts = [
        client.patch(INSTANCE, json={"service_id": SERVICE, "parameters": {"size": 2}}),
        client.delete(INSTANCE, params=ids(ASYNC)),
        client.put(INSTANCE + "/service_bindings/b-2", json=bind_body(ASYNC)),
        client.delete(BINDING, params=ids(ASYNC)),
    ]
    for attempt in attempts:
        response = await attempt
        assert response.status_code == 422
        assert response.json()["error"] == "AsyncRequired"
    assert len(broker.calls) == calls


async def test_async_provision_answers_202_with_an_operation(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """An accepted async provision answers 202 with an operation id and runs in background."""
    broker, client = env
    response = await client.put(INSTANCE, params=ASYNC_OK, json=provision_body(ASYNC))
    assert response.status_code == 202
    operation = response.json()["operation"]
    assert isinstance(operation, str)
    assert operation
    body = await wait_state(client, INSTANCE, "succeeded", operation)
    assert body == {"state": "succeeded"}
    assert broker.count("provision") == 1


async def test_sync_plan_ignores_accepts_incomplete(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """A sync plan answers 201 whether or not accepts_incomplete is sent (spec MAY ignore)."""
    _, client = env
    response = await client.put(INSTANCE, params=ASYNC_OK, json=provision_body(SYNC))
    assert response.status_code == 201


async def test_last_operation_in_progress_has_retry_after_and_progress(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """While work runs: "in progress", the author's progress text, and Retry-After."""
    broker, client = env
    response = await client.put(INSTANCE, params=ASYNC_OK, json=provision_body(ASYNC, gate=True))
    operation = response.json()["operation"]
    body = await wait_state(client, INSTANCE, "in progress", operation)
    polled = await client.get(INSTANCE + "/last_operation", params={"operation": operation})
    assert polled.headers["Retry-After"] == "3"

    async def progressed() -> bool:
        polled = await client.get(INSTANCE + "/last_operation", params={"operation": operation})
        return bool(polled.json().get("description") == "provision: waiting")

    await eventually(progressed)
    assert body["state"] == "in progress"
    broker.release()
    done = await wait_state(client, INSTANCE, "succeeded", operation)
    assert "description" not in done
    final = await client.get(INSTANCE + "/last_operation", params={"operation": operation})
    assert "Retry-After" not in final.headers


async def test_last_operation_without_operation_id_reports_the_latest(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """Polling without the operation parameter reports the newest operation."""
    _, client = env
    await _ready(client)
    response = await client.get(INSTANCE + "/last_operation")
    assert response.json() == {"state": "succeeded"}


async def test_last_operation_of_unknown_instance_is_404(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """Polling an instance the broker never saw answers 404."""
    _, client = env
    assert (await client.get(INSTANCE + "/last_operation")).status_code == 404
    assert (await client.get(BINDING + "/last_operation")).status_code == 404


async def test_last_operation_with_foreign_operation_id_is_404(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """An operation id that belongs to another resource is not reported for this one."""
    _, client = env
    response = await client.put(
        "/v2/service_instances/other", params=ASYNC_OK, json=provision_body(ASYNC)
    )
    operation = response.json()["operation"]
    polled = await client.get(INSTANCE + "/last_operation", params={"operation": operation})
    assert polled.status_code == 404


async def test_failed_async_provision_reports_failed_without_flags(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """A failed async provision reports its description and no instance_usable flags."""
    _, client = env
    response = await client.put(INSTANCE, params=ASYNC_OK, json=provision_body(ASYNC, fail=True))
    body = await wait_state(client, INSTANCE, "failed", response.json()["operation"])
    assert body == {"state": "failed", "description": "provision failed on purpose"}
    assert (await client.get(INSTANCE)).status_code == 404


async def test_failed_provision_can_be_deprovisioned(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """Orphan mitigation: an instance whose async provision failed can still be deleted."""
    broker, client = env
    await client.put(INSTANCE, params=ASYNC_OK, json=provision_body(ASYNC, fail=True))
    await wait_state(client, INSTANCE, "failed")
    response = await client.delete(INSTANCE, params={**ids(ASYNC), **ASYNC_OK})
    assert response.status_code == 202
    await wait_state(client, INSTANCE, "succeeded", response.json()["operation"])
    assert broker.count("deprovision") == 1
    assert (await client.delete(INSTANCE, params={**ids(ASYNC), **ASYNC_OK})).status_code == 410


async def test_failed_async_update_reports_instance_usable_and_update_repeatable(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """A failed async update reports instance_usable and keeps the old parameters."""
    _, client = env
    await _ready(client)
    update = {"service_id": SERVICE, "parameters": {"fail": True, "size": 7}}
    response = await client.patch(INSTANCE, params=ASYNC_OK, json=update)
    assert response.status_code == 202
    body = await wait_state(client, INSTANCE, "failed", response.json()["operation"])
    assert body["description"] == "update failed on purpose"
    assert body["instance_usable"] is False
    assert "update_repeatable" not in body or isinstance(body["update_repeatable"], bool)
    fetched = await client.get(INSTANCE)
    assert fetched.status_code == 200
    assert fetched.json()["parameters"] == {"size": 1}


async def test_failed_sync_update_error_carries_instance_usable(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """A failed synchronous update answers 500 with the author's flags, changing nothing."""
    _, client = env
    await _ready(client, SYNC)
    update = {"service_id": SERVICE, "parameters": {"fail": True}}
    response = await client.patch(INSTANCE, json=update)
    assert response.status_code == 500
    assert response.json() == {
        "description": "update failed on purpose",
        "instance_usable": False,
    }


async def test_failed_async_bind_reports_failed_and_can_be_retried(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """A failing async bind ends "failed"; a new bind of the same id starts afresh."""
    broker, client = env
    await _ready(client)
    response = await client.put(BINDING, params=ASYNC_OK, json=bind_body(ASYNC, fail=True))
    body = await wait_state(client, BINDING, "failed", response.json()["operation"])
    assert body == {"state": "failed", "description": "bind failed on purpose"}
    assert (await client.get(BINDING)).status_code == 404
    retry = await client.put(BINDING, params=ASYNC_OK, json=bind_body(ASYNC))
    assert retry.status_code == 202
    await wait_state(client, BINDING, "succeeded", retry.json()["operation"])
    assert broker.count("bind") == 2


async def test_async_bind_hides_credentials_until_fetched(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """The 202 of an async bind carries no credentials; the fetch after success does."""
    _, client = env
    await _ready(client)
    response = await client.put(BINDING, params=ASYNC_OK, json=bind_body(ASYNC))
    assert response.status_code == 202
    assert set(response.json()) == {"operation"}
    await wait_state(client, BINDING, "succeeded", response.json()["operation"])
    fetched = await client.get(BINDING)
    assert fetched.status_code == 200
    assert fetched.json()["credentials"]["username"] == "b-1"


async def test_resent_async_deprovision_returns_202_with_the_same_operation(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """A DELETE re-sent while the deprovision runs answers 202 with the same operation."""
    broker, client = env
    await _ready(client)
    broker.hold.add("deprovision")
    query = {**ids(ASYNC), **ASYNC_OK}
    first = await client.delete(INSTANCE, params=query)
    again = await client.delete(INSTANCE, params=query)
    assert first.status_code == again.status_code == 202
    assert again.json()["operation"] == first.json()["operation"]
    broker.release()
    await wait_state(client, INSTANCE, "succeeded", first.json()["operation"])
    assert (await client.delete(INSTANCE, params=query)).status_code == 410


async def test_concurrent_mutation_is_422_concurrency_error(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """While an operation runs on an instance, another kind of mutation gets ConcurrencyError."""
    broker, client = env
    response = await client.put(INSTANCE, params=ASYNC_OK, json=provision_body(ASYNC, gate=True))
    assert response.status_code == 202
    attempts = [
        client.delete(INSTANCE, params={**ids(ASYNC), **ASYNC_OK}),
        client.patch(INSTANCE, params=ASYNC_OK, json={"service_id": SERVICE}),
        client.put(BINDING, params=ASYNC_OK, json=bind_body(ASYNC)),
    ]
    for attempt in attempts:
        refused = await attempt
        assert refused.status_code == 422
        assert refused.json()["error"] == "ConcurrencyError"
    broker.release()
    await wait_state(client, INSTANCE, "succeeded")
    assert broker.count("deprovision") == broker.count("update") == broker.count("bind") == 0


async def test_different_update_during_update_is_422_and_same_is_202(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """During an update, the same PATCH gets 202 with its operation; a different one 422."""
    broker, client = env
    await _ready(client)
    update = {"service_id": SERVICE, "parameters": {"gate": True, "size": 3}}
    first = await client.patch(INSTANCE, params=ASYNC_OK, json=update)
    again = await client.patch(INSTANCE, params=ASYNC_OK, json=update)
    other = await client.patch(
        INSTANCE, params=ASYNC_OK, json={"service_id": SERVICE, "parameters": {"size": 4}}
    )
    assert first.status_code == again.status_code == 202
    assert again.json()["operation"] == first.json()["operation"]
    assert other.status_code == 422
    assert other.json()["error"] == "ConcurrencyError"
    broker.release()
    await wait_state(client, INSTANCE, "succeeded", first.json()["operation"])
    assert (await client.get(INSTANCE)).json()["parameters"] == {"size": 3, "gate": True}


async def test_unbind_during_bind_is_422_concurrency_error(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """A binding still being created cannot be deleted yet (422 ConcurrencyError)."""
    broker, client = env
    await _ready(client)
    await client.put(BINDING, params=ASYNC_OK, json=bind_body(ASYNC, gate=True))
    response = await client.delete(BINDING, params={**ids(ASYNC), **ASYNC_OK})
    assert response.status_code == 422
    assert response.json()["error"] == "ConcurrencyError"
    broker.release()
    await wait_state(client, BINDING, "succeeded")


async def test_async_unbind_and_deprovision_complete(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """Async unbind and deprovision answer 202 and end "succeeded"; the records are gone."""
    broker, client = env
    await _ready(client)
    await _bound(client)
    unbind = await client.delete(BINDING, params={**ids(ASYNC), **ASYNC_OK})
    assert unbind.status_code == 202
    await wait_state(client, BINDING, "succeeded", unbind.json()["operation"])
    assert (await client.get(BINDING)).status_code == 404
    deprovision = await client.delete(INSTANCE, params={**ids(ASYNC), **ASYNC_OK})
    assert deprovision.status_code == 202
    await wait_state(client, INSTANCE, "succeeded", deprovision.json()["operation"])
    assert (await client.get(INSTANCE)).status_code == 404
    assert broker.count("unbind") == broker.count("deprovision") == 1


async def test_operation_past_maximum_polling_duration_fails(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """Work past the plan's maximum_polling_duration is cancelled and reported failed."""
    _, client = env
    response = await client.put(INSTANCE, params=ASYNC_OK, json=provision_body(SHORT, gate=True))
    assert response.status_code == 202
    body = await wait_state(client, INSTANCE, "failed", response.json()["operation"])
    assert "maximum_polling_duration" in body["description"]
    assert (await client.get(INSTANCE)).status_code == 404


async def test_binding_last_operation_reports_sync_bindings_succeeded(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """A binding created synchronously reports "succeeded" when polled."""
    _, client = env
    await _ready(client, SYNC)
    await _bound(client, SYNC)
    response = await client.get(BINDING + "/last_operation")
    assert response.json() == {"state": "succeeded"}


async def test_async_202_carries_the_dashboard_url(tmp_path: Path) -> None:
    """The 202 of async provision/update carries the author's dashboard_url (spec MUST)."""

    class WithDashboard(SampleBroker):
        def dashboard_url(self, instance_id: str, service: osb.Service, plan: osb.Plan) -> str:
            return f"https://dash.example/{plan.name}/{instance_id}"

        async def provision(
            self, details: ProvisionDetails, ctx: OperationContext
        ) -> ProvisionResult:
            return ProvisionResult()

    async with running(WithDashboard(), f"sqlite:///{tmp_path}/b.db") as client:
        response = await client.put(INSTANCE, params=ASYNC_OK, json=provision_body(ASYNC))
        assert response.status_code == 202
        assert set(response.json()) == {"operation", "dashboard_url"}
        assert response.json()["dashboard_url"] == "https://dash.example/async/i-1"
        await wait_state(client, INSTANCE, "succeeded")
        fetched = await client.get(INSTANCE)
        assert fetched.json()["dashboard_url"] == "https://dash.example/async/i-1"
        update = await client.patch(INSTANCE, params=ASYNC_OK, json={"service_id": SERVICE})
        assert update.status_code == 202
        assert update.json()["dashboard_url"] == "https://dash.example/async/i-1"


async def test_unknown_operation_of_an_existing_instance_is_400(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """An operation id the instance never had is 400, not a made-up "succeeded"."""
    _, client = env
    await _ready(client)
    response = await client.get(INSTANCE + "/last_operation", params={"operation": "bogus"})
    assert response.status_code == 400
    assert "operation" in response.json()["description"]
