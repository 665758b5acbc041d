"""Wrong tokens are throttled per client address, over HTTP (429) and the WebSocket (an error
frame ``too_many_attempts``, then close 1008), the token unchecked until the window passed."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from chat_helpers import serve_chat
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from servicebay.chat.server import create_app
from servicebay.chat.settings import ChatSettings

ADMIN = "chat-admin-token-0123456789"


def _settings(tmp_path: Path, **throttle: Any) -> ChatSettings:
    return ChatSettings(
        store=f"sqlite:{tmp_path / 'chat.db'}", admin_token=ADMIN, rooms=["lobby"], **throttle
    )


async def _frames_until_closed(ws: ClientConnection) -> list[dict[str, Any]]:
    """Every frame the server sends until it closes the socket (within 5 s)."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        try:
            while True:
                data = json.loads(await ws.recv())
                frames.extend(data if isinstance(data, list) else [data])
        except ConnectionClosed:
            return frames


async def _hello(ws: ClientConnection, token: str) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "hello", "token": token}))
    async with asyncio.timeout(5):
        while True:
            data = json.loads(await ws.recv())
            for frame in data if isinstance(data, list) else [data]:
                if frame["type"] in ("welcome", "error"):
                    return dict(frame)


async def test_websocket_hello_is_refused_and_closed_after_too_many_wrong_tokens(
    tmp_path: Path,
) -> None:
    """Wrong hellos on one socket: `unauthorized` thrice, then `too_many_attempts` with
    `retry_after` and close 1008; a new socket is refused the same, the good token too; HTTP
    from that address is 429 as well; after the window the good token is welcome."""
    async with serve_chat(_settings(tmp_path, auth_failures=3, auth_window=1.0)) as chat:
        token = await chat.user("ann", "lobby")
        async with connect(chat.ws) as ws:
            for n in range(3):
                assert (await _hello(ws, f"wrong-{n}"))["code"] == "unauthorized"
            await ws.send(json.dumps({"type": "hello", "token": token}))
            frames = await _frames_until_closed(ws)
            assert ws.close_code == 1008
        assert [f["code"] for f in frames] == ["too_many_attempts"]
        assert frames[0]["retry_after"] == 1
        assert "too many failed authentications" in frames[0]["message"]
        async with connect(chat.ws) as ws:
            await ws.send(json.dumps({"type": "hello", "token": token}))
            assert (await _frames_until_closed(ws))[0]["code"] == "too_many_attempts"
        async with httpx.AsyncClient(base_url=chat.http) as http:
            r = await http.get("/api/v1/me", headers={"authorization": f"Bearer {token}"})
            assert r.status_code == 429
            assert r.headers["retry-after"] == "1"
            metrics = await _metrics_after_the_window(http)
        counted = re.search(r'chat_errors_total\{code="too_many_attempts"\} (\S+)', metrics)
        assert counted is not None and float(counted[1]) >= 3  # and each poll refused above
        async with connect(chat.ws) as ws:
            assert (await _hello(ws, token))["type"] == "welcome"


async def _metrics_after_the_window(http: httpx.AsyncClient) -> str:
    deadline = time.monotonic() + 10
    while True:
        r = await http.get("/metrics", headers={"authorization": f"Bearer {ADMIN}"})
        if r.status_code != 429:
            assert r.status_code == 200
            return r.text
        assert time.monotonic() < deadline, "still throttled long after the window"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def _in_process(tmp_path: Path, **throttle: Any) -> AsyncIterator[Any]:
    app = create_app(_settings(tmp_path, **throttle))
    clients: list[httpx.AsyncClient] = []

    def client(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        made = httpx.AsyncClient(transport=transport, base_url="http://chat.test")
        clients.append(made)
        return made

    async with app.router.lifespan_context(app):
        try:
            yield client
        finally:
            for made in clients:
                await made.aclose()


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/api/v1/me"), ("POST", "/api/v1/users")], ids=["user", "admin"]
)
async def test_http_wrong_tokens_get_429_for_that_address_only(
    tmp_path: Path, method: str, path: str
) -> None:
    """User and admin calls alike: 10 wrong tokens (the default), then 429 for that address,
    the admin token too; another address is served as usual."""
    async with _in_process(tmp_path) as client:
        attacker, admin = client("203.0.113.4"), client("198.51.100.3")
        wrong = {"authorization": "Bearer guess"}
        for _ in range(10):
            r = await attacker.request(method, path, json={"id": "eve"}, headers=wrong)
            assert r.status_code == 401
        good = {"authorization": f"Bearer {ADMIN}"}
        r = await attacker.post("/api/v1/users", json={"id": "eve"}, headers=good)
        assert r.status_code == 429
        assert r.json()["error"] == "too_many_attempts"
        assert 1 <= int(r.headers["retry-after"]) <= 60
        r = await admin.post("/api/v1/users", json={"id": "bob"}, headers=good)
        assert r.status_code == 201


