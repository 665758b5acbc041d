"""Fixtures of the RabbitMQ broker tests: unique names on the machine's RabbitMQ, cleaned up.

Other sessions use the same RabbitMQ at the same time, so every vhost and user a test creates
starts with its own ``sbt-<hex>-`` prefix, and only names with that prefix are removed after it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from urllib.parse import quote

import httpx
import pytest

from servicebay.brokers.rabbitmq import ManagementAPI

MANAGEMENT_URL = os.environ.get("SERVICEBAY_TEST_RABBITMQ_API", "http://127.0.0.1:15672")
ADMIN = ("guest", "guest")

#: Decides the fate of one request: an exception to raise, a status to answer, or None to pass.
Fault = Callable[[httpx.Request], "Exception | int | None"]


class FaultyTransport(httpx.AsyncBaseTransport):
    """The real HTTP transport, except for the requests ``fault`` picks (failure injection)."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.seen: list[tuple[str, str]] = []
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, request.url.raw_path.decode()))
        outcome = self.fault(request)
        if isinstance(outcome, Exception):
            raise outcome
        if isinstance(outcome, int):
            return httpx.Response(outcome, json={"error": "injected", "reason": "injected"})
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _cleanup(prefix: str) -> None:
    with httpx.Client(base_url=MANAGEMENT_URL + "/api", auth=ADMIN, timeout=30) as api:
        for kind in ("vhosts", "users"):
            for item in api.get(f"/{kind}", params={"columns": "name"}).json():
                if item["name"].startswith(prefix):
                    api.delete(f"/{kind}/{quote(item['name'], safe='')}")


@pytest.fixture
def rabbitmq_prefix() -> Iterator[str]:
    """A name prefix of this test's own; whatever carries it is deleted afterwards."""
    prefix = f"sbt-{uuid.uuid4().hex[:6]}-"
    yield prefix
    _cleanup(prefix)


@pytest.fixture
def management_url() -> str:
    """The machine's RabbitMQ management API."""
    return MANAGEMENT_URL


@pytest.fixture
async def management_api() -> AsyncIterator[ManagementAPI]:
    """A management API client with the machine's admin credentials."""
    async with ManagementAPI(MANAGEMENT_URL, *ADMIN, timeout=10) as api:
        yield api


@pytest.fixture
def faulty_transport() -> type[FaultyTransport]:
    """The failure-injecting transport class."""
    return FaultyTransport


def vhost_names() -> set[str]:
    """Every vhost RabbitMQ has right now."""
    with httpx.Client(base_url=MANAGEMENT_URL + "/api", auth=ADMIN, timeout=30) as api:
        return {v["name"] for v in api.get("/vhosts", params={"columns": "name"}).json()}


def user_names() -> set[str]:
    """Every user RabbitMQ has right now."""
    with httpx.Client(base_url=MANAGEMENT_URL + "/api", auth=ADMIN, timeout=30) as api:
        return {u["name"] for u in api.get("/users", params={"columns": "name"}).json()}


@pytest.fixture
def rabbitmq_names() -> Callable[[str], set[str]]:
    """Lists every vhost and user name RabbitMQ has that starts with a prefix."""

    def names(prefix: str) -> set[str]:
        return {n for n in vhost_names() | user_names() if n.startswith(prefix)}

    return names
