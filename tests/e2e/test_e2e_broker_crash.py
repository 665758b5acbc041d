"""kill -9 the broker during an async provision; restarted on the same store it tells the truth.

spec: Polling Last Operation — brokers SHOULD NOT forget an operation's state; the issue: "a
broker process killed mid-operation and restarted still answers last_operation truthfully (the
operation is resumed or reported failed, never forgotten)".
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from servicebay.examples.sandbox import SERVICE_ID, plan_id
from servicebay.testing import serve_broker

pytestmark = pytest.mark.e2e

IDS = {"service_id": SERVICE_ID, "plan_id": plan_id("async")}
SANDBOX = "servicebay.examples.sandbox:broker"


def client_for(served: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=served.url,
        auth=(served.username, served.password),
        headers={"X-Broker-API-Version": "2.17"},
        timeout=10,
    )


async def wait_for_progress(client: httpx.AsyncClient, path: str, params: dict[str, str]) -> None:
    """Poll until the running operation has durably recorded a progress description."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        body = (await client.get(path, params=params)).json()
        assert body["state"] == "in progress", body
        if body.get("description"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no progress recorded within 20s")


async def poll_after_restart(
    client: httpx.AsyncClient, path: str, params: dict[str, str]
) -> dict[str, Any]:
    """Poll to a terminal state; every answer must be a 200 (never 404/410: not forgotten)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer = await client.get(path, params=params)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        if body["state"] != "in progress":
            return body
        await asyncio.sleep(0.1)
    raise AssertionError("operation still in progress 60s after the restart")


async def crash_and_restart(db: str, env: dict[str, str] | None = None) -> None:
    instance = f"crash-{uuid.uuid4()}"
    base = f"/v2/service_instances/{instance}"
    body = {**IDS, "organization_guid": "o", "space_guid": "s", "parameters": {"delay_seconds": 6}}
    with serve_broker(SANDBOX, db=db, env=env) as served:
        async with client_for(served) as client:
            accepted = await client.put(base, json=body, params={"accepts_incomplete": "true"})
            assert accepted.status_code == 202, accepted.text
            params = dict(IDS)
            if accepted.json().get("operation"):
                params["operation"] = accepted.json()["operation"]
            await wait_for_progress(client, base + "/last_operation", params)
        served.kill()  # SIGKILL to the whole process group, mid-operation
        served.restart()  # same database, key and port
        async with client_for(served) as client:
            final = await poll_after_restart(client, base + "/last_operation", params)
            if final["state"] == "succeeded":
                assert (await client.get(base)).status_code == 200
                retry = await client.put(base, json=body, params={"accepts_incomplete": "true"})
                assert retry.status_code == 200, retry.text
            else:
                assert final["state"] == "failed" and final.get("description"), final
        assert "provisioning: step" in served.log


async def test_kill_9_mid_async_provision_on_sqlite(tmp_path: Any) -> None:
    """SQLite store: after kill -9 and restart, last_operation reaches a truthful terminal state."""
    await crash_and_restart(f"sqlite:///{tmp_path / 'broker.db'}")


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[str]:
    """A fresh database on the real PostgreSQL, dropped afterwards."""
    import psycopg

    name = f"sb_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.postgres
async def test_kill_9_mid_async_provision_on_postgres(postgres_database: str) -> None:
    """PostgreSQL store: the same guarantee."""
    key = Fernet.generate_key().decode()  # PostgreSQL has no key file next to it
    await crash_and_restart(postgres_database, {"SERVICEBAY_BROKER_KEY": key})
