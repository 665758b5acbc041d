"""What only the RabbitMQ store has to get right: finding RabbitMQ through a binding, adopting
messages whose confirm was lost, deleting whole streams, and riding out a RabbitMQ outage."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from servicebay.chat.stores import Retention, StoreNotOpened, StoreUnavailable, open_store
from servicebay.chat.stores._rabbitmq_log import StreamLog, chat_entry
from servicebay.chat.stores.rabbitmq import RabbitMQChatStore
from support import chat_rabbitmq
from support.rabbitmq_node import RabbitMQNode

pytestmark = pytest.mark.rabbitmq


async def _opened(url: str) -> RabbitMQChatStore:
    store = open_store(url)
    assert isinstance(store, RabbitMQChatStore)
    await store.open()
    return store


async def _room(store: RabbitMQChatStore, retention: Retention | None = None) -> None:
    await store.put_room("r", retention or Retention())
    await store.put_user("ann")
    await store.join("r", "ann")


def _stream_exists(vhost: str, name: str) -> bool:
    url = f"{chat_rabbitmq.MANAGEMENT}/api/queues/{quote(vhost, safe='')}/{quote(name, safe='')}"
    return httpx.get(url, auth=chat_rabbitmq.AUTH, timeout=30).status_code == 200


async def test_store_finds_rabbitmq_through_the_only_binding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rabbitmq`` without a name uses the one binding of type rabbitmq in the binding root."""
    chat_rabbitmq.store_url(tmp_path)  # writes tmp_path/bindings/chat-mq
    monkeypatch.setenv("SERVICE_BINDING_ROOT", str(tmp_path / "bindings"))
    monkeypatch.chdir(tmp_path)
    store = await _opened("rabbitmq")
    try:
        await store.ping()
        await _room(store)
        assert (await store.append("r", "ann", "k", "hi")).seq == 1
    finally:
        await store.close()
    assert (tmp_path / "servicebay-chat-rabbitmq.db").exists()


async def test_message_stored_without_confirm_is_adopted_once(tmp_path: Path) -> None:
    """A message RabbitMQ stored but whose confirm never reached the server (it crashed) is
    found on restart: it keeps its seq; the resend of its key gets that seq, stores nothing, and
    is answered once as new (its sender never heard of it) then as a duplicate."""
    url = chat_rabbitmq.store_url(tmp_path)
    store = await _opened(url)
    await _room(store)
    await store.append("r", "ann", "k1", "one")
    stream = store._rooms["r"].segments[-1].stream
    await store.close()
    # What the crashed server had published: seq 2, never recorded in the metadata.
    log = StreamLog(chat_rabbitmq.store_uri())
    await log.publish(stream, [chat_entry(2, [("ann", "k2", "two", 1.0)])])
    await log.close()

    again = await _opened(url)
    try:
        assert (await again.get_room("r")).head == 2  # type: ignore[union-attr]
        resent = await again.append("r", "ann", "k2", "two")
        assert (resent.seq, resent.duplicate) == (2, False)
        resent = await again.append("r", "ann", "k2", "two")
        assert (resent.seq, resent.duplicate) == (2, True)
        assert (await again.append("r", "ann", "k3", "three")).seq == 3
        assert [m.body for m in await again.read("r", 0)] == ["one", "two", "three"]
    finally:
        await again.close()


