"""Retention through the running server: nothing is deleted while one member has not
acknowledged it; after everyone has, compaction deletes it (or keeps it, per setting)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from chat_helpers import ServedChat, eventually, serve_chat

from servicebay.chat.client import ChatClient
from servicebay.chat.settings import ChatSettings


@pytest.fixture
async def compacting(tmp_path: Path) -> AsyncIterator[ServedChat]:
    """A chat that compacts every 50 ms and deletes acknowledged messages at once."""
    settings = ChatSettings(
        store=f"sqlite:{tmp_path / 'chat.db'}",
        rooms=["lobby"],
        keep_seconds=0,
        keep_last=0,
        compact_every=0.05,
    )
    async with serve_chat(settings) as served:
        yield served


async def _stored(chat: ServedChat) -> list[int]:
    return [m.seq for m in await chat.store.read("lobby", 0)]


async def test_message_kept_until_every_member_acknowledged(compacting: ServedChat) -> None:
    """An offline member holds back deletion; once it has read and acked, the log empties."""
    ann, bob = await compacting.user("ann", "lobby"), await compacting.user("bob", "lobby")
    async with ChatClient(compacting.ws, ann) as a:
        for i in range(5):
            await a.send("lobby", str(i))
        async with asyncio.timeout(5):
            assert [(await a.next_message()).seq for _ in range(5)] == [1, 2, 3, 4, 5]
        # Ann acked everything; wait for several compaction rounds: bob still holds them all.
        before = await compacting.store.compact()
        assert before == {}
        assert await _stored(compacting) == [1, 2, 3, 4, 5]
        async with ChatClient(compacting.ws, bob) as b:
            async with asyncio.timeout(5):
                got = [(await b.next_message()).body for _ in range(5)]
            assert got == ["0", "1", "2", "3", "4"]
            await eventually(lambda: _stored_is_empty(compacting), 10)
    registry = compacting.service.metrics.registry
    assert registry.get_sample_value("chat_compacted_total", {"room": "lobby"}) == 5
    room = await compacting.store.get_room("lobby")
    assert room is not None and (room.head, room.floor) == (5, 5)


async def _stored_is_empty(chat: ServedChat) -> bool:
    return await _stored(chat) == []


async def test_keep_all_keeps_history_after_everyone_acked(tmp_path: Path) -> None:
    """With keep_all, acknowledged history stays readable."""
    settings = ChatSettings(
        store=f"sqlite:{tmp_path / 'chat.db'}", rooms=["lobby"], keep_all=True, compact_every=0.05
    )
    async with serve_chat(settings) as chat:
        token = await chat.user("ann", "lobby")
        async with ChatClient(chat.ws, token) as a:
            for i in range(3):
                await a.send("lobby", str(i))
            async with asyncio.timeout(5):
                [await a.next_message() for _ in range(3)]
            await eventually(lambda: _cursor_at(chat, 3), 5)
        assert await chat.store.compact() == {}
        assert await _stored(chat) == [1, 2, 3]


async def _cursor_at(chat: ServedChat, seq: int) -> bool:
    return all(m.cursor >= seq for m in await chat.store.members("lobby"))


async def test_reconnect_after_compaction_resumes_at_floor(compacting: ServedChat) -> None:
    """A client that asks for deleted history resumes at the floor, without a hole."""
    token = await compacting.user("ann", "lobby")
    async with ChatClient(compacting.ws, token) as a:
        for i in range(3):
            await a.send("lobby", str(i))
        async with asyncio.timeout(5):
            [await a.next_message() for _ in range(3)]
        await eventually(lambda: _stored_is_empty(compacting), 10)
    async with ChatClient(compacting.ws, token, positions={"lobby": 0}) as again:
        async with asyncio.timeout(5):
            await again.send("lobby", "after")
            message = await again.next_message()
    assert (message.seq, message.body) == (4, "after")
    assert again.stats.holes == 0
