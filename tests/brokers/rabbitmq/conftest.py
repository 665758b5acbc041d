"""Fixtures of the RabbitMQ broker tests: unique names on the machine's RabbitMQ, cleaned up.

Other sessions use the same RabbitMQ at the same time, so every vhost and user a test creates
starts with its own ``sbt-<hex>-`` prefix, and only names with that prefix are removed after it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from servicebay.broker import BrokerSettings
from servicebay.brokers.rabbitmq import (
    PLANS,
    SERVICE_ID,
    ManagementAPI,
    RabbitMQBroker,
    RabbitMQBrokerSettings,
)
from servicebay.testing import run_broker

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


# -- the broker, driven through its OSB HTTP surface -----------------------------------------

OSB_USER, OSB_PASSWORD = "platform", "platform-secret"
PLAN_IDS = {limits.name: limits.plan_id for limits in PLANS}


class OSBSession:
    """OSB calls against one in-process broker; each returns the raw httpx response."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self._plans: dict[str, str] = {}  # instance id → plan name, as the platform knows it

    def _ids(self, plan: str | None, instance_id: str | None = None) -> dict[str, str]:
        if plan is None:
            plan = self._plans.get(instance_id or "", "standard")
        return {"service_id": SERVICE_ID, "plan_id": PLAN_IDS[plan]}

    async def provision(
        self, instance_id: str, plan: str = "standard", **parameters: Any
    ) -> httpx.Response:
        self._plans[instance_id] = plan
        body: dict[str, Any] = {**self._ids(plan), "organization_guid": "o", "space_guid": "s"}
        if parameters:
            body["parameters"] = parameters
        return await self.client.put(f"/v2/service_instances/{instance_id}", json=body)

    async def update(
        self, instance_id: str, plan: str | None = None, **parameters: Any
    ) -> httpx.Response:
        body: dict[str, Any] = {"service_id": SERVICE_ID, "parameters": parameters}
        if plan is not None:
            body["plan_id"] = PLAN_IDS[plan]
        response = await self.client.patch(f"/v2/service_instances/{instance_id}", json=body)
        if plan is not None and response.status_code == 200:
            self._plans[instance_id] = plan
        return response

    async def deprovision(self, instance_id: str, plan: str | None = None) -> httpx.Response:
        return await self.client.delete(
            f"/v2/service_instances/{instance_id}", params=self._ids(plan, instance_id)
        )

    async def fetch_instance(self, instance_id: str) -> httpx.Response:
        return await self.client.get(f"/v2/service_instances/{instance_id}")

    async def bind(
        self,
        instance_id: str,
        binding_id: str,
        plan: str | None = None,
        predecessor: str | None = None,
    ) -> httpx.Response:
        body: dict[str, Any] = {**self._ids(plan, instance_id), "app_guid": "app"}
        if predecessor is not None:
            body["predecessor_binding_id"] = predecessor
        return await self.client.put(
            f"/v2/service_instances/{instance_id}/service_bindings/{binding_id}", json=body
        )

    async def unbind(
        self, instance_id: str, binding_id: str, plan: str | None = None
    ) -> httpx.Response:
        return await self.client.delete(
            f"/v2/service_instances/{instance_id}/service_bindings/{binding_id}",
            params=self._ids(plan, instance_id),
        )

    async def fetch_binding(self, instance_id: str, binding_id: str) -> httpx.Response:
        return await self.client.get(
            f"/v2/service_instances/{instance_id}/service_bindings/{binding_id}"
        )

    async def credentials(self, instance_id: str, binding_id: str) -> dict[str, Any]:
        """Bind and return the credentials, asserting the bind succeeded."""
        response = await self.bind(instance_id, binding_id)
        assert response.status_code == 201, response.text
        return dict(response.json()["credentials"])


def broker_settings(prefix: str, **overrides: Any) -> RabbitMQBrokerSettings:
    """The RabbitMQ broker's settings for a test: the machine's RabbitMQ, the test's prefix."""
    return RabbitMQBrokerSettings.from_env(
        {}, management_url=MANAGEMENT_URL, prefix=prefix, **overrides
    )


@contextlib.asynccontextmanager
async def running_broker(broker: RabbitMQBroker, db: Path) -> AsyncIterator[OSBSession]:
    """Serve ``broker`` in-process (lifespan included) on a SQLite store at ``db``."""
    settings = BrokerSettings(
        username=OSB_USER, password=OSB_PASSWORD, db=f"sqlite:///{db}", log_level="warning"
    )
    async with run_broker(broker, settings=settings) as running:
        yield OSBSession(running.client)


@pytest.fixture
def broker_db(tmp_path: Path) -> Path:
    """Where the broker under test keeps its records (survives a broker restart in a test)."""
    return tmp_path / "broker.db"


@pytest.fixture
async def osb_session(rabbitmq_prefix: str, broker_db: Path) -> AsyncIterator[OSBSession]:
    """The RabbitMQ broker, served in-process with this test's prefix."""
    async with running_broker(RabbitMQBroker(broker_settings(rabbitmq_prefix)), broker_db) as s:
        yield s


@pytest.fixture
def new_id() -> Callable[[], str]:
    """Fresh OSB ids (GUIDs, as platforms send)."""
    return lambda: str(uuid.uuid4())


@pytest.fixture
def make_broker(rabbitmq_prefix: str) -> Callable[..., RabbitMQBroker]:
    """Builds a RabbitMQ broker with the test's prefix; ``transport`` injects failures."""

    def make(
        *, transport: httpx.AsyncBaseTransport | None = None, **overrides: Any
    ) -> RabbitMQBroker:
        settings = broker_settings(overrides.pop("prefix", rabbitmq_prefix), **overrides)
        api = None
        if transport is not None:
            api = ManagementAPI(
                MANAGEMENT_URL, *ADMIN, attempts=2, backoff=0.01, transport=transport
            )
        return RabbitMQBroker(settings, api=api)

    return make


@pytest.fixture
def serve(broker_db: Path) -> Callable[..., contextlib.AbstractAsyncContextManager[OSBSession]]:
    """Serves a broker in-process on the test's store: ``async with serve(broker) as osb:``."""
    return lambda broker, db=None: running_broker(broker, db or broker_db)


@pytest.fixture
def amqp_url() -> Callable[[str, str, str], str]:
    """The admin's AMQP URL of a vhost (to look inside as the operator)."""
    return lambda vhost, user="guest", password="guest": (
        f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:5672/"
        f"{quote(vhost, safe='')}"
    )
