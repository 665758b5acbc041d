"""The hand-off of a just-queued operation to the in-process worker: a slot reserved for an
operation whose transaction then fails is given back at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conftest import platform_settings
from servicebay.platform import Worker
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
