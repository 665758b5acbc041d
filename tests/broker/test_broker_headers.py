"""Shared checks on every request: API version, authentication, request and originating identity."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from test_broker_support import (
    PASSWORD,
    SYNC,
    TOKEN,
    USER,
    SampleBroker,
    identity_header,
    provision_body,
    running,
)

from servicebay.broker import BrokerSettings, create_app


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[SampleBroker, httpx.AsyncClient]]:
    broker = SampleBroker()
    async with running(broker, f"sqlite:///{tmp_path}/broker.db") as client:
        yield broker, client


@pytest.mark.parametrize("version", [None, "", "  ", "1.0", "3.0", "2.12", "two", "2"])
async def test_missing_empty_or_unsupported_version_is_412_naming_2_17(
    env: tuple[SampleBroker, httpx.AsyncClient], version: str | None
) -> None:
    """A missing, empty, malformed or unsupported X-Broker-API-Version is refused with 412."""
    _, client = env
    headers = {} if version is None else {"X-Broker-API-Version": version}
    client.headers.pop("X-Broker-API-Version")
    response = await client.get("/v2/catalog", headers=headers)
    assert response.status_code == 412
    assert "2.17" in response.json()["description"]


@pytest.mark.parametrize("version", ["2.13", "2.14", "2.17", "2.20"])
async def test_supported_versions_are_accepted(
    env: tuple[SampleBroker, httpx.AsyncClient], version: str
) -> None:
    """Versions 2.13 up to any 2.x are served."""
    _, client = env
    response = await client.get("/v2/catalog", headers={"X-Broker-API-Version": version})
    assert response.status_code == 200


async def test_version_failure_changes_nothing(env: tuple[SampleBroker, httpx.AsyncClient]) -> None:
    """A provision refused for its version never reaches the author."""
    broker, client = env
    response = await client.put(
        "/v2/service_instances/i-1", json=provision_body(), headers={"X-Broker-API-Version": "1.0"}
    )
    assert response.status_code == 412
    assert broker.calls == []
    assert await client.app.state.store.get_instance("i-1") is None  # type: ignore[attr-defined]


async def test_missing_credentials_is_401(env: tuple[SampleBroker, httpx.AsyncClient]) -> None:
    """A request without credentials gets 401 and a basic-auth challenge."""
    _, client = env
    response = await client.get("/v2/catalog", headers={"Authorization": ""}, auth=lambda r: r)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert response.json()["description"]


@pytest.mark.parametrize(
    "authorization",
    [
        _basic(USER, "wrong"),
        _basic("other", PASSWORD),
        _basic(USER, PASSWORD + "x"),
        "Basic not-base64!!",
        "Bearer wrong-token",
        "Digest whatever",
        "Bearer",
    ],
)
async def test_wrong_credentials_are_401(
    env: tuple[SampleBroker, httpx.AsyncClient], authorization: str
) -> None:
    """Wrong user, password, token or scheme are all refused with 401."""
    broker, client = env
    response = await client.put(
        "/v2/service_instances/i-1",
        json=provision_body(),
        headers={"Authorization": authorization},
        auth=lambda r: r,
    )
    assert response.status_code == 401
    assert broker.calls == []


async def test_bearer_token_is_accepted(env: tuple[SampleBroker, httpx.AsyncClient]) -> None:
    """A configured bearer token authenticates like basic credentials."""
    _, client = env
    response = await client.get(
        "/v2/catalog", headers={"Authorization": f"Bearer {TOKEN}"}, auth=lambda r: r
    )
    assert response.status_code == 200


async def test_basic_auth_is_accepted(env: tuple[SampleBroker, httpx.AsyncClient]) -> None:
    """The configured username and password authenticate."""
    _, client = env
    assert (await client.get("/v2/catalog")).status_code == 200


async def test_auth_is_checked_before_the_version(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """An unauthenticated request learns nothing, not even which versions are supported."""
    _, client = env
    response = await client.get(
        "/v2/catalog",
        headers={"X-Broker-API-Version": "1.0", "Authorization": "Bearer nope"},
        auth=lambda r: r,
    )
    assert response.status_code == 401


async def test_healthz_needs_no_auth_and_reveals_nothing(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """/healthz answers without credentials or version header, with nothing but a status."""
    _, client = env
    response = await client.get(
        "/healthz", headers={"Authorization": "", "X-Broker-API-Version": ""}, auth=lambda r: r
    )
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_metrics_need_auth(env: tuple[SampleBroker, httpx.AsyncClient]) -> None:
    """/metrics is protected like the OSB endpoints."""
    _, client = env
    response = await client.get("/metrics", headers={"Authorization": ""}, auth=lambda r: r)
    assert response.status_code == 401


async def test_request_identity_is_echoed(env: tuple[SampleBroker, httpx.AsyncClient]) -> None:
    """X-Broker-API-Request-Identity comes back on the response, errors included."""
    _, client = env
    ok = await client.get("/v2/catalog", headers={"X-Broker-API-Request-Identity": "req-42"})
    assert ok.headers["X-Broker-API-Request-Identity"] == "req-42"
    failed = await client.get(
        "/v2/service_instances/nope", headers={"X-Broker-API-Request-Identity": "req-43"}
    )
    assert failed.status_code == 404
    assert failed.headers["X-Broker-API-Request-Identity"] == "req-43"


async def test_request_identity_is_handed_to_the_author(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """The author's details carry the request identity (for its own logs)."""
    broker, client = env
    response = await client.put(
        "/v2/service_instances/i-1",
        json=provision_body(),
        headers={"X-Broker-API-Request-Identity": "req-7"},
    )
    assert response.status_code == 201
    assert broker.calls[0][1].request_id == "req-7"


