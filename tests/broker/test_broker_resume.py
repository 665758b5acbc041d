"""Durability of asynchronous operations: graceful shutdown, resume after a restart, leases of
dead processes, operations that cannot be resumed. `last_operation` always ends terminal."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from test_broker_support import (
    ASYNC,
    SHORT,
    SampleBroker,
    eventually,
    identity_header,
    provision_body,
    running,
    settings_for,
    wait_state,
)

from servicebay.broker import OperationRecord, Store, open_store
from servicebay.broker._store import utcnow

INSTANCE = "/v2/service_instances/i-1"
ASYNC_OK = {"accepts_incomplete": "true"}


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'broker.db'}"


async def _store(db: str) -> AsyncIterator[Store]:
    store = open_store(db)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def _operation(db: str, operation_id: str) -> OperationRecord:
    async for store in _store(db):
        op = await store.get_operation(operation_id)
        assert op is not None
        return op
    raise AssertionError("unreachable")


async def _interrupted_provision(db: str, plan: str = ASYNC) -> str:
    """Start an async provision that cannot finish, stop the broker; return the operation id."""
    broker = SampleBroker()
    broker.hold.add("provision")
    settings = settings_for(db, shutdown_grace=0.05)
    async with running(broker, db, settings=settings) as client:
        response = await client.put(INSTANCE, params=ASYNC_OK, json=provision_body(plan))
        assert response.status_code == 202
        await wait_state(client, INSTANCE, "in progress")
        operation = response.json()["operation"]
        assert isinstance(operation, str)
    return operation


async def test_graceful_shutdown_waits_for_in_flight_operations(db: str) -> None:
    """On shutdown the app waits (bounded) for running operations and records their outcome."""
    broker = SampleBroker()
    broker.hold.add("provision")
    async with running(broker, db) as client:
        response = await client.put(INSTANCE, params=ASYNC_OK, json=provision_body(ASYNC))
        operations = client.app.state.operations  # type: ignore[attr-defined]

        async def release_once_stopping() -> None:
            await eventually(lambda: _true(operations._closing))
            broker.release()

        releaser = asyncio.create_task(release_once_stopping())
    await releaser
    op = await _operation(db, response.json()["operation"])
    assert op.state == "succeeded"
    assert broker.count("provision") == 1


async def _true(value: bool) -> bool:
    return value


async def test_shutdown_past_grace_records_the_operation_as_interrupted(db: str) -> None:
    """Work still running after the grace stays "in progress", unowned, marked interrupted."""
    operation = await _interrupted_provision(db)
    op = await _operation(db, operation)
    assert op.state == "in progress"
    assert op.owner is None
    assert op.description is not None
    assert "restart" in op.description


async def test_restart_resumes_unfinished_operations(db: str) -> None:
    """A restarted broker re-runs an interrupted operation and last_operation ends succeeded."""
    operation = await _interrupted_provision(db)
    restarted = SampleBroker()
    async with running(restarted, db) as client:
        await wait_state(client, INSTANCE, "succeeded", operation)
        assert (await client.get(INSTANCE)).status_code == 200
    assert restarted.count("provision") == 1


async def test_unresumable_broker_marks_interrupted_operations_failed(db: str) -> None:
    """With `resumable = False` an interrupted operation is reported failed, with the reason."""
    operation = await _interrupted_provision(db)

    class Unresumable(SampleBroker):
        resumable = False

    restarted = Unresumable()
    async with running(restarted, db) as client:
        body = await wait_state(client, INSTANCE, "failed", operation)
        assert "restart" in body["description"]
        # The failed provision can be cleaned up (orphan mitigation).
        query = {"service_id": "svc-0001", "plan_id": ASYNC, **ASYNC_OK}
        assert (await client.delete(INSTANCE, params=query)).status_code == 202
    assert restarted.count("provision") == 0


async def test_operation_past_its_deadline_at_restart_is_failed(db: str) -> None:
    """An operation whose deadline passed while the broker was down fails on restart."""
    operation = await _interrupted_provision(db, SHORT)
    op = await _operation(db, operation)
    assert op.deadline is not None
    deadline = op.deadline
    await eventually(lambda: _true(utcnow() > deadline), within=5)
    restarted = SampleBroker()
    async with running(restarted, db) as client:
        body = await wait_state(client, INSTANCE, "failed", operation)
        assert "maximum_polling_duration" in body["description"]
    assert restarted.count("provision") == 0


async def _set_owner(db: str, operation: str, owner: str) -> None:
    async for store in _store(db):
        op = await store.get_operation(operation)
        assert op is not None
        op.owner, op.heartbeat_at = owner, utcnow()
        await store.put_operation(op)


async def test_operation_of_a_dead_local_process_is_resumed_at_once(db: str) -> None:
    """A lease held by a process of this host that no longer runs (kill -9) is void."""
    operation = await _interrupted_provision(db)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import os; print(os.getpid())", stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await process.communicate()
    dead_pid = int(stdout)
    await _set_owner(db, operation, f"{socket.gethostname()}:{dead_pid}:feedbeef")
    restarted = SampleBroker()
    async with running(restarted, db, operation_lease=3600) as client:
        await wait_state(client, INSTANCE, "succeeded", operation)


async def test_operation_of_a_live_foreign_owner_waits_for_its_lease(db: str) -> None:
    """Another host's fresh lease is respected until stale; then the operation is adopted."""
    operation = await _interrupted_provision(db)
    await _set_owner(db, operation, "other-host:1:cafe")
    restarted = SampleBroker()
    async with running(restarted, db, operation_lease=0.6) as client:
        first = await client.get(INSTANCE + "/last_operation", params={"operation": operation})
        assert first.json()["state"] == "in progress"
        await wait_state(client, INSTANCE, "succeeded", operation)
    op = await _operation(db, operation)
    assert op.updated_at - op.created_at > timedelta(seconds=0)


