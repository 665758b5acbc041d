"""Wrong API tokens are throttled per client address: 429 with Retry-After, token unchecked."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import httpx
import pytest

from conftest import ADMIN_TOKEN, PlatformUnderTest, platform_settings, running_platform, served
from servicebay.platform.api.serving import uvicorn_options
from servicebay.platform.settings import PlatformSettings


def _from(platform: PlatformUnderTest, address: str, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=platform.app, client=(address, 40000)),
        base_url="http://platform.test",
        headers={"Authorization": f"Bearer {token}"},
    )


async def test_wrong_tokens_over_a_real_socket_get_429_then_pass_after_the_window(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """10 wrong tokens, then 429 with Retry-After (the admin token too), logged without the
    tokens; public routes still answer; after the window the admin token works again."""
    settings = platform_settings(tmp_path, f"sqlite:///{tmp_path / 'p.db'}", auth_window=1.0)
    caplog.set_level(logging.WARNING, logger="servicebay.platform.api")
    async with (
        running_platform(settings) as platform,
        served(platform.app) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        for n in range(10):
            wrong = {"Authorization": f"Bearer wrong-{n}"}
            assert (await client.get("/api/v1/brokers", headers=wrong)).status_code == 401
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        r = await client.get("/api/v1/brokers", headers=admin)
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "1"
        assert r.json()["error"] == "too_many_attempts"
        assert (await client.get("/api/v1/healthz")).status_code == 200
        deadline = time.monotonic() + 10
        while (await client.get("/api/v1/brokers", headers=admin)).status_code == 429:
            assert time.monotonic() < deadline, "still throttled long after the window"
            await asyncio.sleep(0.05)
    logged = caplog.text
    assert "authentication throttled" in logged
    assert "127.0.0.1" in logged
    assert "wrong-" not in logged
    assert ADMIN_TOKEN not in logged


async def test_other_addresses_are_not_throttled(tmp_path: Path) -> None:
    """While one address is refused, another's requests are answered as usual."""
    settings = platform_settings(tmp_path, f"sqlite:///{tmp_path / 'p.db'}", auth_failures=3)
    async with (
        running_platform(settings) as platform,
        _from(platform, "203.0.113.9", "guess") as attacker,
        _from(platform, "198.51.100.2", ADMIN_TOKEN) as admin,
    ):
        for _ in range(3):
            assert (await attacker.get("/api/v1/brokers")).status_code == 401
        assert (await attacker.get("/api/v1/brokers")).status_code == 429
        started = time.perf_counter()
        assert (await admin.get("/api/v1/brokers")).status_code == 200
        assert time.perf_counter() - started < 1
        r = await admin.get("/api/v1/brokers", headers={"Authorization": "Bearer typo"})
        assert r.status_code == 401


async def test_requests_without_a_token_are_not_counted(tmp_path: Path) -> None:
    """No token guesses nothing: 401 each time, and the right token still works."""
    settings = platform_settings(tmp_path, f"sqlite:///{tmp_path / 'p.db'}", auth_failures=2)
    async with (
        running_platform(settings) as platform,
        _from(platform, "203.0.113.9", ADMIN_TOKEN) as client,
    ):
        for _ in range(5):
            r = await client.get("/api/v1/brokers", headers={"Authorization": ""})
            assert r.status_code == 401
        assert (await client.get("/api/v1/brokers")).status_code == 200


async def test_a_forwarded_address_does_not_escape_the_count(tmp_path: Path) -> None:
    """Served as `bay server` serves (its uvicorn options): each wrong token names a new
    X-Forwarded-For address, and the socket's address is throttled all the same."""
    settings = platform_settings(tmp_path, f"sqlite:///{tmp_path / 'p.db'}", auth_failures=3)
    async with (
        running_platform(settings) as platform,
        served(platform.app, **uvicorn_options()) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        for n in range(3):
            forged = {"Authorization": f"Bearer wrong-{n}", "X-Forwarded-For": f"192.0.2.{n}"}
            assert (await client.get("/api/v1/brokers", headers=forged)).status_code == 401
        fresh = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Forwarded-For": "192.0.2.99"}
        assert (await client.get("/api/v1/brokers", headers=fresh)).status_code == 429


async def test_clients_behind_a_trusted_proxy_are_counted_apart(tmp_path: Path) -> None:
    """Served as `bay server` serves, behind a trusted proxy (here 127.0.0.1): X-Forwarded-For
    names the client, so one guesser is refused and another client behind it is served."""
    settings = platform_settings(
        tmp_path, f"sqlite:///{tmp_path / 'p.db'}", auth_failures=3, trusted_proxies="127.0.0.1"
    )
    async with (
        running_platform(settings) as platform,
        served(platform.app, **uvicorn_options()) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        for n in range(3):
            guess = {"Authorization": f"Bearer wrong-{n}", "X-Forwarded-For": "203.0.113.9"}
            assert (await client.get("/api/v1/brokers", headers=guess)).status_code == 401
        attacker = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Forwarded-For": "203.0.113.9"}
        assert (await client.get("/api/v1/brokers", headers=attacker)).status_code == 429
        other = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Forwarded-For": "198.51.100.2"}
        assert (await client.get("/api/v1/brokers", headers=other)).status_code == 200


async def test_the_forwarded_header_of_an_untrusted_peer_is_ignored(tmp_path: Path) -> None:
    """With a trusted proxy set, a peer outside it still counts as itself."""
    settings = platform_settings(
        tmp_path, f"sqlite:///{tmp_path / 'p.db'}", auth_failures=3, trusted_proxies=["10.0.0.1"]
    )
    async with (
        running_platform(settings) as platform,
        _from(platform, "192.0.2.20", "guess") as peer,
    ):
        for n in range(3):
            forged = {"X-Forwarded-For": f"203.0.113.{n}"}
            assert (await peer.get("/api/v1/brokers", headers=forged)).status_code == 401
        fresh = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Forwarded-For": "198.51.100.2"}
        assert (await peer.get("/api/v1/brokers", headers=fresh)).status_code == 429


async def test_zero_auth_failures_never_throttles(tmp_path: Path) -> None:
    """auth_failures=0 (for deployments that throttle elsewhere): wrong tokens are 401s only."""
    settings = platform_settings(tmp_path, f"sqlite:///{tmp_path / 'p.db'}", auth_failures=0)
    async with (
        running_platform(settings) as platform,
        _from(platform, "203.0.113.9", "guess") as client,
    ):
        for _ in range(30):
            assert (await client.get("/api/v1/brokers")).status_code == 401
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert (await client.get("/api/v1/brokers", headers=admin)).status_code == 200


def test_throttle_settings_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SERVICEBAY_PLATFORM_TRUSTED_PROXIES is comma-separated; AUTH_FAILURES may be 0."""
    monkeypatch.setenv("SERVICEBAY_PLATFORM_TRUSTED_PROXIES", "10.0.0.0/8, ::1")
    monkeypatch.setenv("SERVICEBAY_PLATFORM_AUTH_FAILURES", "0")
    settings = PlatformSettings.from_env(home=tmp_path)
    assert settings.trusted_proxies == ["10.0.0.0/8", "::1/128"]
    assert settings.auth_failures == 0
    assert settings.describe()["trusted_proxies"] == ["10.0.0.0/8", "::1/128"]
    monkeypatch.setenv("SERVICEBAY_PLATFORM_TRUSTED_PROXIES", "proxy.internal")
    with pytest.raises(ValueError, match=r"proxy\.internal"):
        PlatformSettings.from_env(home=tmp_path)
