"""Lock order on PostgreSQL: a worker step updates its operation before the operation's
instance, as every update of an operation does through the instance-view triggers (migration
0003), so a step and a concurrent update of the operation (a re-claim, say) never deadlock."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from platform_fake_broker import FakeBroker

from conftest import (
    create_pg_database,
    drop_pg_database,
    platform_settings,
    running_platform,
    sync_engine,
)
from servicebay.platform.worker import Job, Worker


@pytest.mark.postgres
async def test_an_accepted_provision_and_an_update_of_its_operation_do_not_deadlock(
    tmp_path: Path,
    postgres_url: str,
    fake: FakeBroker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Inside the step that records an async provision's 202, right after its first write,
    another transaction updates the operation (locking it, then its instance through the
    trigger) and waits: both commit, and the provision goes on to succeed. Had the step
    written the instance first, PostgreSQL would have found a deadlock and aborted one."""
    db_url = create_pg_database(postgres_url)
    engine = sync_engine(db_url)
    competing: list[asyncio.Task[None]] = []

    def update_operation(op_id: str) -> None:
        with engine.begin() as conn:
            conn.execute(sa.text("SET lock_timeout = '10s'"))
            conn.execute(
                sa.text("UPDATE operations SET updated_at = updated_at WHERE id = :id"),
                {"id": op_id},
            )

    def first_write_then_compete(original: Any) -> Any:
        async def wrapper(self: Worker, conn: Any, job: Job, *args: Any, **kwargs: Any) -> None:
            await original(self, conn, job, *args, **kwargs)
            if job.op["kind"] == "provision" and job.op["phase"] == "send" and not competing:
                competing.append(
                    asyncio.create_task(asyncio.to_thread(update_operation, job.op["id"]))
                )
                await asyncio.sleep(0.5)  # the competitor is now waiting for a lock

        return wrapper

    monkeypatch.setattr(Worker, "_set_target", first_write_then_compete(Worker._set_target))
    monkeypatch.setattr(Worker, "_reschedule", first_write_then_compete(Worker._reschedule))
    caplog.set_level(logging.ERROR, logger="servicebay.platform")
    try:
        settings = platform_settings(tmp_path, db_url)
        transport = httpx.ASGITransport(app=fake.app())
        async with running_platform(settings, transport) as platform:
            await platform.register_fake()
            r = await platform.client.post(
                "/api/v1/instances", json={"service": "fake", "plan": "async", "name": "a1"}
            )
            op = await platform.wait(r.json()["operation"])
            assert op["state"] == "succeeded", op
            assert competing, "the accepted branch did not run"
            await asyncio.wait_for(competing[0], 15)  # raises if it was aborted
        assert "step failed" not in caplog.text, caplog.text
        assert "deadlock" not in caplog.text.lower(), caplog.text
    finally:
        engine.dispose()
        drop_pg_database(postgres_url, db_url)
