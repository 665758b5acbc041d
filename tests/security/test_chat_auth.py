"""The chat server reveals nothing without a token: metrics, closed rooms, admin calls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from security_helpers import CHAT_ADMIN, chat_client

ADMIN = {"authorization": f"Bearer {CHAT_ADMIN}"}


@pytest.fixture
async def chat(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A chat server on a fresh store, in-process."""
    async with chat_client(tmp_path) as client:
        yield client


async def _user(chat: httpx.AsyncClient, name: str) -> dict[str, str]:
    (await chat.post("/api/v1/users", json={"id": name}, headers=ADMIN)).raise_for_status()
    issued = await chat.post(f"/api/v1/users/{name}/tokens", json={}, headers=ADMIN)
    return {"authorization": f"Bearer {issued.json()['token']}"}


async def _closed_room_with_a_message(chat: httpx.AsyncClient) -> dict[str, str]:
    put = await chat.put("/api/v1/rooms/board-secret", json={"open": False}, headers=ADMIN)
    put.raise_for_status()
    member = await _user(chat, "member")
    (await chat.put("/api/v1/rooms/board-secret/members/member", headers=ADMIN)).raise_for_status()
    sent = await chat.post(
        "/api/v1/rooms/board-secret/messages", json={"key": "k", "body": "x"}, headers=member
    )
    sent.raise_for_status()
    return member


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"}])
async def test_metrics_need_the_admin_token(
    chat: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    """/metrics (room names, per-room counts) answers 401 without the admin token."""
    await _closed_room_with_a_message(chat)
    response = await chat.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert "board-secret" not in response.text


async def test_metrics_refuse_a_user_token(chat: httpx.AsyncClient) -> None:
    """A user's token is not enough for /metrics: it shows every room."""
    member = await _closed_room_with_a_message(chat)
    assert (await chat.get("/metrics", headers=member)).status_code == 401


async def test_metrics_with_the_admin_token(chat: httpx.AsyncClient) -> None:
    """With the admin token /metrics shows the per-room counters."""
    await _closed_room_with_a_message(chat)
    response = await chat.get("/metrics", headers=ADMIN)
    assert response.status_code == 200
    assert 'chat_messages_in_total{room="board-secret"} 1.0' in response.text


async def test_health_and_readiness_stay_public(chat: httpx.AsyncClient) -> None:
    """Liveness and readiness answer without a token (probes) and name nothing."""
    await _closed_room_with_a_message(chat)
    for path in ("/healthz", "/readyz"):
        response = await chat.get(path)
        assert response.status_code == 200
        assert "board-secret" not in response.text


async def test_closed_rooms_are_listed_to_their_members_only(chat: httpx.AsyncClient) -> None:
    """GET /api/v1/rooms shows a closed room to its members, not to any signed-up user."""
    member = await _closed_room_with_a_message(chat)
    signed_up = await chat.post("/api/v1/signup", json={"name": "stranger"})
    stranger = {"authorization": f"Bearer {signed_up.json()['token']}"}
    seen = [r["id"] for r in (await chat.get("/api/v1/rooms", headers=stranger)).json()["rooms"]]
    assert seen == ["lobby"]
    seen = [r["id"] for r in (await chat.get("/api/v1/rooms", headers=member)).json()["rooms"]]
    assert sorted(seen) == ["board-secret", "lobby"]


@pytest.mark.parametrize("token", [b"\xc3\xa9", b"\xff" * 40], ids=["utf-8", "latin-1"])
async def test_admin_call_with_a_non_ascii_token_is_401(
    chat: httpx.AsyncClient, token: bytes
) -> None:
    """A bearer value outside ASCII is a wrong token (401), not a server error."""
    headers = {"authorization": b"Bearer " + token}
    response = await chat.put("/api/v1/rooms/x", json={}, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
