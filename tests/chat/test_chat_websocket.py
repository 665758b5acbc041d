"""Protocol v1 over a real socket: send, deliver in order, acks, resume, idempotency."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from chat_helpers import ServedChat, eventually
from websockets.asyncio.client import ClientConnection, connect

from servicebay.chat import client as client_module
from servicebay.chat.client import ChatClient, ChatError
from servicebay.chat.protocol import MAX_BODY_CHARS
from servicebay.chat.server import SUBMIT_CHUNK, WINDOW


async def _frames_until(
    ws: ClientConnection, kind: str, seconds: float = 5
) -> list[dict[str, Any]]:
    """Frames received up to and including the first of ``kind``."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(seconds):
        while True:
            data = json.loads(await ws.recv())
            batch = data if isinstance(data, list) else [data]
            seen.extend(batch)
            if any(f["type"] == kind for f in batch):
                return seen


async def test_two_clients_chat_in_seq_order(chat: ServedChat) -> None:
    """What one sends, the other receives, in seq order, each once."""
    ann, bob = await chat.user("ann", "lobby"), await chat.user("bob", "lobby")
    async with ChatClient(chat.ws, ann) as a, ChatClient(chat.ws, bob) as b:
        seqs = [await a.send("lobby", f"hello {i}") for i in range(20)]
        assert seqs == list(range(1, 21))
        async with asyncio.timeout(5):
            got = [await b.next_message() for _ in range(20)]
    assert [(m.seq, m.body, m.sender) for m in got] == [
        (i + 1, f"hello {i}", "ann") for i in range(20)
    ]


async def test_sent_answer_comes_after_durable_store(chat: ServedChat) -> None:
    """When `sent` arrives, the message is already in the store with that seq."""
    token = await chat.user("ann", "lobby")
    async with connect(chat.ws) as ws:
        await ws.send(json.dumps({"type": "hello", "token": token}))
        await ws.send(json.dumps({"type": "send", "room": "lobby", "key": "k1", "body": "x"}))
        frames = await _frames_until(ws, "sent")
    sent = next(f for f in frames if f["type"] == "sent")
    stored = await chat.store.read("lobby", 0)
    assert [(m.seq, m.key) for m in stored] == [(sent["seq"], "k1")]


async def test_resend_after_lost_answer_gets_same_seq_once(chat: ServedChat) -> None:
    """A resend with the same key (its answer lost) yields the same seq and stores nothing."""
    token = await chat.user("ann", "lobby")
    answers = []
    for _ in range(2):  # the first connection dies before the client reads the answer
        async with connect(chat.ws) as ws:
            await ws.send(json.dumps({"type": "hello", "token": token, "rooms": {"lobby": 0}}))
            frame = {"type": "send", "room": "lobby", "key": "same", "body": "once"}
            await ws.send(json.dumps(frame))
            answers.append(next(f for f in await _frames_until(ws, "sent") if f["type"] == "sent"))
    assert [(a["seq"], a["duplicate"]) for a in answers] == [(1, False), (1, True)]
    assert len(await chat.store.read("lobby", 0)) == 1


async def test_offline_member_catches_up_in_order_on_return(chat: ServedChat) -> None:
    """Messages sent while a member is away arrive in order, without duplicates, on return."""
    ann, bob = await chat.user("ann", "lobby"), await chat.user("bob", "lobby")
    async with ChatClient(chat.ws, ann) as a:
        async with ChatClient(chat.ws, bob) as b:
            await a.send("lobby", "before")
            async with asyncio.timeout(5):
                assert (await b.next_message()).body == "before"
            # the ack reaches the durable cursor
            await eventually(lambda: _cursor_of(chat, "lobby", "bob", 1))
        for i in range(30):
            await a.send("lobby", f"away {i}")
    async with ChatClient(chat.ws, bob) as b2:  # a new client: resumes from the durable cursor
        async with asyncio.timeout(5):
            got = [await b2.next_message() for _ in range(30)]
    assert [m.body for m in got] == [f"away {i}" for i in range(30)]
    assert [m.seq for m in got] == list(range(2, 32))


async def test_client_position_overrides_cursor_for_history(chat: ServedChat) -> None:
    """A client that says it has nothing gets the retained history again, in order."""
    ann = await chat.user("ann", "lobby")
    async with ChatClient(chat.ws, ann) as a:
        for i in range(3):
            await a.send("lobby", str(i))
        async with asyncio.timeout(5):
            first = [await a.next_message() for _ in range(3)]
    async with ChatClient(chat.ws, ann, positions={"lobby": 0}) as again:
        async with asyncio.timeout(5):
            replay = [await again.next_message() for _ in range(3)]
    assert [m.seq for m in first] == [m.seq for m in replay] == [1, 2, 3]


