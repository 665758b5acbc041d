"""A store that stops answering for a while: every room's delivery comes back by itself.

The outage is injected at the store's surface (chosen methods raise ``StoreUnavailable`` while
it lasts), so the same tests hold for every backend; the RabbitMQ store's real outages are
covered in test_chat_rabbitmq_store.py and the chaos run with RabbitMQ restarts.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from chat_helpers import ServedChat, eventually, started_service
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from servicebay.chat.client import ChatClient
from servicebay.chat.stores import StoreUnavailable, open_store


class Outage:
    """While ``down``, the named store methods raise ``StoreUnavailable`` (counted)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, store: object, *names: str) -> None:
        self.down = True
        self.refused = 0
        for name in names:
            monkeypatch.setattr(store, name, self._guard(getattr(store, name)))

    def _guard(self, real: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                self.refused += 1
                raise StoreUnavailable("the store is down (test outage)")
            return await real(*args, **kwargs)

        return call


async def _history(chat: ServedChat, user: str, count: int) -> str:
    """A member with ``count`` stored messages the server has not loaded (read from the store)."""
    await chat.store.put_user(user)
    await chat.store.join("lobby", user, cursor=0)
    for i in range(count):
        await chat.store.append("lobby", user, f"old{i}", f"old {i}")
    return (await chat.store.issue_token(user)).token


async def _frames(ws: ClientConnection, until: Callable[[dict[str, Any]], bool]) -> list[Any]:
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while not any(until(f) for f in seen):
            data = json.loads(await ws.recv())
            seen.extend(data if isinstance(data, list) else [data])
    return seen


async def test_delivery_resumes_after_store_reads_fail(
    chat: ServedChat, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads of history fail for a while: the client is told, then gets everything in order."""
    token = await _history(chat, "ann", 5)
    outage = Outage(monkeypatch, chat.store, "read")
    async with ChatClient(chat.ws, token) as ann:
        await eventually(lambda: outage.refused >= 2 and ann.stats.errors.get("unavailable"))
        outage.down = False
        async with asyncio.timeout(10):
            got = [await ann.next_message() for _ in range(5)]
    assert [(m.seq, m.body) for m in got] == [(i + 1, f"old {i}") for i in range(5)]


async def test_room_that_cannot_load_is_subscribed_once_the_store_is_back(
    chat: ServedChat, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading the room fails at hello: an error names the room; joined and history follow."""
    token = await _history(chat, "ann", 3)
    outage = Outage(monkeypatch, chat.store, "members")
    async with connect(chat.ws) as ws:
        await ws.send(json.dumps({"type": "hello", "token": token}))
        first = await _frames(ws, lambda f: f["type"] == "error")
        outage.down = False
        later = await _frames(ws, lambda f: f["type"] == "msg" and f["seq"] == 3)
    error = next(f for f in first if f["type"] == "error")
    assert (error["code"], error["room"]) == ("unavailable", "lobby")
    assert first[0]["type"] == "welcome"
    joined = next(f for f in later if f["type"] == "joined")
    assert (joined["room"], joined["from"], joined["head"]) == ("lobby", 0, 3)
    assert [f["seq"] for f in later if f["type"] == "msg"] == [1, 2, 3]


async def test_hello_while_the_store_is_down_closes_for_a_retry(
    chat: ServedChat, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hello during an outage: `unavailable`, close 1013; the client reconnects and resumes."""
    token = await _history(chat, "ann", 2)
    outage = Outage(monkeypatch, chat.store, "authenticate")
    async with connect(chat.ws) as ws:
        await ws.send(json.dumps({"type": "hello", "token": token}))
        frames = await _frames(ws, lambda f: f["type"] == "error")
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(10):
                await ws.recv()
    assert frames[0]["code"] == "unavailable"
    assert ws.close_code == 1013
    async with ChatClient(chat.ws, token, retry_min=0.02) as ann:
        await eventually(lambda: ann.stats.connects >= 2)
        outage.down = False
        async with asyncio.timeout(10):
            got = [await ann.next_message() for _ in range(2)]
    assert [m.seq for m in got] == [1, 2]


async def test_hole_is_filled_once_the_store_answers(
    chat: ServedChat, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A published seq after a hole waits for the hole's read, retried until the store is back."""
    ann, bob = await chat.user("ann", "lobby"), await chat.user("bob", "lobby")
    await chat.store.append("lobby", "ann", "unseen", "stored, never published")  # the hole
    outage = Outage(monkeypatch, chat.store, "read")
    async with ChatClient(chat.ws, ann) as a, ChatClient(chat.ws, bob) as b:
        assert await a.send("lobby", "after the hole") == 2
        await eventually(lambda: outage.refused >= 2)
        outage.down = False
        async with asyncio.timeout(10):
            got = [await b.next_message() for _ in range(2)]
    assert [(m.seq, m.key) for m in got] == [(1, "unseen"), (2, got[1].key)]


async def test_append_failing_after_its_sender_left_is_logged_not_lost(
    chat: ServedChat, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A send cancelled mid-append: the append's later failure is logged, never unretrieved."""
    await chat.user("ann", "lobby")
    user = await chat.store.get_user("ann")
    assert user is not None
    started, release = asyncio.Event(), asyncio.Event()

    async def failing_append(*args: object) -> None:
        started.set()
        await release.wait()
        raise StoreUnavailable("commit failed (test)")

    monkeypatch.setattr(chat.store, "append", failing_append)
    unretrieved: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))
    try:
        with structlog.testing.capture_logs() as logs:
            send = asyncio.create_task(chat.service.send("lobby", user, "k", "hello"))
            await started.wait()
            send.cancel()
            release.set()
            await eventually(lambda: any(e["event"] == "chat.task_failed" for e in logs))
        del send
        gc.collect()
        await asyncio.sleep(0)  # exception handlers run from the loop
    finally:
        loop.set_exception_handler(None)
    assert unretrieved == []


async def test_join_during_an_outage_is_answered_once_the_store_is_back(
    chat: ServedChat, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A join while the room cannot load: `unavailable` naming the room, then `joined`."""
    token = await chat.user("ann")
    outage = Outage(monkeypatch, chat.store, "members")
    async with connect(chat.ws) as ws:
        await ws.send(json.dumps({"type": "hello", "token": token}))
        await _frames(ws, lambda f: f["type"] == "welcome")
        await ws.send(json.dumps({"type": "join", "room": "side", "after": None}))
        first = await _frames(ws, lambda f: f["type"] == "error")
        outage.down = False
        later = await _frames(ws, lambda f: f["type"] == "joined")
    error = next(f for f in first if f["type"] == "error")
    assert (error["code"], error["room"]) == ("unavailable", "side")
    assert next(f for f in later if f["type"] == "joined")["room"] == "side"
    assert "ann" in {m.user for m in await chat.store.members("side")}


async def test_acks_written_once_the_store_is_back(
    chat: ServedChat, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cursor writes that fail are kept and retried: the cursor moves without a new ack."""
    ann, bob = await chat.user("ann", "lobby"), await chat.user("bob", "lobby")
    outage = Outage(monkeypatch, chat.store, "ack_many")
    async with ChatClient(chat.ws, ann) as a, ChatClient(chat.ws, bob) as b:
        await a.send("lobby", "hi")
        async with asyncio.timeout(5):
            await b.next_message()
        await eventually(lambda: outage.refused >= 2)
        outage.down = False
        await eventually(lambda: _cursor(chat, "lobby", "bob", 1))


async def _cursor(chat: ServedChat, room: str, user: str, at_least: int) -> bool:
    members = {m.user: m.cursor for m in await chat.store.members(room)}
    return members.get(user, -1) >= at_least


async def test_stop_writes_the_cursors_still_lingering(tmp_path: Path) -> None:
    """Acks batched for the next cursor write are written when the server stops, not lost."""
    service = await started_service(tmp_path / "chat.db", "r", "ann")
    await service.store.append("r", "ann", "k", "hello")
    hub = await service.hub("r")
    service.request_ack(hub, "ann", 1)
    await service.stop()  # before the batch's linger is over
    store = open_store(f"sqlite:{tmp_path / 'chat.db'}")
    await store.open()
    try:
        assert [(m.user, m.cursor) for m in await store.members("r")] == [("ann", 1)]
    finally:
        await store.close()
