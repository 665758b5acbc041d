"""What the RabbitMQ store keeps in memory per room: an entry for each room that exists and is in
use, none for a room name that does not exist (any user may ask about any name)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from servicebay.chat.stores import UnknownRoom
from servicebay.chat.stores.rabbitmq import RabbitMQChatStore
from support import chat_rabbitmq

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[RabbitMQChatStore]:
    """An opened RabbitMQ store with room ``r`` where ann is a member."""
    async with chat_rabbitmq.opened_store(tmp_path, "r", ("ann",)) as opened:
        yield opened


async def test_calls_on_missing_rooms_keep_no_entry(store: RabbitMQChatStore) -> None:
    """Each call naming a room that does not exist answers as before (None or UnknownRoom) and
    leaves no entry behind, also when many ask about one name at once; the existing room's
    entry is kept and works."""
    assert (await store.append("r", "ann", "k1", "one")).seq == 1
    async with asyncio.timeout(20):
        for i in range(5):
            assert await store.get_room(f"get-{i}") is None
            with pytest.raises(UnknownRoom):
                await store.members(f"members-{i}")
            with pytest.raises(UnknownRoom):
                await store.read(f"read-{i}", 0)
            with pytest.raises(UnknownRoom):
                await store.append(f"append-{i}", "ann", "k", "x")
        together = [store.get_room("same") for _ in range(10)]
        together += [store.append("same", "ann", f"k{i}", "x") for i in range(10)]
        outcomes = await asyncio.gather(*together, return_exceptions=True)
    assert outcomes[:10] == [None] * 10
    assert all(isinstance(o, UnknownRoom) for o in outcomes[10:])
    assert set(store._rooms) == {"r"}
    assert [r.id for r in await store.list_rooms()] == ["r"]
    assert (await store.append("r", "ann", "k2", "two")).seq == 2
    assert [m.body for m in await store.read("r", 0)] == ["one", "two"]


async def test_a_room_created_while_it_is_looked_up_is_synced_once(
    store: RabbitMQChatStore,
) -> None:
    """Lookups of a name that does not exist yet, racing with its creation, each answer
    (missing, or the new room); the room ends with one entry, resynced once, and takes
    sends in order."""
    resyncs = store.resyncs
    async with asyncio.timeout(20):
        looked = [store.get_room("late") for _ in range(6)]
        outcomes = await asyncio.gather(*looked[:3], store.put_room("late"), *looked[3:])
        found = [o for i, o in enumerate(outcomes) if i != 3]
        assert all(o is None or o.id == "late" for o in found)
        await store.join("late", "ann")
        assert [(await store.append("late", "ann", f"k{i}", str(i))).seq for i in range(3)] == [
            1,
            2,
            3,
        ]
    assert store.resyncs - resyncs == 1
    assert set(store._rooms) == {"late"}
    assert [m.body for m in await store.read("late", 0)] == ["0", "1", "2"]
