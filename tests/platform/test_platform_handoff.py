"""The hand-off of a just-queued operation to the in-process worker: a slot reserved for an
operation whose transaction then fails is given back at once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from conftest import platform_settings
from servicebay.platform import Worker, store
from servicebay.platform.services.operations import enqueue
from servicebay.platform.services.runtime import Platform


class _Abandoned(Exception):
    """The rest of the API's transaction failed (a name taken meanwhile, say)."""


async def test_slot_reserved_for_a_rolled_back_queueing_is_given_back(
    tmp_path: Path, db_url: str
) -> None:
    """Without the give-back, each failed request holds a slot for ``lease_seconds`` and a
    worker with every slot so held claims nothing at all meanwhile."""
    platform = Platform(platform_settings(tmp_path, db_url, lease_seconds=600.0))
    await platform.start()
    worker = Worker(platform, concurrency=1)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        for _ in range(100):
            if platform.local is worker:
                break
            await asyncio.sleep(0.01)
        assert platform.local is worker
        with pytest.raises(_Abandoned):
            async with platform.db.begin() as conn:
                op = await enqueue(
                    conn,
                    platform,
                    kind="provision",
                    namespace="default",
                    user="admin",
                    instance_id=None,
                    instance_name="x",
                    request={},
                    handoff=True,
                )
                assert op["owner"] == worker.id  # the one slot was reserved for it
                raise _Abandoned
        assert platform.lease_for_local("the-next-one") is not None
        platform.release_local("the-next-one")
        # A committed queueing keeps its slot until submit() hands the operation over.
        async with platform.db.begin() as conn:
            op = await enqueue(
                conn,
                platform,
                kind="provision",
                namespace="default",
                user="admin",
                instance_id=None,
                instance_name="y",
                request={},
                handoff=True,
            )
        assert op["owner"] == worker.id
        assert platform.lease_for_local("the-next-one") is None
        platform.submit(op)
    finally:
        stop.set()
        await running
        await platform.close()


async def test_listening_survives_an_unexpected_driver_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An asyncpg ``InterfaceError`` (not a ``PostgresError``: "connection is closed" as a
    listener is added) must not end listening for good, nor make ``close`` raise."""
    calls = 0

    async def flaky(url: str, callbacks: dict[str, Any], stop: asyncio.Event) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise asyncpg.InterfaceError("connection is closed")
        await stop.wait()

    monkeypatch.setattr(store, "_listen_once", flaky)
    db = store.Database(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    stop = asyncio.Event()
    listening = asyncio.create_task(db.listen({}, stop))
    for _ in range(300):
        if calls >= 2:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(listening, 5)
    await db.close()
    assert calls == 2
