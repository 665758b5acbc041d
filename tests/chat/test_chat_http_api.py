"""The HTTP API for bound apps: post once, read since a seq (long-poll), ack; admin; OpenAPI."""

from __future__ import annotations

import asyncio
import re

import httpx
from chat_helpers import ServedChat
from starlette.routing import Route

from servicebay.chat import http_api
from servicebay.chat.openapi import OPENAPI


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_post_read_ack_roundtrip(chat: ServedChat) -> None:
    """A posted message is read back after its predecessor's seq; ack moves the durable cursor."""
    token = await chat.user("callcenter", "lobby")
    async with httpx.AsyncClient(base_url=chat.http, headers=_auth(token)) as http:
        posted = await http.post("/api/v1/rooms/lobby/messages", json={"key": "a", "body": "hi"})
        assert posted.status_code == 201
        assert posted.json()["seq"] == 1 and posted.json()["duplicate"] is False
        again = await http.post("/api/v1/rooms/lobby/messages", json={"key": "a", "body": "hi"})
        assert (again.status_code, again.json()["seq"], again.json()["duplicate"]) == (200, 1, True)
        read = (await http.get("/api/v1/rooms/lobby/messages", params={"after": 0})).json()
        assert [(m["seq"], m["body"], m["from"]) for m in read["messages"]] == [
            (1, "hi", "callcenter")
        ]
        acked = await http.post("/api/v1/rooms/lobby/ack", json={"seq": 1})
        assert acked.json() == {"room": "lobby", "cursor": 1}
        # Without `after`, reading starts at the durable cursor: nothing new.
        assert (await http.get("/api/v1/rooms/lobby/messages")).json()["messages"] == []
    assert {m.user: m.cursor for m in await chat.store.members("lobby")}["callcenter"] == 1


async def test_long_poll_returns_when_a_message_arrives(chat: ServedChat) -> None:
    """A read with wait= blocks until a message is posted, then returns it."""
    reader, writer = await chat.user("reader", "lobby"), await chat.user("writer", "lobby")
    async with httpx.AsyncClient(base_url=chat.http, timeout=20) as http:
        poll = asyncio.create_task(
            http.get(
                "/api/v1/rooms/lobby/messages",
                params={"after": 0, "wait": 10},
                headers=_auth(reader),
            )
        )
        await asyncio.sleep(0)  # let the poll start before the post (order is not required)
        await http.post(
            "/api/v1/rooms/lobby/messages", json={"key": "k", "body": "ring"}, headers=_auth(writer)
        )
        async with asyncio.timeout(8):
            response = await poll
    assert [m["body"] for m in response.json()["messages"]] == ["ring"]


async def test_long_poll_ends_empty_after_wait(chat: ServedChat) -> None:
    """With nothing to read, a long-poll returns an empty list after `wait` seconds."""
    token = await chat.user("reader", "lobby")
    async with httpx.AsyncClient(base_url=chat.http, headers=_auth(token)) as http:
        response = await http.get("/api/v1/rooms/lobby/messages", params={"wait": 1})
    assert response.status_code == 200 and response.json()["messages"] == []


async def test_admin_creates_user_token_room_and_revokes_exactly_one(chat: ServedChat) -> None:
    """Administration needs the admin token; revoking one token leaves the other working."""
    admin = _auth(chat.admin_token)
    async with httpx.AsyncClient(base_url=chat.http) as http:
        assert (await http.post("/api/v1/users", json={"id": "app"})).status_code == 401
        created = await http.post("/api/v1/users", json={"id": "app", "kind": "app"}, headers=admin)
        assert created.status_code == 201
        room = await http.put("/api/v1/rooms/calls", json={"open": False}, headers=admin)
        assert room.json()["open"] is False
        t1 = (await http.post("/api/v1/users/app/tokens", json={}, headers=admin)).json()
        t2 = (await http.post("/api/v1/users/app/tokens", json={}, headers=admin)).json()
        member = await http.put("/api/v1/rooms/calls/members/app", headers=admin)
        assert member.json()["user"] == "app"
        post = await http.post(
            "/api/v1/rooms/calls/messages",
            json={"key": "1", "body": "x"},
            headers=_auth(t1["token"]),
        )
        assert post.status_code == 201
        assert (
            await http.delete(f"/api/v1/tokens/{t1['token_id']}", headers=admin)
        ).status_code == 204
        assert (await http.get("/api/v1/me", headers=_auth(t1["token"]))).status_code == 401
        assert (await http.get("/api/v1/me", headers=_auth(t2["token"]))).json()["id"] == "app"


