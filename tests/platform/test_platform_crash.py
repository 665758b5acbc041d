"""Crash and scale-out with real processes: kill -9 mid-poll, and 2 servers + 2 workers on PG."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from platform_fake_broker import PASSWORD, USERNAME
from platform_processes import (
    fake_broker_process,
    platform_env,
    server_process,
    worker_process,
)

from conftest import create_pg_database, drop_pg_database

TOKEN = "e2e-admin-token-42"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def _wait_op(url: str, op_id: str, seconds: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        body: dict[str, Any] = httpx.get(
            f"{url}/api/v1/operations/{op_id}", params={"wait": 5}, headers=HEADERS, timeout=10
        ).json()
        if body["state"] in ("succeeded", "failed") or time.monotonic() > deadline:
            return body


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def e2e_db(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str) -> Any:
    """A database for platform processes."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'platform.db'}"
        return
    url = create_pg_database(postgres_url)
    try:
        yield url
    finally:
        drop_pg_database(postgres_url, url)


@pytest.mark.e2e
def test_platform_killed_while_polling_resumes_and_provisions_once(
    tmp_path: Path, e2e_db: str
) -> None:
    """kill -9 the platform while an async provision is polled; after restart it completes,
    and the broker saw exactly one provision request."""
    env = platform_env(tmp_path / "home", TOKEN, SERVICEBAY_PLATFORM_LEASE_SECONDS="2")
    with fake_broker_process(tmp_path, async_seconds=4.0) as broker_url:
        server = server_process(e2e_db, env, tmp_path / "server.log")
        server.start()
        try:
            r = httpx.post(
                f"{server.url}/api/v1/brokers",
                json={
                    "name": "fake",
                    "url": broker_url,
                    "username": USERNAME,
                    "password": PASSWORD,
                },
                headers=HEADERS,
                timeout=30,
            )
            assert r.status_code == 201, r.text
            r = httpx.post(
                f"{server.url}/api/v1/instances",
                json={"service": "fake", "plan": "async", "name": "crashy"},
                headers=HEADERS,
                timeout=30,
            )
            assert r.status_code == 202, r.text
            op_id = r.json()["operation"]["id"]
            instance_id = r.json()["instance"]["id"]
            deadline = time.monotonic() + 20
            while True:  # until the broker accepted it and the platform is polling
                op = httpx.get(f"{server.url}/api/v1/operations/{op_id}", headers=HEADERS).json()
                if "working on it" in (op["description"] or "") or "accepted" in (
                    op["description"] or ""
                ):
                    break
                assert time.monotonic() < deadline, op
                time.sleep(0.05)
            server.kill()
            server.start()
            done = _wait_op(server.url, op_id)
            assert done["state"] == "succeeded", done
            instance = httpx.get(f"{server.url}/api/v1/instances/crashy", headers=HEADERS).json()
            assert instance["state"] == "ready"
            stats = httpx.get(f"{broker_url}/_fake/stats").json()
            assert stats["provisions"] == {instance_id: 1}
        finally:
            server.stop()
        assert PASSWORD not in server.log and TOKEN not in server.log


@pytest.mark.e2e
@pytest.mark.postgres
def test_two_servers_two_workers_do_each_of_200_provisions_once(
    tmp_path: Path, postgres_url: str
) -> None:
    """Two platform processes and two workers on one PostgreSQL: 200 concurrent provisions,
    each sent to the broker exactly once and each succeeded."""
    db = create_pg_database(postgres_url)
    env = platform_env(tmp_path / "home", TOKEN)
    procs = [
        server_process(db, env, tmp_path / "s1.log"),
        server_process(db, env, tmp_path / "s2.log"),
        worker_process(db, env, tmp_path / "w1.log"),
        worker_process(db, env, tmp_path / "w2.log"),
    ]
    try:
        with fake_broker_process(tmp_path, async_seconds=0.2) as broker_url:
            procs[0].start()  # migrates first; the others then find the schema current
            for proc in procs[1:]:
                proc.start()
            r = httpx.post(
                f"{procs[0].url}/api/v1/brokers",
                json={
                    "name": "fake",
                    "url": broker_url,
                    "username": USERNAME,
                    "password": PASSWORD,
                },
                headers=HEADERS,
                timeout=30,
            )
            assert r.status_code == 201, r.text
            ops = asyncio.run(_provision_many([procs[0].url, procs[1].url], 200))
            assert len(ops) == 200
            failed = [o for o in ops if o["state"] != "succeeded"]
            assert not failed, failed[:3]
            stats = httpx.get(f"{broker_url}/_fake/stats").json()
            assert len(stats["provisions"]) == 200
            assert set(stats["provisions"].values()) == {1}
    finally:
        for proc in procs:
            proc.stop()
        drop_pg_database(postgres_url, db)


async def _provision_many(urls: list[str], count: int) -> list[dict[str, Any]]:
    limits = asyncio.Semaphore(50)

    async def one(client: httpx.AsyncClient, n: int) -> dict[str, Any]:
        base = urls[n % len(urls)]
        plan = "async" if n % 2 else "sync"
        async with limits:
            r = await client.post(
                f"{base}/api/v1/instances",
                json={"service": "fake", "plan": plan, "name": f"i{n:03d}"},
            )
        assert r.status_code == 202, r.text
        op_id = r.json()["operation"]["id"]
        deadline = time.monotonic() + 120
        while True:
            body: dict[str, Any] = (
                await client.get(f"{base}/api/v1/operations/{op_id}", params={"wait": 10})
            ).json()
            if body["state"] in ("succeeded", "failed") or time.monotonic() > deadline:
                return body

    async with httpx.AsyncClient(headers=HEADERS, timeout=60) as client:
        return list(await asyncio.gather(*(one(client, n) for n in range(count))))