async def test_in_flight_operations_are_exported_as_metrics(db: str) -> None:
    """/metrics shows operations running in this process, and finished ones' durations."""
    broker = SampleBroker()
    broker.hold.add("provision")
    async with running(broker, db) as client:
        await client.put(INSTANCE, params=ASYNC_OK, json=provision_body(ASYNC))

        async def running_one() -> bool:
            metrics = (await client.get("/metrics")).text
            return "servicebay_broker_operations_in_flight 1.0" in metrics

        await eventually(running_one)
        broker.release()
        await wait_state(client, INSTANCE, "succeeded")
        metrics = (await client.get("/metrics")).text
        assert "servicebay_broker_operations_in_flight 0.0" in metrics
        assert (
            'servicebay_broker_operation_duration_seconds_count{kind="provision",'
            'mode="async",state="succeeded"} 1.0'
        ) in metrics


async def test_requests_are_counted_by_endpoint_and_status(db: str) -> None:
    """/metrics counts requests by route template (never a concrete id) and status."""
    async with running(SampleBroker(), db) as client:
        await client.put(INSTANCE, json=provision_body("plan-sync"))
        await client.put(INSTANCE, json=provision_body("plan-sync", size=9))
        metrics = (await client.get("/metrics")).text
    route = "/v2/service_instances/{instance_id:osb_id}"
    assert (
        f'servicebay_broker_requests_total{{endpoint="{route}",method="PUT",status="201"}} 1.0'
        in metrics
    )
    assert (
        f'servicebay_broker_requests_total{{endpoint="{route}",method="PUT",status="409"}} 1.0'
        in metrics
    )
    assert "i-1" not in metrics