async def test_signup_creates_a_person_named_as_asked_with_an_id_of_its_own(
    chat: ServedChat,
) -> None:
    """Sign-up takes a name; the server makes the id (the name, '-' and 8 hex digits) and
    answers it with the new person's token."""
    async with httpx.AsyncClient(base_url=chat.http) as http:
        signed = await http.post("/api/v1/signup", json={"name": "zoe"})
        assert signed.status_code == 201
        assert set(signed.json()) == {"user", "token"}
        me = (await http.get("/api/v1/me", headers=_auth(signed.json()["token"]))).json()
    assert re.fullmatch(r"zoe-[0-9a-f]{8}", me["id"])
    assert (me["id"], me["display_name"], me["kind"]) == (signed.json()["user"], "zoe", "person")


async def test_signup_tells_nobody_which_ids_exist(chat: ServedChat) -> None:
    """A name that is an existing id, or was signed up before (even at the same moment), is
    answered exactly as a new one: 201, the same fields, a new user of its own; the existing
    user and their token are untouched. (Sign-up used to answer 409 for an existing id.)"""
    owner = await chat.user("carol", "lobby")
    async with httpx.AsyncClient(base_url=chat.http) as http:
        fresh = await http.post("/api/v1/signup", json={"name": "nobody-has-this"})
        taken = await http.post("/api/v1/signup", json={"name": "carol"})
        twice = await asyncio.gather(
            *(http.post("/api/v1/signup", json={"name": "carol"}) for _ in range(3))
        )
        answers = [fresh, taken, *twice]
        assert {a.status_code for a in answers} == {201}
        assert {tuple(sorted(a.json())) for a in answers} == {("token", "user")}
        ids = [a.json()["user"] for a in answers]
        assert len(set(ids)) == len(ids) and "carol" not in ids
        for answer in answers:
            me = await http.get("/api/v1/me", headers=_auth(answer.json()["token"]))
            assert me.json()["id"] == answer.json()["user"]
        me = (await http.get("/api/v1/me", headers=_auth(owner))).json()
    assert (me["id"], [r["room"] for r in me["rooms"]]) == ("carol", ["lobby"])


async def test_signup_refuses_an_id_or_a_name_too_long_for_one(chat: ServedChat) -> None:
    """The caller no longer picks the id (400 for the old body); a name leaves room for the
    suffix within the 64 characters of an id."""
    async with httpx.AsyncClient(base_url=chat.http) as http:
        old = await http.post("/api/v1/signup", json={"id": "zoe"})
        long = await http.post("/api/v1/signup", json={"name": "z" * 56})
        longest = await http.post("/api/v1/signup", json={"name": "z" * 55})
    assert (old.status_code, long.status_code, longest.status_code) == (400, 400, 201)
    assert len(longest.json()["user"]) == 64


async def test_openapi_describes_every_route(chat: ServedChat) -> None:
    """Every API route and method in the route table appears in the served OpenAPI document."""
    async with httpx.AsyncClient(base_url=chat.http) as http:
        served = (await http.get("/api/v1/openapi.json")).json()
    assert served == OPENAPI
    for route in http_api.routes():
        assert isinstance(route, Route)
        for method in route.methods or ():
            if method != "HEAD":
                assert method.lower() in served["paths"][route.path], (route.path, method)


async def test_health_readiness_and_metrics(chat: ServedChat) -> None:
    """/healthz and /readyz answer; /metrics counts messages in and out and shows lag."""
    token = await chat.user("app", "lobby")
    async with httpx.AsyncClient(base_url=chat.http) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/readyz")).json() == {"status": "ready"}
        await http.post(
            "/api/v1/rooms/lobby/messages", json={"key": "k", "body": "x"}, headers=_auth(token)
        )
        await http.get("/api/v1/rooms/lobby/messages", params={"after": 0}, headers=_auth(token))
        admin = _auth(chat.admin_token)
        text = (await http.get("/metrics", headers=admin)).text
    assert 'chat_messages_in_total{room="lobby"} 1.0' in text
    assert 'chat_messages_out_total{room="lobby"} 1.0' in text
    assert 'chat_room_lag_messages{room="lobby"} 1.0' in text