async def test_concurrent_appends_share_one_entry_and_read_back_from_its_middle(
    tmp_path: Path,
) -> None:
    """Appends waiting together are published as one stream entry; a read may start inside an
    entry (and across entries split by size), before and after a restart."""
    url = chat_rabbitmq.store_url(tmp_path)
    store = await _opened(url)
    await _room(store)
    await store.append("r", "ann", "k0", "zero")
    batches = store.batches
    bodies = [f"m{i}" for i in range(1, 41)] + ["x" * 16_000] * 40  # 640,000 chars: 3+ entries
    appended = await asyncio.gather(
        *(store.append("r", "ann", f"k{i + 1}", b) for i, b in enumerate(bodies))
    )
    assert [a.seq for a in appended] == list(range(2, 82))
    assert store.batches - batches <= 2  # the first append of the gather may go alone
    assert store._rooms["r"].next_offset <= 1 + 1 + 1 + 5  # marker, k0, then a few entries
    try:
        assert [m.seq for m in await store.read("r", 5, limit=3)] == [6, 7, 8]
        assert [m.body for m in await store.read("r", 60, limit=2)] == ["x" * 16_000] * 2
    finally:
        await store.close()
    again = await _opened(url)
    try:
        assert [m.seq for m in await again.read("r", 20)] == list(range(21, 82))
        assert (await again.append("r", "ann", "k40", "again")).duplicate
        assert (await again.append("r", "ann", "new", "new")).seq == 82
    finally:
        await again.close()


async def test_a_stored_but_unrecorded_entry_is_adopted_whole(tmp_path: Path) -> None:
    """An entry of three messages that reached the stream but not the metadata: all three are
    adopted with their seqs, and a read starting at the second finds it."""
    url = chat_rabbitmq.store_url(tmp_path)
    store = await _opened(url)
    await _room(store)
    await store.append("r", "ann", "k1", "one")
    stream = store._rooms["r"].segments[-1].stream
    await store.close()
    log = StreamLog(chat_rabbitmq.store_uri())
    lost = [("ann", f"k{seq}", f"body{seq}", 1.0) for seq in (2, 3, 4)]
    await log.publish(stream, [chat_entry(2, lost)])
    await log.close()

    again = await _opened(url)
    try:
        assert (await again.get_room("r")).head == 4  # type: ignore[union-attr]
        assert [m.body for m in await again.read("r", 2)] == ["body3", "body4"]
        assert (await again.append("r", "ann", "k3", "body3")).seq == 3
        assert (await again.append("r", "ann", "k5", "five")).seq == 5
    finally:
        await again.close()


async def test_metadata_from_before_packing_is_refused(tmp_path: Path) -> None:
    """A metadata file whose segments were written one message per entry cannot be read with
    the packed layout: opening it is refused with one line, not misread."""
    url = chat_rabbitmq.store_url(tmp_path)
    store = await _opened(url)
    await _room(store)
    await store.append("r", "ann", "k1", "one")
    await store.close()
    with sqlite3.connect(tmp_path / "chat-meta.db") as conn:
        conn.execute("DELETE FROM rmq_settings WHERE name = 'format'")
    with pytest.raises(StoreNotOpened, match="older servicebay"):
        await _opened(url)


async def test_compaction_deletes_streams_wholly_below_the_floor(tmp_path: Path) -> None:
    """With 4 messages per stream generation, acknowledged history goes stream by stream."""
    url = chat_rabbitmq.store_url(tmp_path, rotate="4")
    store = await _opened(url)
    try:
        await _room(store, Retention(keep_seconds=0, keep_last=0))
        await store.put_user("bob")
        await store.join("r", "bob")
        for i in range(10):
            await store.append("r", "ann", f"k{i}", str(i))
        streams = sorted({s.stream for s in store._rooms["r"].segments})
        assert len(streams) == 3
        vhost = chat_rabbitmq.session_vhost()
        await store.ack("r", "ann", 10)
        await store.ack("r", "bob", 5)
        assert await store.compact() == {"r": 5}
        assert [m.seq for m in await store.read("r", 0)] == [6, 7, 8, 9, 10]
        assert not _stream_exists(vhost, streams[0])  # seqs 1-4: all below the floor
        assert _stream_exists(vhost, streams[1])  # seqs 5-8: 6-8 still needed
        await store.ack("r", "bob", 10)
        assert await store.compact() == {"r": 5}
        assert not _stream_exists(vhost, streams[1])
        assert _stream_exists(vhost, streams[2])  # the current stream stays
        assert await store.read("r", 0) == []
        # Keys outlive the deleted streams.
        assert (await store.append("r", "ann", "k0", "0")).duplicate
    finally:
        await store.close()


