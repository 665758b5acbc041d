"""Failed authentication is throttled per client address: 429 with Retry-After, unchecked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from test_broker_support import HEADERS, PASSWORD, USER, Lifespan, SampleBroker, settings_for

from servicebay.broker import BrokerSettings, SettingsError, create_app


@asynccontextmanager
async def _broker(
    tmp_path: Path, **settings: object
) -> AsyncIterator[Callable[[str], httpx.AsyncClient]]:
    """The broker app running; ``client(address)`` makes a client that comes from ``address``."""
    base = settings_for(f"sqlite:///{tmp_path}/broker.db")
    app = create_app(SampleBroker(), settings=base.model_copy(update=settings))
    clients: list[httpx.AsyncClient] = []

    def client(address: str) -> httpx.AsyncClient:
        made = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=(address, 40000)),
            base_url="http://broker.test",
            headers=HEADERS,
        )
        clients.append(made)
        return made

    async with Lifespan(app):
        try:
            yield client
        finally:
            for made in clients:
                await made.aclose()


async def test_ten_wrong_passwords_then_429_even_for_the_right_one(tmp_path: Path) -> None:
    """After the default 10 failures the address gets 429 with Retry-After, right password too."""
    async with _broker(tmp_path) as client:
        attacker = client("203.0.113.5")
        for _ in range(10):
            r = await attacker.get("/v2/catalog", auth=(USER, "guess"))
            assert r.status_code == 401
        r = await attacker.get("/v2/catalog", auth=(USER, PASSWORD))
        assert r.status_code == 429
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert "too many failed authentications" in r.json()["description"]
        metrics = await client("198.51.100.1").get("/metrics", auth=(USER, PASSWORD))
        assert 'status="429"' in metrics.text


async def test_other_addresses_and_good_credentials_are_not_slowed(tmp_path: Path) -> None:
    """While one address is throttled, another's good and bad requests are answered as usual."""
    async with _broker(tmp_path, auth_failures=3) as client:
        attacker, platform = client("203.0.113.5"), client("198.51.100.1")
        for _ in range(3):
            await attacker.get("/v2/catalog", auth=(USER, "guess"))
        assert (await attacker.get("/v2/catalog", auth=(USER, PASSWORD))).status_code == 429
        started = time.perf_counter()
        assert (await platform.get("/v2/catalog", auth=(USER, PASSWORD))).status_code == 200
        assert time.perf_counter() - started < 1
        assert (await platform.get("/v2/catalog", auth=(USER, "typo"))).status_code == 401
        assert (await platform.get("/v2/catalog", auth=(USER, PASSWORD))).status_code == 200


async def test_missing_credentials_are_not_counted(tmp_path: Path) -> None:
    """A request without credentials guesses nothing: 401 each time, never 429."""
    async with _broker(tmp_path, auth_failures=3) as client:
        anonymous = client("203.0.113.5")
        for _ in range(10):
            assert (await anonymous.get("/v2/catalog")).status_code == 401
        assert (await anonymous.get("/v2/catalog", auth=(USER, PASSWORD))).status_code == 200


async def test_healthz_stays_public_for_a_throttled_address(tmp_path: Path) -> None:
    """Liveness needs no credentials, so it is never throttled."""
    async with _broker(tmp_path, auth_failures=2) as client:
        attacker = client("203.0.113.5")
        for _ in range(2):
            await attacker.get("/v2/catalog", headers={"Authorization": "Bearer nope"})
        assert (await attacker.get("/v2/catalog", auth=(USER, PASSWORD))).status_code == 429
        assert (await attacker.get("/healthz")).status_code == 200


async def test_the_address_may_try_again_once_the_window_passed(tmp_path: Path) -> None:
    """After the window the right credentials work again from the throttled address."""
    async with _broker(tmp_path, auth_failures=2, auth_window=0.5) as client:
        attacker = client("203.0.113.5")
        for _ in range(2):
            await attacker.get("/v2/catalog", auth=(USER, "guess"))
        assert (await attacker.get("/v2/catalog", auth=(USER, PASSWORD))).status_code == 429
        deadline = time.monotonic() + 5
        while (await attacker.get("/v2/catalog", auth=(USER, PASSWORD))).status_code == 429:
            assert time.monotonic() < deadline, "still throttled long after the window"
            await asyncio.sleep(0.05)


async def _guess_then_log_in(client: httpx.AsyncClient, guesses: int) -> int:
    for _ in range(guesses):
        assert (await client.get("/v2/catalog", auth=(USER, "guess"))).status_code == 401
    return (await client.get("/v2/catalog", auth=(USER, PASSWORD))).status_code


async def test_clients_behind_a_trusted_proxy_are_counted_apart(tmp_path: Path) -> None:
    """From a trusted proxy, X-Forwarded-For names the client: one guesser behind it is
    refused, another client behind the same proxy is served."""
    async with _broker(tmp_path, auth_failures=3, trusted_proxies=["10.0.0.0/8"]) as client:
        proxy = client("10.0.0.2")
        attacker = {"X-Forwarded-For": "203.0.113.5"}
        for _ in range(3):
            r = await proxy.get("/v2/catalog", auth=(USER, "guess"), headers=attacker)
            assert r.status_code == 401
        r = await proxy.get("/v2/catalog", auth=(USER, PASSWORD), headers=attacker)
        assert r.status_code == 429
        other = {"X-Forwarded-For": "198.51.100.1"}
        r = await proxy.get("/v2/catalog", auth=(USER, PASSWORD), headers=other)
        assert r.status_code == 200


async def test_the_forwarded_header_of_an_untrusted_peer_is_ignored(tmp_path: Path) -> None:
    """A peer that is not a trusted proxy counts as itself whatever address it forwards."""
    async with _broker(tmp_path, auth_failures=3, trusted_proxies=["10.0.0.0/8"]) as client:
        peer = client("192.0.2.20")
        for n in range(3):
            forged = {"X-Forwarded-For": f"203.0.113.{n}"}
            r = await peer.get("/v2/catalog", auth=(USER, "guess"), headers=forged)
            assert r.status_code == 401
        fresh = {"X-Forwarded-For": "198.51.100.1"}
        r = await peer.get("/v2/catalog", auth=(USER, PASSWORD), headers=fresh)
        assert r.status_code == 429


async def test_zero_auth_failures_never_throttles(tmp_path: Path) -> None:
    """auth_failures=0 (for deployments that throttle elsewhere): wrong guesses are 401s only."""
    async with _broker(tmp_path, auth_failures=0) as client:
        assert await _guess_then_log_in(client("203.0.113.5"), 30) == 200


def test_trusted_proxies_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """SERVICEBAY_BROKER_TRUSTED_PROXIES is comma-separated; a wrong entry is named."""
    monkeypatch.setenv("SERVICEBAY_BROKER_USERNAME", USER)
    monkeypatch.setenv("SERVICEBAY_BROKER_PASSWORD", PASSWORD)
    monkeypatch.setenv("SERVICEBAY_BROKER_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1")
    monkeypatch.setenv("SERVICEBAY_BROKER_AUTH_FAILURES", "0")
    settings = BrokerSettings.from_env()
    assert settings.trusted_proxies == ["10.0.0.0/8", "192.0.2.1/32"]
    assert settings.auth_failures == 0
    assert settings.describe()["trusted_proxies"] == ["10.0.0.0/8", "192.0.2.1/32"]
    monkeypatch.setenv("SERVICEBAY_BROKER_TRUSTED_PROXIES", "10.0.0.0/8,proxy")
    with pytest.raises(SettingsError, match="trusted_proxies"):
        BrokerSettings.from_env()