async def test_requests_without_a_token_are_not_counted(tmp_path: Path) -> None:
    """No token guesses nothing: 401 each time, and the admin token still works."""
    async with _in_process(tmp_path, auth_failures=2) as client:
        anonymous = client("203.0.113.4")
        for _ in range(5):
            assert (await anonymous.get("/api/v1/me")).status_code == 401
        r = await anonymous.get("/metrics", headers={"authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200


async def test_a_forwarded_address_does_not_escape_the_count(tmp_path: Path) -> None:
    """Served as `bay chat serve` serves (its uvicorn options): each wrong token names a new
    X-Forwarded-For address, and the socket's address is throttled all the same."""
    async with (
        serve_chat(_settings(tmp_path, auth_failures=3)) as chat,
        httpx.AsyncClient(base_url=chat.http) as http,
    ):
        for n in range(3):
            forged = {"authorization": f"Bearer wrong-{n}", "x-forwarded-for": f"192.0.2.{n}"}
            assert (await http.get("/api/v1/me", headers=forged)).status_code == 401
        fresh = {"authorization": "Bearer wrong-3", "x-forwarded-for": "192.0.2.99"}
        assert (await http.get("/api/v1/me", headers=fresh)).status_code == 429


async def test_clients_behind_a_trusted_proxy_are_counted_apart(tmp_path: Path) -> None:
    """Served as `bay chat serve` serves, behind a trusted proxy (here 127.0.0.1): over HTTP
    and the WebSocket, X-Forwarded-For names the client, so one guesser is refused and another
    client behind the same proxy is served."""
    settings = _settings(tmp_path, auth_failures=3, trusted_proxies="127.0.0.1")
    async with serve_chat(settings) as chat, httpx.AsyncClient(base_url=chat.http) as http:
        token = await chat.user("ann", "lobby")
        attacker = {"x-forwarded-for": "203.0.113.4"}
        async with connect(chat.ws, additional_headers=attacker) as ws:
            for n in range(3):
                assert (await _hello(ws, f"wrong-{n}"))["code"] == "unauthorized"
        r = await http.get("/api/v1/me", headers={**attacker, "authorization": f"Bearer {token}"})
        assert r.status_code == 429
        other = {"x-forwarded-for": "198.51.100.3"}
        r = await http.get("/api/v1/me", headers={**other, "authorization": f"Bearer {token}"})
        assert r.status_code == 200
        async with connect(chat.ws, additional_headers=other) as ws:
            assert (await _hello(ws, token))["type"] == "welcome"


async def test_the_forwarded_header_of_an_untrusted_peer_is_ignored(tmp_path: Path) -> None:
    """With a trusted proxy set, a peer outside it still counts as itself."""
    async with _in_process(tmp_path, auth_failures=3, trusted_proxies=["10.0.0.1"]) as client:
        peer = client("192.0.2.20")
        for n in range(3):
            forged = {"authorization": "Bearer guess", "x-forwarded-for": f"203.0.113.{n}"}
            assert (await peer.get("/api/v1/me", headers=forged)).status_code == 401
        fresh = {"authorization": f"Bearer {ADMIN}", "x-forwarded-for": "198.51.100.3"}
        assert (await peer.get("/metrics", headers=fresh)).status_code == 429


async def test_zero_auth_failures_never_throttles(tmp_path: Path) -> None:
    """auth_failures=0 (for deployments that throttle elsewhere): wrong tokens are 401s only."""
    async with _in_process(tmp_path, auth_failures=0) as client:
        guesser = client("203.0.113.4")
        for _ in range(30):
            r = await guesser.get("/api/v1/me", headers={"authorization": "Bearer guess"})
            assert r.status_code == 401
        r = await guesser.get("/metrics", headers={"authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200


def test_throttle_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """SERVICEBAY_CHAT_TRUSTED_PROXIES is comma-separated; AUTH_FAILURES may be 0."""
    monkeypatch.setenv("SERVICEBAY_CHAT_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1")
    monkeypatch.setenv("SERVICEBAY_CHAT_AUTH_FAILURES", "0")
    settings = ChatSettings.from_env()
    assert settings.trusted_proxies == ["10.0.0.0/8", "192.0.2.1/32"]
    assert settings.auth_failures == 0
    assert settings.describe()["trusted_proxies"] == ["10.0.0.0/8", "192.0.2.1/32"]