async def test_originating_identity_is_decoded_for_the_author(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """X-Broker-API-Originating-Identity reaches the author as platform + decoded object."""
    broker, client = env
    header = identity_header("servicebay", user_id="alice")
    response = await client.put(
        "/v2/service_instances/i-1",
        json=provision_body(),
        headers={"X-Broker-API-Originating-Identity": header},
    )
    assert response.status_code == 201
    identity = broker.identities[0]
    assert identity is not None
    assert identity.platform == "servicebay"
    assert identity.value == {"user_id": "alice"}


_TOO_DEEP = "servicebay " + base64.b64encode(b"[" * 100_000).decode()


@pytest.mark.parametrize(
    "header", ["servicebay", "servicebay !!!", "servicebay WzFd", "", _TOO_DEEP]
)
async def test_malformed_originating_identity_is_400(
    env: tuple[SampleBroker, httpx.AsyncClient], header: str
) -> None:
    """A malformed originating identity is a bad request and changes nothing."""
    broker, client = env
    response = await client.put(
        "/v2/service_instances/i-1",
        json=provision_body(),
        headers={"X-Broker-API-Originating-Identity": header},
    )
    assert response.status_code == 400
    assert "Originating-Identity" in response.json()["description"]
    assert broker.calls == []


def test_app_without_credentials_refuses_to_start(tmp_path: Path) -> None:
    """No username/password and no bearer token: create_app refuses unless allow_anonymous."""
    settings = BrokerSettings(db=f"sqlite:///{tmp_path}/b.db")
    with pytest.raises(ValueError, match="no broker credentials"):
        create_app(SampleBroker(), settings=settings)
    create_app(SampleBroker(), settings=settings, allow_anonymous=True)


async def test_anonymous_app_serves_without_credentials(tmp_path: Path) -> None:
    """With allow_anonymous (tests only) requests need no Authorization header."""
    settings = BrokerSettings(db=f"sqlite:///{tmp_path}/b.db")
    async with running(SampleBroker(), "", settings=settings, allow_anonymous=True) as client:
        response = await client.get("/v2/catalog", auth=lambda r: r)
        assert response.status_code == 200


async def test_unknown_route_is_404_with_json_body(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """A path the API does not define answers 404 with an OSB error body."""
    _, client = env
    response = await client.get("/v2/nothing-here")
    assert response.status_code == 404
    assert response.json()["description"]


async def test_wrong_method_is_405(env: tuple[SampleBroker, httpx.AsyncClient]) -> None:
    """An endpoint called with a method it does not support answers 405."""
    _, client = env
    response = await client.post("/v2/catalog", json={})
    assert response.status_code == 405


async def test_startup_and_shutdown_hooks_run(tmp_path: Path) -> None:
    """The author's startup and shutdown hooks run with the app's lifespan."""
    broker = SampleBroker()
    async with running(broker, f"sqlite:///{tmp_path}/b.db") as client:
        assert broker.started
        assert not broker.stopped
        assert (await client.get("/v2/catalog")).status_code == 200
    assert broker.stopped


async def test_catalog_is_served_as_declared(env: tuple[SampleBroker, httpx.AsyncClient]) -> None:
    """GET /v2/catalog answers the author's catalog."""
    broker, client = env
    response = await client.get("/v2/catalog")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == broker.catalog.to_wire()
    assert {p["id"] for p in response.json()["services"][0]["plans"]} >= {SYNC}
