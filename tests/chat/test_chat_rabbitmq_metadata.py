"""The RabbitMQ store's metadata file: the records resync cannot rebuild reach the disk, or the
store says they did not (``make_durable``), whatever other connections to the file do."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from chat_helpers import eventually
from structlog.testing import capture_logs

from servicebay.chat.stores import StoreUnavailable, open_store
from servicebay.chat.stores import _rabbitmq_meta as meta_module
from servicebay.chat.stores import sqlite as sqlite_store
from servicebay.chat.stores._rabbitmq_meta import MetaStore
from servicebay.chat.stores.rabbitmq import RabbitMQChatStore
from support import chat_rabbitmq


@pytest.fixture
async def meta(tmp_path: Path) -> AsyncIterator[MetaStore]:
    """An opened metadata store, committing without fsync as the RabbitMQ store does."""
    store = MetaStore(tmp_path / "meta.db", synchronous="NORMAL")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@contextmanager
def reader_on(path: str) -> Iterator[sqlite3.Connection]:
    """Another connection in a read transaction: it keeps its snapshot (a backup would)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM rooms").fetchone()
        yield conn
    finally:
        conn.close()


def _synced_marks(path: str) -> int:
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT value FROM rmq_settings WHERE name = 'synced'").fetchone()
    return 0 if row is None else int(row[0])


async def test_a_checkpoint_held_up_by_a_reader_is_not_taken_for_durable(meta: MetaStore) -> None:
    """A reader on an older snapshot keeps the FULL checkpoint from reaching the latest commit
    (busy): make_durable says so and syncs the WAL with a synchronous=FULL commit instead,
    promptly (it used to wait the connection's 30 s busy timeout, then report success)."""
    await meta.put_room("before")
    with reader_on(meta.path):
        await meta.put_room("after")  # past the reader's snapshot: not checkpointed
        started = time.monotonic()
        with capture_logs() as logs:
            async with asyncio.timeout(20):
                await meta.make_durable()
        assert time.monotonic() - started < 10
        assert _synced_marks(meta.path) == 1
    assert [e["event"] for e in logs] == ["chat.rabbitmq.checkpoint_busy"]


async def test_a_checkpoint_with_no_reader_in_the_way_needs_no_extra_commit(
    meta: MetaStore,
) -> None:
    """Without a reader holding the WAL the checkpoint itself makes the commits durable."""
    await meta.put_room("r")
    with capture_logs() as logs:
        await meta.make_durable()
    assert logs == []
    assert _synced_marks(meta.path) == 0


