"""Idempotency from durable records: same request again → same answer; different → 409;
deletes of unknown ids → 410; fetches of unknown or unfinished resources → 404 / 422.

Every test runs on SQLite and, marked `postgres`, on the machine's PostgreSQL.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url
from test_broker_support import (
    ASYNC,
    SERVICE,
    SYNC,
    SampleBroker,
    bind_body,
    eventually,
    ids,
    provision_body,
    running,
    settings_for,
    wait_state,
)

INSTANCE = "/v2/service_instances/i-1"
BINDING = INSTANCE + "/service_bindings/b-1"


@pytest.fixture
def pg_database(postgres_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    name = f"sb_core_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str | None]:
    """(database URL, key) on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}", None
    return request.getfixturevalue("pg_database"), Fernet.generate_key().decode()


@pytest.fixture
async def env(
    db_url: tuple[str, str | None],
) -> AsyncIterator[tuple[SampleBroker, httpx.AsyncClient]]:
    url, key = db_url
    broker = SampleBroker()
    async with running(broker, url, settings=settings_for(url, key=key)) as client:
        yield broker, client


async def test_identical_provision_returns_200_with_the_same_body(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """Provisioning the same instance again answers 200 with the first body, author untouched."""
    broker, client = env
    first = await client.put(INSTANCE, json=provision_body(size=3))
    again = await client.put(INSTANCE, json=provision_body(size=3))
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json() == first.json()
    assert broker.count("provision") == 1


async def test_provision_with_different_attributes_is_409(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """Provisioning an existing id with other parameters or plan is a 409 Conflict."""
    broker, client = env
    assert (await client.put(INSTANCE, json=provision_body(size=3))).status_code == 201
    assert (await client.put(INSTANCE, json=provision_body(size=4))).status_code == 409
    other_plan = provision_body(ASYNC)
    response = await client.put(INSTANCE, params={"accepts_incomplete": "true"}, json=other_plan)
    assert response.status_code == 409
    assert broker.count("provision") == 1


async def test_identical_bind_returns_200_with_the_same_credentials(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """A retried bind gets the very same body, credentials included; none are minted anew."""
    broker, client = env
    await client.put(INSTANCE, json=provision_body())
    first = await client.put(BINDING, json=bind_body(name="x"))
    again = await client.put(BINDING, json=bind_body(name="x"))
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json() == first.json()
    assert first.json()["credentials"]["password"]
    assert broker.count("bind") == 1


async def test_bind_with_different_attributes_is_409(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """Binding an existing binding id with other parameters is a 409 Conflict."""
    broker, client = env
    await client.put(INSTANCE, json=provision_body())
    assert (await client.put(BINDING, json=bind_body(name="x"))).status_code == 201
    assert (await client.put(BINDING, json=bind_body(name="y"))).status_code == 409
    other_app = {**bind_body(name="x"), "bind_resource": {"app_guid": "app-2"}}
    assert (await client.put(BINDING, json=other_app)).status_code == 409
    assert broker.count("bind") == 1


async def test_resent_async_provision_returns_202_with_the_same_operation(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """While provisioning runs, the same PUT answers 202 with the original operation."""
    broker, client = env
    query = {"accepts_incomplete": "true"}
    first = await client.put(INSTANCE, params=query, json=provision_body(ASYNC, gate=True))
    again = await client.put(INSTANCE, params=query, json=provision_body(ASYNC, gate=True))
    assert first.status_code == again.status_code == 202
    assert again.json()["operation"] == first.json()["operation"]
    broker.release()
    await wait_state(client, INSTANCE, "succeeded")
    done = await client.put(INSTANCE, params=query, json=provision_body(ASYNC, gate=True))
    assert done.status_code == 200
    assert broker.count("provision") == 1


async def test_resent_async_bind_returns_202_then_200_with_the_same_credentials(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """A retried async bind: 202 with the same operation, then 200 with the recorded body."""
    broker, client = env
    query = {"accepts_incomplete": "true"}
    await client.put(INSTANCE, params=query, json=provision_body(ASYNC))
    await wait_state(client, INSTANCE, "succeeded")
    first = await client.put(BINDING, params=query, json=bind_body(ASYNC, gate=True))
    again = await client.put(BINDING, params=query, json=bind_body(ASYNC, gate=True))
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert "credentials" not in first.json()
    broker.release()
    await wait_state(client, BINDING, "succeeded")
    fetched = await client.get(BINDING)
    done = await client.put(BINDING, params=query, json=bind_body(ASYNC, gate=True))
    assert done.status_code == 200
    assert done.json()["credentials"] == fetched.json()["credentials"]
    assert broker.count("bind") == 1


async def test_concurrent_identical_provisions_run_the_author_once(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """Racing identical provisions create one instance: one wins, the others wait or replay."""
    broker, client = env
    query = {"accepts_incomplete": "true"}
    responses = await asyncio.gather(
        *(client.put(INSTANCE, params=query, json=provision_body(ASYNC)) for _ in range(5))
    )
    assert {r.status_code for r in responses} <= {200, 202}
    operations = {r.json().get("operation") for r in responses if r.status_code == 202}
    assert len(operations) == 1
    await wait_state(client, INSTANCE, "succeeded")
    assert broker.count("provision") == 1


async def test_deprovision_of_unknown_instance_is_410(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """Deleting an instance the broker does not have answers 410 Gone."""
    broker, client = env
    response = await client.delete(INSTANCE, params=ids())
    assert response.status_code == 410
    assert broker.calls == []


async def test_second_deprovision_is_410(env: tuple[SampleBroker, httpx.AsyncClient]) -> None:
    """After a deprovision, the same delete answers 410 Gone."""
    broker, client = env
    await client.put(INSTANCE, json=provision_body())
    assert (await client.delete(INSTANCE, params=ids())).status_code == 200
    assert (await client.delete(INSTANCE, params=ids())).status_code == 410
    assert broker.count("deprovision") == 1


async def test_unbind_of_unknown_binding_is_410(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """Deleting a binding the broker does not have answers 410 Gone."""
    broker, client = env
    assert (await client.delete(BINDING, params=ids())).status_code == 410
    await client.put(INSTANCE, json=provision_body())
    assert (await client.delete(BINDING, params=ids())).status_code == 410
    await client.put(BINDING, json=bind_body())
    assert (await client.delete(BINDING, params=ids())).status_code == 200
    assert (await client.delete(BINDING, params=ids())).status_code == 410
    assert broker.count("unbind") == 1


async def test_fetch_of_unknown_instance_or_binding_is_404(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """Fetching what does not exist answers 404."""
    _, client = env
    assert (await client.get(INSTANCE)).status_code == 404
    assert (await client.get(BINDING)).status_code == 404
    await client.put(INSTANCE, json=provision_body())
    assert (await client.get(BINDING)).status_code == 404


async def test_fetch_of_instance_still_provisioning_is_404(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """spec: fetching an instance whose provisioning is in progress answers 404."""
    broker, client = env
    query = {"accepts_incomplete": "true"}
    await client.put(INSTANCE, params=query, json=provision_body(ASYNC, gate=True))
    assert (await client.get(INSTANCE)).status_code == 404
    broker.release()
    await wait_state(client, INSTANCE, "succeeded")
    assert (await client.get(INSTANCE)).status_code == 200


async def test_fetch_of_binding_still_binding_is_404(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """spec: fetching a binding whose creation is in progress answers 404."""
    broker, client = env
    query = {"accepts_incomplete": "true"}
    await client.put(INSTANCE, params=query, json=provision_body(ASYNC))
    await wait_state(client, INSTANCE, "succeeded")
    await client.put(BINDING, params=query, json=bind_body(ASYNC, gate=True))
    assert (await client.get(BINDING)).status_code == 404
    broker.release()
    await wait_state(client, BINDING, "succeeded")
    assert (await client.get(BINDING)).status_code == 200


async def test_fetch_of_instance_being_updated_is_422_concurrency_error(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """spec: fetching an instance while it is being updated answers 422 ConcurrencyError."""
    broker, client = env
    query = {"accepts_incomplete": "true"}
    await client.put(INSTANCE, params=query, json=provision_body(ASYNC))
    await wait_state(client, INSTANCE, "succeeded")
    update = {"service_id": SERVICE, "parameters": {"gate": True}}
    assert (await client.patch(INSTANCE, params=query, json=update)).status_code == 202
    response = await client.get(INSTANCE)
    assert response.status_code == 422
    assert response.json()["error"] == "ConcurrencyError"
    broker.release()
    await wait_state(client, INSTANCE, "succeeded")
    assert (await client.get(INSTANCE)).status_code == 200


async def test_identical_requests_survive_a_restart(db_url: tuple[str, str | None]) -> None:
    """Idempotency comes from durable records: after a restart the replay is the same."""
    url, key = db_url
    async with running(SampleBroker(), url, settings=settings_for(url, key=key)) as client:
        await client.put(INSTANCE, json=provision_body(size=2))
        first = await client.put(BINDING, json=bind_body())
    restarted = SampleBroker()
    async with running(restarted, url, settings=settings_for(url, key=key)) as client:
        assert (await client.put(INSTANCE, json=provision_body(size=2))).status_code == 200
        assert (await client.put(INSTANCE, json=provision_body(size=3))).status_code == 409
        again = await client.put(BINDING, json=bind_body())
        assert again.status_code == 200
        assert again.json() == first.json()
    assert restarted.calls == []


async def test_failed_sync_provision_leaves_no_record(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """A synchronous provision that fails changes nothing: the same id can be provisioned."""
    broker, client = env
    failed = await client.put(INSTANCE, json=provision_body(fail=True))
    assert failed.status_code == 500
    assert failed.json()["description"] == "provision failed on purpose"
    assert "instance_usable" not in failed.json()  # spec: only for update and deprovision
    assert (await client.get(INSTANCE)).status_code == 404
    assert (await client.put(INSTANCE, json=provision_body())).status_code == 201
    assert broker.count("provision") == 2


async def test_deleted_instance_id_can_be_provisioned_again(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """After a deprovision the record is gone; a new provision with that id is a new instance."""
    broker, client = env
    await client.put(INSTANCE, json=provision_body(size=2))
    await client.delete(INSTANCE, params=ids())
    assert (await client.put(INSTANCE, json=provision_body(size=5))).status_code == 201
    fetched = await client.get(INSTANCE)
    assert fetched.json()["parameters"] == {"size": 5}
    assert broker.count("provision") == 2


async def test_fetch_instance_answers_from_records(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """Fetch answers ids, redacted parameters and maintenance_info from the records."""
    _, client = env
    await client.put(INSTANCE, json=provision_body(size=4, secret="hunter2"))
    response = await client.get(INSTANCE)
    assert response.status_code == 200
    body = response.json()
    assert body["service_id"] == SERVICE
    assert body["plan_id"] == SYNC
    assert body["parameters"] == {"size": 4, "secret": "***"}
    assert body["maintenance_info"] == {"version": "1.2.0"}
    assert body["dashboard_url"] == "https://dash.example/i-1"


async def test_provision_is_compared_with_the_instance_as_updated(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """After an update, a provision is compared with the instance's current attributes."""
    broker, client = env
    assert (await client.put(INSTANCE, json=provision_body(size=3))).status_code == 201
    update = {"service_id": SERVICE, "parameters": {"size": 2}}
    assert (await client.patch(INSTANCE, json=update)).status_code == 200
    assert (await client.put(INSTANCE, json=provision_body(size=3))).status_code == 409
    assert (await client.put(INSTANCE, json=provision_body(size=2))).status_code == 200
    assert broker.count("provision") == 1


async def test_abandoned_sync_provision_is_taken_over_after_the_grace(
    db_url: tuple[str, str | None],
) -> None:
    """A sync provision left "provisioning" by a dead process blocks retries (422), then not."""
    url, key = db_url
    broker = SampleBroker()
    settings = settings_for(url, key=key)
    async with running(broker, url, settings=settings, sync_abandoned_after=0.5) as client:
        store = client.app.state.store  # type: ignore[attr-defined]
        first = await client.put(INSTANCE, json=provision_body(size=3))
        assert first.status_code == 201
        record = await store.get_instance("i-1")
        record.state = "provisioning"  # as if its process died inside the author's provision
        await store.put_instance(record)
        blocked = await client.put(INSTANCE, json=provision_body(size=3))
        assert blocked.status_code == 422
        assert blocked.json()["error"] == "ConcurrencyError"

        async def taken_over() -> bool:
            response = await client.put(INSTANCE, json=provision_body(size=3))
            return response.status_code == 201

        await eventually(taken_over)
        assert broker.count("provision") == 2
