"""The platform never stores, shows or logs a broker's credentials, even when handed them badly."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from security_helpers import platform_client

SECRET = "s3cret-Br0ker-pw"


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A platform on a fresh database, in-process, with an admin token."""
    async with platform_client(tmp_path) as client:
        yield client


@pytest.mark.parametrize(
    "url",
    [
        f"http://admin:{SECRET}@127.0.0.1:1",
        f"http://{SECRET}@127.0.0.1:1",
        f"http://127.0.0.1:1/?token={SECRET}",
        f"http://127.0.0.1:1/#{SECRET}",
    ],
)
async def test_broker_url_carrying_a_secret_is_refused(
    platform: httpx.AsyncClient, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker URL with userinfo, a query or a fragment is refused (400) before any request:
    the URL is stored and listed as is, and the HTTP client logs it."""
    caplog.set_level(logging.DEBUG)
    response = await platform.post("/api/v1/brokers", json={"name": "b", "url": url})
    assert response.status_code == 400
    assert "username/password" in response.json()["message"]
    assert SECRET not in response.text
    assert SECRET not in caplog.text
    assert (await platform.get("/api/v1/brokers")).json()["items"] == []


async def test_broker_url_without_secret_still_reaches_the_broker(
    platform: httpx.AsyncClient,
) -> None:
    """A plain base URL (with a path) passes validation; the unreachable broker is the error."""
    body = {"name": "b", "url": "http://127.0.0.1:1/osb", "username": "u", "password": SECRET}
    response = await platform.post("/api/v1/brokers", json=body)
    assert response.status_code != 400, response.text
    assert SECRET not in response.text


@pytest.mark.parametrize(
    "auth",
    [
        {"bearer_token": f"{SECRET}\r\nX-Injected: 1"},
        {"bearer_token": f"{SECRET} two words"},
        {"username": "ad\nmin", "password": SECRET},
        {"username": "ad:min", "password": SECRET},
    ],
)
async def test_broker_credentials_that_would_break_headers_are_refused(
    platform: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    """Credentials travel in an HTTP header: CR/LF or other control characters (extra headers),
    spaces in a bearer token, or ':' in a Basic user are refused (400), never echoed."""
    body = {"name": "b", "url": "http://127.0.0.1:1", **auth}
    response = await platform.post("/api/v1/brokers", json=body)
    assert response.status_code == 400, response.text
    assert SECRET not in response.text
    assert (await platform.get("/api/v1/brokers")).json()["items"] == []
