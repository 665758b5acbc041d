"""Bad input: a clear error frame or HTTP error; the connection and server stay healthy; nothing
is stored."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from chat_helpers import ServedChat
from websockets.asyncio.client import ClientConnection, connect

from servicebay.chat.protocol import MAX_BODY_CHARS, MAX_FRAME_BYTES, MAX_MESSAGE_BYTES

_unread: dict[int, list[dict[str, Any]]] = {}


async def _next(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """The next frame of ``kind``; other frames are skipped, later ones of a batch kept."""
    buffered = _unread.setdefault(id(ws), [])
    async with asyncio.timeout(5):
        while True:
            while buffered:
                frame = buffered.pop(0)
                if frame["type"] == kind:
                    return frame
            data = json.loads(await ws.recv())
            buffered.extend(data if isinstance(data, list) else [data])


async def _still_healthy(ws: ClientConnection) -> None:
    await ws.send(json.dumps({"type": "ping", "id": "alive"}))
    assert (await _next(ws, "pong"))["id"] == "alive"


BAD_FRAMES = {
    "not json": ("{nope", "bad_frame"),
    "not an object": ("[1, 2]", "bad_frame"),
    "unknown type": (json.dumps({"type": "shout"}), "bad_frame"),
    "missing field": (json.dumps({"type": "send", "room": "lobby", "body": "x"}), "bad_frame"),
    "wrong type": (json.dumps({"type": "ack", "room": "lobby", "seq": "ten"}), "bad_frame"),
    "extra field": (json.dumps({"type": "ping", "id": "1", "evil": True}), "bad_frame"),
    "bad room name": (
        json.dumps({"type": "send", "room": "../x", "key": "k", "body": "x"}),
        "bad_frame",
    ),
    "oversized body": (
        json.dumps(
            {"type": "send", "room": "lobby", "key": "k", "body": "x" * (MAX_BODY_CHARS + 1)}
        ),
        "too_large",
    ),
    "oversized frame": (json.dumps({"type": "ping", "id": "x" * MAX_FRAME_BYTES}), "too_large"),
    "oversized array": (
        json.dumps([{"type": "ping", "id": "x" * 60}] * (MAX_MESSAGE_BYTES // 60)),
        "too_large",
    ),
    "too many frames": (json.dumps([{"type": "typing", "room": "lobby"}] * 1001), "too_large"),
    "array of non-objects": ("[1]", "bad_frame"),
    # Valid JSON text that no UTF-8 store can hold (the standard parser admits it, orjson not).
    "lone surrogate in body": (
        '{"type":"send","room":"lobby","key":"k","body":"half an emoji: \\ud83d"}',
        "bad_frame",
    ),
    "lone surrogate in key": (
        '{"type":"send","room":"lobby","key":"\\udfff","body":"x"}',
        "bad_frame",
    ),
    "nested too deep": ("[" * 60_000, "bad_frame"),
    "unknown room": (
        json.dumps({"type": "send", "room": "nowhere", "key": "k", "body": "x"}),
        "unknown_room",
    ),
}


@pytest.mark.parametrize("case", BAD_FRAMES)
async def test_bad_frame_gets_error_frame_and_stores_nothing(chat: ServedChat, case: str) -> None:
    """Each malformed frame is answered by an error frame naming the problem."""
    raw, code = BAD_FRAMES[case]
    token = await chat.user("ann", "lobby")
    async with connect(chat.ws, max_size=None) as ws:
        await ws.send(json.dumps({"type": "hello", "token": token}))
        await _next(ws, "welcome")
        await ws.send(raw)
        error = await _next(ws, "error")
        assert error["code"] == code and error["message"]
        await _still_healthy(ws)
        await ws.send(json.dumps({"type": "send", "room": "lobby", "key": "ok", "body": "fine"}))
        assert (await _next(ws, "sent"))["seq"] == 1
    assert [m.body for m in await chat.store.read("lobby", 0)] == ["fine"]


async def test_lone_surrogate_send_fails_alone_in_its_loop_turn(chat: ServedChat) -> None:
    """A send with a lone surrogate gets `bad_frame`; a good send in the same turn is stored."""
    ann, bob = await chat.user("ann", "lobby"), await chat.user("bob", "lobby")
    async with connect(chat.ws) as a, connect(chat.ws) as b:
        for ws, token in ((a, ann), (b, bob)):
            await ws.send(json.dumps({"type": "hello", "token": token}))
            await _next(ws, "joined")
        for n, bad in enumerate(
            ['"key":"b1","body":"half: \\ud83d"', '"key":"\\ud800","body":"x"']
        ):
            good = {"type": "send", "room": "lobby", "key": f"a{n}", "body": "hello"}
            await asyncio.gather(  # both frames reach the server together: one group commit
                a.send(json.dumps(good)), b.send('{"type":"send","room":"lobby",' + bad + "}")
            )
            sent, error = await asyncio.gather(_next(a, "sent"), _next(b, "error"))
            assert (sent["key"], sent["seq"]) == (f"a{n}", n + 1)
            assert error["code"] == "bad_frame" and "unicode" in error["message"]
            assert error["ref"] == json.loads("{" + bad + "}")["key"]  # escaped, echoed intact
        await _still_healthy(b)
    assert [(m.sender, m.body) for m in await chat.store.read("lobby", 0)] == [("ann", "hello")] * 2


async def test_wrong_token_is_refused_and_connection_may_retry(chat: ServedChat) -> None:
    """A wrong token gets `unauthorized`; sends before a good hello are refused; a later good
    hello works."""
    token = await chat.user("ann", "lobby")
    async with connect(chat.ws) as ws:
        await ws.send(json.dumps({"type": "hello", "token": "wrong"}))
        assert (await _next(ws, "error"))["code"] == "unauthorized"
        await ws.send(json.dumps({"type": "send", "room": "lobby", "key": "k", "body": "x"}))
        assert (await _next(ws, "error"))["code"] == "not_ready"
        await _still_healthy(ws)
        await ws.send(json.dumps({"type": "hello", "token": token}))
        assert (await _next(ws, "welcome"))["user"] == "ann"
    assert await chat.store.read("lobby", 0) == []


async def test_unsupported_version_is_refused(chat: ServedChat) -> None:
    """A hello for another protocol version gets `unsupported_version`."""
    token = await chat.user("ann", "lobby")
    async with connect(chat.ws) as ws:
        await ws.send(json.dumps({"type": "hello", "v": 2, "token": token}))
        assert (await _next(ws, "error"))["code"] == "unsupported_version"
        await _still_healthy(ws)


def _frames_for(room: str) -> list[dict[str, Any]]:
    """A user's frames naming ``room``, each refused unless the user is a member of it."""
    return [
        {"type": "send", "room": room, "key": "k", "body": "x"},
        {"type": "join", "room": room},
        {"type": "join", "room": room, "after": 0},
        {"type": "ack", "room": room, "seq": 0},
        {"type": "typing", "room": room},
        {"type": "leave", "room": room},
    ]


