"""Brokers and namespaces decide what every user may do: only an admin changes them.

A namespace's visible plans, parameter constraints and instance quota are limits set on the
users of that namespace; a user who could rewrite or delete them has no limits. Registering a
broker makes the platform call any URL with the given credentials.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from security_helpers import USER_TOKEN, platform_client

USER = {"authorization": f"Bearer {USER_TOKEN}"}


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A platform with a namespace ``team`` capped at one instance."""
    async with platform_client(tmp_path) as client:
        body = {"name": "team", "max_instances": 1}
        (await client.post("/api/v1/namespaces", json=body)).raise_for_status()
        yield client


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/namespaces", {"name": "mine"}),
        ("PUT", "/api/v1/namespaces/team", {"max_instances": 1000}),
        ("DELETE", "/api/v1/namespaces/team", None),
        ("POST", "/api/v1/brokers", {"name": "b", "url": "http://127.0.0.1:1"}),
        ("POST", "/api/v1/brokers/b/refresh", None),
        ("DELETE", "/api/v1/brokers/b", None),
    ],
)
async def test_a_user_who_is_not_admin_gets_403_and_changes_nothing(
    platform: httpx.AsyncClient, method: str, path: str, body: dict[str, object] | None
) -> None:
    """Namespace and broker changes by a non-admin are refused before anything is done."""
    before = (await platform.get("/api/v1/namespaces")).json()
    response = await platform.request(method, path, json=body, headers=USER)
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "forbidden"
    assert (await platform.get("/api/v1/namespaces")).json() == before
    assert (await platform.get("/api/v1/brokers")).json()["items"] == []


async def test_a_user_still_reads_namespaces_and_brokers(platform: httpx.AsyncClient) -> None:
    """Reading them stays open to every user (the CLI lists them)."""
    for path in ("/api/v1/namespaces", "/api/v1/namespaces/team", "/api/v1/brokers"):
        assert (await platform.get(path, headers=USER)).status_code == 200


async def test_the_admin_still_changes_namespaces(platform: httpx.AsyncClient) -> None:
    """The admin's token keeps every right."""
    response = await platform.put("/api/v1/namespaces/team", json={"max_instances": 2})
    assert response.status_code == 200