async def test_request_durations_and_requests_in_flight_are_exposed(db: str) -> None:
    """Each answered request is timed into its endpoint's histogram; the scrape itself is the
    one request in flight."""
    async with running(SampleBroker(), db) as client:
        await client.put(INSTANCE, json=provision_body("plan-sync"))
        await client.put(INSTANCE, json=provision_body("plan-sync"))
        metrics = (await client.get("/metrics")).text
    route = "/v2/service_instances/{instance_id:osb_id}"
    duration = "servicebay_broker_request_duration_seconds"
    assert f'{duration}_count{{endpoint="{route}"}} 2.0' in metrics
    assert f'{duration}_bucket{{endpoint="{route}",le="+Inf"}} 2.0' in metrics
    assert "servicebay_broker_requests_in_flight 1.0" in metrics


async def test_lost_lease_stops_the_run_and_the_operation_is_taken_over(db: str) -> None:
    """A lost lease stops this process's run; the stale operation is later adopted again."""
    broker = SampleBroker()
    broker.hold.add("provision")
    async with running(broker, db, operation_lease=0.6) as client:
        response = await client.put(INSTANCE, params=ASYNC_OK, json=provision_body(ASYNC))
        operation = response.json()["operation"]
        await eventually(lambda: _true(broker.count("provision") == 1))
        await _set_owner(db, operation, "other-host:1:cafe")
        # Our heartbeat notices, cancels our run; the stale lease is then adopted again.
        await eventually(lambda: _true(broker.count("provision") == 2))
        broker.release()
        await wait_state(client, INSTANCE, "succeeded", operation)


async def test_deprovision_that_deleted_its_record_before_a_crash_resumes_as_succeeded(
    db: str,
) -> None:
    """A deprovision that deleted its record before a crash resumes as succeeded."""
    broker = SampleBroker()
    broker.hold.add("deprovision")
    settings = settings_for(db, shutdown_grace=0.05)
    async with running(broker, db, settings=settings) as client:
        await client.put(INSTANCE, params=ASYNC_OK, json=provision_body(ASYNC))
        await wait_state(client, INSTANCE, "succeeded")
        query = {"service_id": "svc-0001", "plan_id": ASYNC, **ASYNC_OK}
        deleting = await client.delete(INSTANCE, params=query)
        operation = deleting.json()["operation"]
        await eventually(lambda: _true(broker.count("deprovision") == 1))
    async for store in _store(db):
        await store.delete_instance("i-1")  # the crash came right after this write
    restarted = SampleBroker()
    async with running(restarted, db) as client:
        await wait_state(client, INSTANCE, "succeeded", operation)
    assert restarted.count("deprovision") == 0


async def test_provision_recorded_ready_before_a_crash_is_not_run_again(db: str) -> None:
    """A provision recorded ready before a crash resumes as succeeded, author not re-run."""
    operation = await _interrupted_provision(db)
    async for store in _store(db):
        record = await store.get_instance("i-1")
        assert record is not None
        record.state = "ready"
        await store.put_instance(record)
    restarted = SampleBroker()
    async with running(restarted, db) as client:
        await wait_state(client, INSTANCE, "succeeded", operation)
    assert restarted.count("provision") == 0


async def test_resumed_operation_keeps_its_caller(db: str) -> None:
    """A resumed operation hands the author the original originating and request identity."""
    broker = SampleBroker()
    broker.hold.add("provision")
    settings = settings_for(db, shutdown_grace=0.05)
    headers = {
        "X-Broker-API-Originating-Identity": identity_header("servicebay", user_id="bob"),
        "X-Broker-API-Request-Identity": "req-resume",
    }
    async with running(broker, db, settings=settings) as client:
        response = await client.put(
            INSTANCE, params=ASYNC_OK, json=provision_body(ASYNC), headers=headers
        )
        operation = response.json()["operation"]
        await eventually(lambda: _true(broker.count("provision") == 1))
    restarted = SampleBroker()
    async with running(restarted, db) as client:
        await wait_state(client, INSTANCE, "succeeded", operation)
    details = restarted.calls[0][1]
    assert details.identity is not None
    assert details.identity.value == {"user_id": "bob"}
    assert details.request_id == "req-resume"