async def test_every_checkpoint_runs_on_the_checkpointer_thread(
    meta: MetaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """make_durable's FULL checkpoint runs where the store's own checkpoints run, one at a
    time: two at once on two connections refuse one (busy), and make_durable would then fall
    back to a synced commit of its own (and warn) for nothing."""
    threads: dict[str, set[str]] = {"passive": set(), "full": set()}
    passive, full = sqlite_store._checkpoint, meta_module._checkpoint_full

    def on_passive(conn: sqlite3.Connection) -> tuple[int, int, int]:
        threads["passive"].add(threading.current_thread().name)
        return passive(conn)

    def on_full(conn: sqlite3.Connection) -> bool:
        threads["full"].add(threading.current_thread().name)
        return full(conn)

    monkeypatch.setattr(sqlite_store, "_checkpoint", on_passive)
    monkeypatch.setattr(meta_module, "_checkpoint_full", on_full)
    for i in range(5):
        await meta.put_room(f"r{i}")
        with capture_logs() as logs:
            await meta.make_durable()
        assert logs == []
    await eventually(lambda: threads["passive"])
    assert len(threads["full"]) == 1
    assert threads["full"] == threads["passive"]


async def test_metadata_that_cannot_be_synced_is_unavailable_not_durable(meta: MetaStore) -> None:
    """Another process holding the write lock keeps both the checkpoint and the synced commit
    from happening: make_durable raises StoreUnavailable (it used to return as if durable)."""
    await meta.put_room("r")
    meta.durable_wait = 0.5
    blocker = sqlite3.connect(meta.path, isolation_level=None)
    try:
        with reader_on(meta.path):
            await meta.put_room("late")
            blocker.execute("BEGIN IMMEDIATE")
            async with asyncio.timeout(20):
                with pytest.raises(StoreUnavailable, match="could not be synced"):
                    await meta.make_durable()
    finally:
        blocker.close()
    await meta.make_durable()  # the lock is gone: durable again
    assert _synced_marks(meta.path) == 0


@pytest.mark.rabbitmq
async def test_a_room_resyncs_while_a_reader_holds_the_metadata_file(tmp_path: Path) -> None:
    """The first write to a room records the segment it continues in and makes it durable; a
    reader holding the metadata's WAL (a backup) does not stall it for the busy timeout."""
    store = RabbitMQChatStore(chat_rabbitmq.store_uri(), str(tmp_path / "chat-meta.db"))
    await store.open()
    try:
        await store.put_room("r")
        await store.put_user("ann")
        await store.join("r", "ann")
        with reader_on(store.meta.path):
            await store.put_user("bob")  # a commit past the reader's snapshot
            async with asyncio.timeout(10):
                assert (await store.append("r", "ann", "k1", "one")).seq == 1
        assert _synced_marks(store.meta.path) == 1
    finally:
        await store.close()


@pytest.mark.rabbitmq
async def test_a_room_whose_segment_cannot_be_synced_is_not_written(tmp_path: Path) -> None:
    """When the record of the segment a room continues in cannot be made durable, the send
    fails as unavailable (nothing is answered as stored), and the room is written again once
    the metadata file can be synced."""
    store = RabbitMQChatStore(chat_rabbitmq.store_uri(), str(tmp_path / "chat-meta.db"))
    await store.open()
    store.meta.durable_wait = 0.5
    blocker = sqlite3.connect(store.meta.path, isolation_level=None)
    original, blocked = store.meta.record, []
    try:
        await store.put_room("r")
        await store.put_user("ann")
        await store.join("r", "ann")
        with reader_on(store.meta.path):

            async def record(*args: Any, **kwargs: Any) -> Any:
                recorded = await original(*args, **kwargs)
                if "segment" in kwargs and not blocked:
                    blocker.execute("BEGIN IMMEDIATE")  # from now on, no commit can be made
                    blocked.append(True)
                return recorded

            store.meta.record = record  # type: ignore[method-assign]
            async with asyncio.timeout(20):
                with pytest.raises(StoreUnavailable):
                    await store.append("r", "ann", "k1", "one")
        blocker.rollback()
        async with asyncio.timeout(20):
            assert (await store.append("r", "ann", "k1", "one")).seq == 1
        assert [m.body for m in await store.read("r", 0)] == ["one"]
    finally:
        blocker.close()
        await store.close()


@pytest.mark.rabbitmq
async def test_a_rotation_whose_segment_cannot_be_synced_leaves_the_room_to_resync(
    tmp_path: Path,
) -> None:
    """Rotation records the new stream, then cannot make it durable: that send fails, and the
    room resyncs before its next write (it used to stay synced with its offset in the old
    stream: later sends were recorded at the wrong offsets, their reads found nothing, and a
    resync never found its marker). Every message stored reads back once, in order, here and
    after a restart."""
    url = chat_rabbitmq.store_url(tmp_path, rotate="2")
    store = open_store(url)
    assert isinstance(store, RabbitMQChatStore)
    await store.open()
    store.meta.durable_wait = 0.5
    blocker = sqlite3.connect(store.meta.path, isolation_level=None)
    original, armed, blocked = store.meta.record, [], []

    async def record(*args: Any, **kwargs: Any) -> Any:
        recorded = await original(*args, **kwargs)
        if kwargs.get("segment") is not None and armed and not blocked:
            blocker.execute("BEGIN IMMEDIATE")  # from now on, no commit can be made
            blocked.append(True)
        return recorded

    store.meta.record = record  # type: ignore[method-assign]
    try:
        await store.put_room("r")
        await store.put_user("ann")
        await store.join("r", "ann")
        async with asyncio.timeout(20):
            for n in (1, 2):
                assert (await store.append("r", "ann", f"k{n}", f"m{n}")).seq == n
            with reader_on(store.meta.path):
                armed.append(True)
                with pytest.raises(StoreUnavailable):
                    await store.append("r", "ann", "k3", "m3")  # the third rotates
            assert blocked
            blocker.rollback()
            for n in range(3, 8):
                assert (await store.append("r", "ann", f"k{n}", f"m{n}")).seq == n
            assert [m.body for m in await store.read("r", 0)] == [f"m{n}" for n in range(1, 8)]
    finally:
        blocker.close()
        await store.close()
    again = open_store(url)
    await again.open()
    try:
        async with asyncio.timeout(20):
            assert (await again.append("r", "ann", "k8", "m8")).seq == 8
            messages = await again.read("r", 0)
        assert [(m.seq, m.body) for m in messages] == [(n, f"m{n}") for n in range(1, 9)]
    finally:
        await again.close()