async def _answers(ws: ClientConnection, frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    answers = []
    for frame in frames:
        await ws.send(json.dumps(frame))
        answers.append(await _next(ws, "error"))
    return answers


async def test_closed_room_answers_a_non_member_as_a_missing_room(chat: ServedChat) -> None:
    """Every frame on a closed room outside the user's membership is refused exactly as on a
    room that does not exist (code, message, ref), so its existence cannot be learned."""
    from servicebay.chat.stores import Retention

    await chat.store.put_room("private", Retention(), open=False)
    token = await chat.user("eve")
    member = await chat.user("ann", "private")
    async with connect(chat.ws) as ws:
        await ws.send(json.dumps({"type": "hello", "token": token, "rooms": {"private": 0}}))
        await _next(ws, "welcome")
        hello_error = await _next(ws, "error")
        closed = await _answers(ws, _frames_for("private"))
        missing = await _answers(ws, _frames_for("nowhere"))
        await _still_healthy(ws)
    assert hello_error == closed[1]
    assert [a["code"] for a in closed] == ["unknown_room"] * len(closed)
    assert [json.loads(json.dumps(a).replace("private", "nowhere")) for a in closed] == missing
    assert closed[0]["ref"] == "k"
    async with connect(chat.ws) as ws:  # a member still uses it
        await ws.send(json.dumps({"type": "hello", "token": member}))
        await _next(ws, "joined")
        await ws.send(json.dumps({"type": "send", "room": "private", "key": "m", "body": "hi"}))
        assert (await _next(ws, "sent"))["seq"] == 1
    assert [m.sender for m in await chat.store.read("private", 0)] == ["ann"]


async def test_open_room_tells_a_non_member_to_join_first(chat: ServedChat) -> None:
    """An open room is public: acking or typing in it before joining is `not_member`."""
    token = await chat.user("eve")
    async with connect(chat.ws) as ws:
        await ws.send(json.dumps({"type": "hello", "token": token}))
        await _next(ws, "welcome")
        frames = [{"type": "ack", "room": "lobby", "seq": 0}, {"type": "typing", "room": "lobby"}]
        assert [a["code"] for a in await _answers(ws, frames)] == ["not_member"] * 2
        await ws.send(json.dumps({"type": "join", "room": "lobby"}))
        assert (await _next(ws, "joined"))["room"] == "lobby"


def _calls_for(room: str) -> list[tuple[str, str, bytes | None]]:
    base = f"/api/v1/rooms/{room}"
    return [
        ("POST", f"{base}/messages", b'{"key": "k", "body": "x"}'),
        ("GET", f"{base}/messages", None),
        ("GET", f"{base}/messages?after=0&limit=5", None),
        ("POST", f"{base}/ack", b'{"seq": 0}'),
        ("PUT", f"{base}/members/me", None),
        ("DELETE", f"{base}/members/me", None),
    ]


async def test_http_closed_room_answers_a_non_member_as_a_missing_room(chat: ServedChat) -> None:
    """Over HTTP, every call of a user on a closed room they are not in gets the 404
    `unknown_room` a missing room gets, with the same message; nothing changes."""
    from servicebay.chat.stores import Retention

    await chat.store.put_room("private", Retention(), open=False)
    auth = {"authorization": f"Bearer {await chat.user('eve')}"}
    async with httpx.AsyncClient(base_url=chat.http, headers=auth) as http:
        seen = {}
        for room in ("private", "nowhere"):
            answers = []
            for method, path, body in _calls_for(room):
                response = await http.request(method, path, content=body)
                answers.append((response.status_code, response.text.replace(room, "ROOM")))
            seen[room] = answers
        assert seen["private"] == seen["nowhere"]
        assert {status for status, _ in seen["private"]} == {404}
        assert all('"error":"unknown_room"' in text for _, text in seen["private"])
        # An open room is public: leaving it or acking without being a member says so.
        response = await http.post("/api/v1/rooms/lobby/ack", json={"seq": 0})
        assert (response.status_code, response.json()["error"]) == (403, "not_member")
        response = await http.delete("/api/v1/rooms/lobby/members/me")
        assert (response.status_code, response.json()["error"]) == (404, "not_member")
    assert [m.user for m in await chat.store.members("private")] == []
    assert await chat.store.read("private", 0) == []


HTTP_CASES = {
    "no token": ({}, b'{"key": "k", "body": "x"}', "lobby", 401, "unauthorized"),
    "wrong token": (
        {"authorization": "Bearer nope"},
        b'{"key":"k","body":"x"}',
        "lobby",
        401,
        "unauthorized",
    ),
    "malformed json": (None, b"{nope", "lobby", 400, "bad_request"),
    "wrong types": (None, b'{"key": 5, "body": []}', "lobby", 400, "bad_request"),
    "oversized body": (
        None,
        json.dumps({"key": "k", "body": "x" * (MAX_BODY_CHARS + 1)}).encode(),
        "lobby",
        413,
        "too_large",
    ),
    "oversized request": (None, b"x" * (MAX_FRAME_BYTES + 1), "lobby", 413, "too_large"),
    "unknown room": (None, b'{"key": "k", "body": "x"}', "nowhere", 404, "unknown_room"),
    "lone surrogate": (None, b'{"key": "k", "body": "\\ud800"}', "lobby", 400, "bad_request"),
    "lone surrogate key": (None, b'{"key": "\\udfff", "body": "x"}', "lobby", 400, "bad_request"),
}


@pytest.mark.parametrize("case", HTTP_CASES)
async def test_bad_http_post_gets_error_and_stores_nothing(chat: ServedChat, case: str) -> None:
    """Each bad POST gets the right status and a JSON error; the server keeps serving."""
    headers, body, room, status, code = HTTP_CASES[case]
    token = await chat.user("app", "lobby")
    auth = {"authorization": f"Bearer {token}"} if headers is None else headers
    async with httpx.AsyncClient(base_url=chat.http) as http:
        response = await http.post(f"/api/v1/rooms/{room}/messages", content=body, headers=auth)
        assert response.status_code == status
        assert response.json()["error"] == code and response.json()["message"]
        assert (await http.get("/readyz")).status_code == 200
    assert await chat.store.read("lobby", 0) == []


async def test_array_message_judges_each_frame_alone(chat: ServedChat) -> None:
    """In an array, a bad frame gets its error; the good frames around it still take effect."""
    token = await chat.user("ann", "lobby")
    batch = [
        {"type": "send", "room": "lobby", "key": "a", "body": "first"},
        {"type": "send", "room": "lobby", "key": "b"},
        {"type": "send", "room": "lobby", "key": "c", "body": "third"},
    ]
    async with connect(chat.ws) as ws:
        await ws.send(json.dumps({"type": "hello", "token": token}))
        await _next(ws, "welcome")
        await ws.send(json.dumps(batch))
        error = await _next(ws, "error")
        assert (error["code"], error["ref"]) == ("bad_frame", "b")
        assert {(await _next(ws, "sent"))["key"] for _ in range(2)} == {"a", "c"}
        await _still_healthy(ws)
    stored = await chat.store.read("lobby", 0)
    assert sorted(m.body for m in stored) == ["first", "third"]


async def test_silent_connection_is_closed_after_hello_timeout(
    chat: ServedChat, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket that never says hello gets `not_ready` and is closed; the server stays up."""
    from servicebay.chat import server

    monkeypatch.setattr(server, "HELLO_TIMEOUT", 0.3)
    async with connect(chat.ws) as ws:
        error = await _next(ws, "error")
        assert error["code"] == "not_ready"
        async with asyncio.timeout(5):
            await ws.wait_closed()
        assert ws.close_code == 1008
    token = await chat.user("ann", "lobby")
    async with connect(chat.ws) as ws:
        await ws.send(json.dumps({"type": "hello", "token": token}))
        assert (await _next(ws, "welcome"))["user"] == "ann"


class _StoreCalls:
    """The served store, noting the name of every method called on it (the store is real)."""

    def __init__(self, store: Any) -> None:
        self.store, self.calls = store, []

    def __getattr__(self, name: str) -> Any:
        found = getattr(self.store, name)
        if not callable(found):
            return found

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return found(*args, **kwargs)

        return call


async def test_closed_room_costs_a_non_member_what_a_missing_room_costs(chat: ServedChat) -> None:
    """A non-member's calls on a closed room make the store do what they make it do for a
    missing room, whether or not the room's state is loaded: the time of the answer does not
    tell either. (The closed room's state used to be loaded first: two reads more.)"""
    from servicebay.chat.stores import Retention

    await chat.store.put_room("private", Retention(), open=False)
    auth = {"authorization": f"Bearer {await chat.user('eve')}"}
    recorder = _StoreCalls(chat.service.store)
    chat.service.store = recorder  # type: ignore[assignment]
    async with httpx.AsyncClient(base_url=chat.http, headers=auth) as http:

        async def work(room: str) -> list[tuple[int, list[str]]]:
            done = []
            for method, path, body in _calls_for(room):
                recorder.calls.clear()
                response = await http.request(method, path, content=body)
                done.append((response.status_code, list(recorder.calls)))
            return done

        before = await work("private")  # the room's state is not loaded yet
        assert before == await work("nowhere")
        assert chat.service.loaded("private") is None
        await chat.user("ann", "private")  # a member: the room's state is loaded
        assert chat.service.loaded("private") is not None
        assert await work("private") == await work("nowhere") == before
    assert {status for status, _ in before} == {404}


async def test_websocket_closed_room_costs_a_non_member_what_a_missing_room_costs(
    chat: ServedChat,
) -> None:
    """The same over the WebSocket: each frame on a closed room and on a missing room makes the
    store do the same, from ``hello.rooms`` on."""
    from servicebay.chat.stores import Retention

    await chat.store.put_room("private", Retention(), open=False)
    token = await chat.user("eve")
    recorder = _StoreCalls(chat.service.store)
    chat.service.store = recorder  # type: ignore[assignment]
    seen: dict[str, list[list[str]]] = {}
    for room in ("private", "nowhere"):
        async with connect(chat.ws) as ws:
            recorder.calls.clear()
            await ws.send(json.dumps({"type": "hello", "token": token, "rooms": {room: 0}}))
            await _next(ws, "welcome")
            await _next(ws, "error")
            seen[room] = [list(recorder.calls)]
            for frame in _frames_for(room):
                recorder.calls.clear()
                await _answers(ws, [frame])
                seen[room].append(list(recorder.calls))
    assert seen["private"] == seen["nowhere"]
    assert chat.service.loaded("private") is None


def _kept_for(chat: ServedChat, names: set[str]) -> dict[str, set[str]]:
    """What the server keeps in memory, per room, for any of ``names`` (hubs and the store's
    per-room caches, whichever the backend has)."""
    service, store = chat.service, chat.store
    meta = getattr(store, "meta", store)  # the RabbitMQ store keeps its metadata in SQLite
    kept: dict[str, Any] = {
        "hubs": service._hubs,
        "loading": service._loading,
        "store rooms": getattr(store, "_rooms", {}),
        "store heads": getattr(meta, "_heads", {}),
        "store members": {room for room, _ in getattr(meta, "_members", set())},
    }
    return {what: names & set(held) for what, held in kept.items() if names & set(held)}


async def test_asking_about_missing_rooms_keeps_nothing_in_memory(chat: ServedChat) -> None:
    """Every user call naming a room that does not exist, over HTTP and WebSocket, is
    `unknown_room` and leaves nothing behind in the server: asking about random room names
    cannot grow its memory (the RabbitMQ store kept an entry for every name asked about)."""
    names = {f"nowhere-{i}" for i in range(20)}
    token = await chat.user("eve")
    auth = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=chat.http, headers=auth) as http:
        for room in sorted(names)[:10]:
            for method, path, body in _calls_for(room):
                response = await http.request(method, path, content=body)
                assert (response.status_code, response.json()["error"]) == (404, "unknown_room")
    async with connect(chat.ws) as ws:
        rooms = {room: 0 for room in sorted(names)[10:15]}
        await ws.send(json.dumps({"type": "hello", "token": token, "rooms": rooms}))
        await _next(ws, "welcome")
        assert [(await _next(ws, "error"))["code"] for _ in rooms] == ["unknown_room"] * 5
        for room in sorted(names)[15:]:
            answers = await _answers(ws, _frames_for(room))
            assert {a["code"] for a in answers} == {"unknown_room"}
        await _still_healthy(ws)
    assert _kept_for(chat, names) == {}
    token = await chat.user("ann", "lobby")
    async with connect(chat.ws) as ws:  # an existing room is still kept once in use
        await ws.send(json.dumps({"type": "hello", "token": token}))
        await _next(ws, "joined")
        await ws.send(json.dumps({"type": "send", "room": "lobby", "key": "k", "body": "hi"}))
        assert (await _next(ws, "sent"))["seq"] == 1
    kept = _kept_for(chat, {"lobby"})
    assert "hubs" in kept and ("store rooms" in kept or not hasattr(chat.store, "_rooms"))