async def test_dropped_connection_resumes_without_gap_or_duplicate(chat: ServedChat) -> None:
    """While the receiver's connection is dropped repeatedly, it still sees each message once."""
    ann, bob = await chat.user("ann", "lobby"), await chat.user("bob", "lobby")
    async with ChatClient(chat.ws, ann) as a, ChatClient(chat.ws, bob) as b:
        for i in range(60):
            await a.send("lobby", str(i))
            if i % 10 == 5:
                await b.reconnect()
        async with asyncio.timeout(10):
            got = [await b.next_message() for _ in range(60)]
    assert [m.seq for m in got] == list(range(1, 61))


async def test_presence_lists_who_is_online(chat: ServedChat) -> None:
    """Presence frames list the users connected to a room."""
    ann, bob = await chat.user("ann", "lobby"), await chat.user("bob", "lobby")
    async with ChatClient(chat.ws, ann) as a:
        async with ChatClient(chat.ws, bob):
            await eventually(lambda: a.presence.get("lobby") == ["ann", "bob"])
        await eventually(lambda: a.presence.get("lobby") == ["ann"])


async def test_receipt_reports_delivered_to_everyone(chat: ServedChat) -> None:
    """Once every member acknowledged a message, senders get a receipt covering it."""
    ann, bob = await chat.user("ann", "lobby"), await chat.user("bob", "lobby")
    async with ChatClient(chat.ws, ann) as a, ChatClient(chat.ws, bob):
        seq = await a.send("lobby", "hi")
        await eventually(lambda: a.delivered.get("lobby", 0) >= seq)


async def _cursor_of(chat: ServedChat, room: str, user: str, at_least: int) -> bool:
    members = {m.user: m.cursor for m in await chat.store.members(room)}
    return members.get(user, -1) >= at_least


async def test_position_beyond_the_log_is_clamped_and_new_messages_shown(
    chat: ServedChat,
) -> None:
    """A client claiming more than the server has (a reset store) still sees new messages."""
    ann = await chat.user("ann", "lobby")
    async with ChatClient(chat.ws, ann, positions={"lobby": 50}) as a:
        async with asyncio.timeout(5):
            seq = await a.send("lobby", "fresh")
            message = await a.next_message()
    assert (message.seq, message.body) == (seq, "fresh") == (1, "fresh")
    assert a.stats.repositioned == 1


async def test_join_of_a_subscribed_room_does_not_resend(chat: ServedChat) -> None:
    """Joining a room already being delivered answers where delivery stands; no resend."""
    ann = await chat.user("ann", "lobby")
    async with connect(chat.ws) as ws:
        await ws.send(json.dumps({"type": "hello", "token": ann, "rooms": {"lobby": 0}}))
        for i in range(3):
            frame = {"type": "send", "room": "lobby", "key": f"k{i}", "body": str(i)}
            await ws.send(json.dumps(frame))
        frames = await _frames_until(ws, "msg")
        while sum(f["type"] == "msg" for f in frames) < 3:
            frames += await _frames_until(ws, "msg")
        await ws.send(json.dumps({"type": "join", "room": "lobby", "after": 0}))
        await ws.send(json.dumps({"type": "ping", "id": "end"}))
        after = await _frames_until(ws, "pong")
    joined = next(f for f in after if f["type"] == "joined")
    assert joined["from"] == 3
    assert [f for f in after if f["type"] == "msg"] == []


async def test_refused_send_raises_chat_error_and_is_not_retried(chat: ServedChat) -> None:
    """A send the server refuses for good (unknown room) fails with ChatError, once."""
    ann = await chat.user("ann", "lobby")
    async with ChatClient(chat.ws, ann) as a:
        async with asyncio.timeout(5):
            with pytest.raises(ChatError) as refused:
                await a.send("nowhere", "hello?")
            assert await a.send("lobby", "still fine") == 1
    assert refused.value.code == "unknown_room"
    assert a.stats.errors == {"unknown_room": 1}


async def test_typing_is_relayed_to_the_others_only(chat: ServedChat) -> None:
    """A typing frame reaches the other members' sessions, not the typist's own."""
    ann, bob = await chat.user("ann", "lobby"), await chat.user("bob", "lobby")
    async with connect(chat.ws) as a, connect(chat.ws) as b:
        for ws, token in ((a, ann), (b, bob)):
            await ws.send(json.dumps({"type": "hello", "token": token}))
            await _frames_until(ws, "joined")
        await a.send(json.dumps({"type": "typing", "room": "lobby"}))
        await a.send(json.dumps({"type": "ping", "id": "x"}))
        seen_by_ann = await _frames_until(a, "pong")
        typing = next(f for f in await _frames_until(b, "typing") if f["type"] == "typing")
    assert typing == {"type": "typing", "room": "lobby", "user": "ann"}
    assert not any(f["type"] == "typing" for f in seen_by_ann)


