"""Receivers behind what a room keeps in memory read its history in shared blocks: one store
read per block for all of them, not one per receiver (docs/chat.md, "Speed")."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from chat_helpers import eventually, started_service

from servicebay.chat import service as service_module
from servicebay.chat.service import HISTORY_BLOCK, ChatService, Entry
from servicebay.chat.stores import Message, Retention, StoreUnavailable

TOTAL = 5 * HISTORY_BLOCK + 37


@pytest.fixture
async def service(tmp_path: Path) -> ChatService:
    """A service over an SQLite store whose room ``r`` holds TOTAL messages, none in memory."""
    chat = await started_service(tmp_path / "chat.db", "r", "ann")
    await chat.store.append_many("r", "ann", [(f"k{i}", f"m{i}") for i in range(TOTAL)])
    yield chat  # type: ignore[misc]
    await chat.stop()


async def _read_all(chat: ChatService, limit: int) -> list[int]:
    hub = await chat.hub("r")
    seen: list[int] = []
    while not seen or seen[-1] < hub.head:
        entries = await chat.fetch(hub, seen[-1] if seen else 0, limit)
        assert entries, "fetch returned nothing before the head"
        seen += [e.seq for e in entries]
    return seen


def _count_reads(chat: ChatService, monkeypatch: pytest.MonkeyPatch, fail_first: bool) -> list[int]:
    """Count the store's reads (each yields once on its way, so concurrent readers meet)."""
    calls: list[int] = []
    real = chat.store.read

    async def read(room: str, after: int, limit: int = 500) -> list[Message]:
        calls.append(after)
        await asyncio.sleep(0)
        if fail_first and len(calls) == 1:
            raise StoreUnavailable("the first read fails")
        return await real(room, after, limit)

    monkeypatch.setattr(chat.store, "read", read)
    return calls


async def test_receivers_behind_memory_share_each_history_read(
    service: ChatService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """22 readers from seq 0 with different limits each get every seq once, in order, and the
    store is read about once per block (a read per reader and batch would be over 130)."""
    monkeypatch.setattr(service_module, "RECENT", 100)
    service._hubs.clear()  # reload the hub: its memory holds the last 100 at most
    calls = _count_reads(service, monkeypatch, fail_first=False)
    limits = [HISTORY_BLOCK] * 20 + [100, 7]
    results = await asyncio.gather(*(_read_all(service, limit) for limit in limits))
    for seen in results:
        assert seen == list(range(1, TOTAL + 1))
    blocks = -(-TOTAL // HISTORY_BLOCK)
    assert 0 < len(calls) <= 2 * blocks, calls
    assert all(after % HISTORY_BLOCK == 0 for after in calls)


async def test_a_failed_shared_read_fails_only_its_reader(
    service: ChatService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The readers that waited for a read that failed read for themselves; only the one that
    made it hears the failure, and retrying it works."""
    service._hubs.clear()
    calls = _count_reads(service, monkeypatch, fail_first=True)
    hub = await service.hub("r")
    outcomes = await asyncio.gather(
        *(service.fetch(hub, 0, 10) for _ in range(5)), return_exceptions=True
    )
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], StoreUnavailable)
    for outcome in outcomes:
        if not isinstance(outcome, BaseException):
            assert [e.seq for e in outcome] == list(range(1, 11))
    assert [e.seq for e in await service.fetch(hub, 0, 10)] == list(range(1, 11))
    assert len(calls) >= 2


async def test_compaction_drops_the_kept_history_blocks(tmp_path: Path) -> None:
    """Kept blocks may hold what compaction deletes: a round that deleted messages of a room
    drops them, so no reader is handed a message the store no longer holds."""
    chat = await started_service(tmp_path / "chat.db", "r", "ann", compact_every=0.05)
    try:
        await chat.store.put_room("r", Retention(keep_seconds=0, keep_last=0))
        await chat.store.append_many("r", "ann", [(f"k{i}", f"m{i}") for i in range(TOTAL)])
        chat._hubs.clear()
        hub = await chat.hub("r")
        hub.recent.clear()  # memory reaches nothing: reads go to the store
        assert [e.seq for e in await chat.fetch(hub, 0, 10)] == list(range(1, 11))
        assert 0 in hub.history  # the first block is kept
        await chat.ack(hub, "ann", TOTAL)
        await eventually(lambda: not hub.history, seconds=10)
        assert await chat.store.read("r", 0, 10) == []
    finally:
        await chat.stop()


async def test_a_shared_read_that_ended_too_early_is_not_the_answer(service: ChatService) -> None:
    """A reader handed a shared block that stops before its position (read before the seqs it
    needs were stored) reads them itself instead of reporting nothing."""
    service._hubs.clear()
    hub = await service.hub("r")
    hub.recent.clear()
    early = asyncio.get_running_loop().create_future()
    hub.history[0] = early  # a read of block 0 under way, which will end at seq 5
    fetching = asyncio.ensure_future(service.fetch(hub, 10, 5))
    await asyncio.sleep(0)
    early.set_result([Entry.of(m) for m in await service.store.read("r", 0, 5)])
    assert [e.seq for e in await fetching] == [11, 12, 13, 14, 15]