async def test_tokens_are_not_stored_in_clear(tmp_path: Path) -> None:
    """The metadata file keeps token digests only."""
    store = await _opened(chat_rabbitmq.store_url(tmp_path))
    try:
        await store.put_user("ann")
        issued = await store.issue_token("ann")
        assert (await store.authenticate(issued.token)).id == "ann"  # type: ignore[union-attr]
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "chat-meta.db") as conn:
        assert issued.token not in "\n".join(conn.iterdump())


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[RabbitMQNode]:
    """A private RabbitMQ node this test may crash (never the shared one)."""
    private = RabbitMQNode(tmp_path / "node")
    private.start()
    try:
        await private.ready()
        yield private
    finally:
        private.stop()


@pytest.mark.e2e
async def test_outage_raises_unavailable_and_the_store_recovers(
    tmp_path: Path, node: RabbitMQNode
) -> None:
    """RabbitMQ goes down: appends and ping raise StoreUnavailable; it returns: seqs go on."""
    store = await _opened(chat_rabbitmq.store_url(tmp_path, uri=node.uri))
    try:
        await _room(store)
        assert (await store.append("r", "ann", "k1", "one")).seq == 1
        await node.shutdown()
        with pytest.raises(StoreUnavailable):
            await store.append("r", "ann", "k2", "two")
        with pytest.raises(StoreUnavailable):
            await store.ping()
        node.start()
        await node.ready()

        async def appended() -> int:
            try:
                return (await store.append("r", "ann", "k2", "two")).seq
            except StoreUnavailable:
                await asyncio.sleep(0.1)  # polling with a deadline (asyncio.timeout below)
                return 0

        async with asyncio.timeout(60):
            while (seq := await appended()) == 0:
                pass
        assert seq == 2
        await store.ping()
        assert [m.body for m in await store.read("r", 0)] == ["one", "two"]
    finally:
        await store.close()


async def test_an_append_arriving_while_a_batch_is_recorded_is_answered(tmp_path: Path) -> None:
    """A send that comes while the room's writer records the previous batch (and had nothing
    queued behind it) is written by that writer, not left until some later send."""
    store = await _opened(chat_rabbitmq.store_url(tmp_path))
    try:
        await _room(store)
        original = store.meta.record
        late: list[asyncio.Future[Any]] = []

        async def record(*args: Any, **kwargs: Any) -> Any:
            if not late and "segment" not in kwargs:
                late.append(store.append("r", "ann", "k2", "two"))
            return await original(*args, **kwargs)

        store.meta.record = record  # type: ignore[method-assign]
        assert (await store.append("r", "ann", "k1", "one")).seq == 1
        assert (await asyncio.wait_for(late[0], 10)).seq == 2
    finally:
        await store.close()


async def test_the_stream_a_room_continues_in_is_in_the_database_file_itself(
    tmp_path: Path,
) -> None:
    """Metadata commits skip the fsync (what a power loss takes back is rebuilt from the
    streams), except the record of the stream a room continues in, which resync cannot
    rebuild: it is checkpointed into the database file at once, so the file alone (without
    its write-ahead log, as after a power loss before a checkpoint) already has it."""
    store = await _opened(chat_rabbitmq.store_url(tmp_path, rotate="4"))
    try:
        await _room(store)
        for i in range(6):
            await store.append("r", "ann", f"k{i}", str(i))
        generations = sorted({s.gen for s in store._rooms["r"].segments})
        alone = tmp_path / "file-alone.db"
        alone.write_bytes((tmp_path / "chat-meta.db").read_bytes())
        with sqlite3.connect(alone) as conn:
            stored = {gen for (gen,) in conn.execute("SELECT gen FROM rmq_segments")}
    finally:
        await store.close()
    assert len(generations) == 2
    assert stored == set(generations)