async def test_client_that_does_not_ack_stops_at_the_window_and_resumes_after_acking(
    chat: ServedChat,
) -> None:
    """A live receiver gets WINDOW messages beyond its ack, then nothing; an ack lets the rest
    through, in order, each once (docs/chat-protocol.md, "Flow control")."""
    total = WINDOW + 100
    ann, bob = await chat.user("ann", "lobby"), await chat.user("bob", "lobby")
    async with connect(chat.ws, max_size=None) as a, connect(chat.ws, max_size=None) as b:
        for ws, token in ((a, ann), (b, bob)):
            await ws.send(json.dumps({"type": "hello", "token": token, "rooms": {"lobby": 0}}))
            await _frames_until(ws, "joined")
        for first in range(0, total, 250):  # one stored batch at a time: bob waits at the head
            sends = [
                {"type": "send", "room": "lobby", "key": f"k{i}", "body": str(i)}
                for i in range(first, min(total, first + 250))
            ]
            await a.send(json.dumps(sends))
            answered = 0
            while answered < len(sends):
                frames = await _frames_until(a, "sent")
                answered += sum(f["type"] == "sent" for f in frames)
        async with asyncio.timeout(20):
            seen: list[int] = []
            while len(seen) < WINDOW:
                seen += [f["seq"] for f in await _frames_until(b, "msg") if f["type"] == "msg"]
            await b.send(json.dumps({"type": "ping", "id": "after-window"}))
            seen += [f["seq"] for f in await _frames_until(b, "pong") if f["type"] == "msg"]
            assert seen == list(range(1, WINDOW + 1))
            await b.send(json.dumps({"type": "ack", "room": "lobby", "seq": WINDOW}))
            while len(seen) < total:
                seen += [f["seq"] for f in await _frames_until(b, "msg") if f["type"] == "msg"]
    assert seen == list(range(1, total + 1))


async def test_client_acks_at_once_before_the_window_fills(
    chat: ServedChat, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fast room does not wait for the ack timer: with the timer out of reach (60 s), the
    client's early acks (ACK_AT unacknowledged) still let more than WINDOW messages through."""
    monkeypatch.setattr(client_module, "ACK_EVERY", 60.0)
    total = 2 * WINDOW + 100
    ann, bob = await chat.user("ann", "lobby"), await chat.user("bob", "lobby")
    async with ChatClient(chat.ws, ann) as a, ChatClient(chat.ws, bob) as b:
        await b.ready.wait()
        for first in range(0, total, 500):
            batch = range(first, min(total, first + 500))
            await asyncio.gather(*(a.send("lobby", str(i)) for i in batch))
        async with asyncio.timeout(20):
            got = [await b.next_message() for _ in range(total)]
    assert [m.seq for m in got] == list(range(1, total + 1))


async def test_a_burst_of_sends_beyond_one_message_is_split(chat: ServedChat) -> None:
    """Sends queued in one loop turn go as arrays the server takes: at most
    MAX_FRAMES_PER_MESSAGE frames and MAX_MESSAGE_BYTES each (one array of 2,500 sends, or of
    100 bodies of 16 KiB, was refused as too large and its sends never answered)."""
    ann = await chat.user("ann", "lobby")
    async with ChatClient(chat.ws, ann) as a:
        await a.ready.wait()
        async with asyncio.timeout(30):
            seqs = await asyncio.gather(*(a.send("lobby", f"m{i}") for i in range(2500)))
            big = "é" * MAX_BODY_CHARS
            seqs += await asyncio.gather(*(a.send("lobby", big) for _ in range(100)))
    assert sorted(seqs) == list(range(1, 2601))


async def test_an_array_of_sends_is_answered_chunk_by_chunk(
    chat: ServedChat, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client's array of sends is stored in writes of at most SUBMIT_CHUNK, each answered
    on its own: while a later write waits, the `sent` of the first chunk are already out (a
    client keeping its window full refills it while the store works on the rest)."""
    token = await chat.user("ann", "lobby")
    store, release, calls = chat.store, asyncio.Event(), []
    original = store.append_many

    def held(room: str, sender: str, items: list[tuple[str, str]]) -> asyncio.Future[Any]:
        calls.append(len(items))
        if len(calls) == 1:
            return original(room, sender, items)

        async def later() -> Any:
            await release.wait()
            return await original(room, sender, items)

        return asyncio.ensure_future(later())

    monkeypatch.setattr(store, "append_many", held)
    total = SUBMIT_CHUNK + 100
    async with connect(chat.ws) as ws:
        await ws.send(json.dumps({"type": "hello", "token": token}))
        frame = {"type": "send", "room": "lobby", "body": "x"}
        sends = [{**frame, "key": f"k{i}"} for i in range(total)]
        await ws.send(json.dumps(sends))
        first = [f for f in await _frames_until(ws, "sent") if f["type"] == "sent"]
        assert [f["key"] for f in first] == [f"k{i}" for i in range(SUBMIT_CHUNK)]
        release.set()
        rest = [f for f in await _frames_until(ws, "sent") if f["type"] == "sent"]
    assert calls == [SUBMIT_CHUNK, 100]
    assert [f["seq"] for f in first + rest] == list(range(1, total + 1))
