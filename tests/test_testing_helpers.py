"""servicebay.testing: a broker in-process (run_broker) and as a real process (serve_broker)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from cryptography.fernet import Fernet
from psycopg import sql
from sqlalchemy.engine import make_url

from servicebay import broker as sb
from servicebay.osb import Catalog, Plan, Service
from servicebay.testing import run_broker, serve_broker

SERVICE_ID = "5a0b6c1e-0000-4000-8000-00000000a001"
SYNC_PLAN = "5a0b6c1e-0000-4000-8000-00000000a002"
SLOW_PLAN = "5a0b6c1e-0000-4000-8000-00000000a003"
SECRET = "s3cret-binding-password"


class TinyBroker(sb.Broker):
    """A broker whose 'slow' plan provisions asynchronously, taking a second and a half."""

    catalog = Catalog(
        services=[
            Service(
                id=SERVICE_ID,
                name="tiny",
                description="A tiny broker for the testing helpers' tests.",
                bindable=True,
                instances_retrievable=True,
                bindings_retrievable=True,
                plans=[
                    Plan(id=SYNC_PLAN, name="sync", description="Everything at once."),
                    Plan(id=SLOW_PLAN, name="slow", description="Provisioning takes a while."),
                ],
            )
        ]
    )

    def __init__(self) -> None:
        self.events: list[str] = []

    def is_async(self, operation: sb.OperationKind, plan: Plan) -> bool:
        return plan.id == SLOW_PLAN and operation is sb.OperationKind.PROVISION

    async def startup(self) -> None:
        self.events.append("startup")

    async def shutdown(self) -> None:
        self.events.append("shutdown")

    async def provision(
        self, details: sb.ProvisionDetails, ctx: sb.OperationContext
    ) -> sb.ProvisionResult:
        if details.plan.id == SLOW_PLAN:
            await ctx.progress("warming up")
            await asyncio.sleep(1.5)
        return sb.ProvisionResult()

    async def deprovision(self, details: sb.DeprovisionDetails, ctx: sb.OperationContext) -> None:
        return None

    async def bind(self, details: sb.BindDetails, ctx: sb.OperationContext) -> sb.BindResult:
        return sb.BindResult(credentials={"user": "u", "password": SECRET})

    async def unbind(self, details: sb.UnbindDetails, ctx: sb.OperationContext) -> None:
        return None


class BrokenStartup(TinyBroker):
    """A broker whose startup hook fails."""

    async def startup(self) -> None:
        raise RuntimeError("cannot reach the backing service")


tiny_broker = TinyBroker()


def _provision_body(plan_id: str = SYNC_PLAN) -> dict[str, object]:
    return {
        "service_id": SERVICE_ID,
        "plan_id": plan_id,
        "organization_guid": "o",
        "space_guid": "s",
    }


async def test_run_broker_runs_the_lifespan_and_presets_auth_and_version() -> None:
    """The client reaches the app authenticated with the version header; hooks run around it."""
    broker = TinyBroker()
    async with run_broker(broker) as tb:
        assert broker.events == ["startup"]
        response = await tb.client.get("/v2/catalog")
        assert response.status_code == 200
        assert response.json()["services"][0]["id"] == SERVICE_ID
    assert broker.events == ["startup", "shutdown"]


async def test_run_broker_exposes_the_store_the_app_writes() -> None:
    """tb.store is the app's own store: a provision is visible in it, credentials decrypted."""
    async with run_broker(TinyBroker()) as tb:
        instance_id = str(uuid.uuid4())
        response = await tb.client.put(
            f"/v2/service_instances/{instance_id}", json=_provision_body()
        )
        assert response.status_code == 201
        bind = await tb.client.put(
            f"/v2/service_instances/{instance_id}/service_bindings/b-1",
            json={"service_id": SERVICE_ID, "plan_id": SYNC_PLAN},
        )
        assert bind.status_code == 201
        record = await tb.store.get_instance(instance_id)
        assert record is not None and record.plan_id == SYNC_PLAN
        binding = await tb.store.get_binding(instance_id, "b-1")
        assert binding is not None
        assert binding.response["credentials"]["password"] == SECRET


async def test_run_broker_requires_the_credentials_it_presets() -> None:
    """The app is not open: without the preset auth it answers 401."""
    async with run_broker(TinyBroker()) as tb:
        anonymous = await tb.client.get("/v2/catalog", auth=None)
        assert anonymous.status_code == 401
        wrong = await tb.client.get("/v2/catalog", auth=("servicebay-test", "wrong"))
        assert wrong.status_code == 401


async def test_run_broker_uses_a_bearer_token_from_settings() -> None:
    """With bearer-only settings the client sends the token."""
    settings = sb.BrokerSettings(bearer_token="tok-123", db="sqlite://")
    async with run_broker(TinyBroker(), settings=settings) as tb:
        assert (await tb.client.get("/v2/catalog")).status_code == 200
        anonymous = await tb.client.get("/v2/catalog", headers={"Authorization": ""})
        assert anonymous.status_code == 401


async def test_run_broker_reports_a_failed_startup() -> None:
    """A startup hook that raises surfaces as an error, not a hang."""
    with pytest.raises((RuntimeError,), match="backing service"):
        async with run_broker(BrokenStartup()):
            pytest.fail("the block must not run when startup failed")


async def test_each_run_broker_starts_from_an_empty_store() -> None:
    """Default stores are fresh temporary files: nothing leaks between tests."""
    instance_id = str(uuid.uuid4())
    async with run_broker(TinyBroker()) as first:
        await first.client.put(f"/v2/service_instances/{instance_id}", json=_provision_body())
    async with run_broker(TinyBroker()) as second:
        assert await second.store.get_instance(instance_id) is None


@pytest.mark.e2e
def test_serve_broker_serves_over_a_real_socket_and_stops_cleanly() -> None:
    """A real process answers on its URL; the log holds no secret; SIGTERM exits 0."""
    with serve_broker(tiny_broker) as served:
        auth = (served.username, served.password)
        headers = {"X-Broker-API-Version": "2.17"}
        catalog = httpx.get(f"{served.url}/v2/catalog", auth=auth, headers=headers, timeout=5)
        assert catalog.status_code == 200
        instance = f"{served.url}/v2/service_instances/i-1"
        assert httpx.put(instance, json=_provision_body(), auth=auth, headers=headers).is_success
        bind = httpx.put(
            f"{instance}/service_bindings/b-1",
            json={"service_id": SERVICE_ID, "plan_id": SYNC_PLAN},
            auth=auth,
            headers=headers,
        )
        assert bind.json()["credentials"]["password"] == SECRET
        assert served.stop() == 0
        log = served.log
    assert served.password not in log
    assert SECRET not in log


@pytest.mark.e2e
def test_serve_broker_accepts_a_subclass_and_a_module_reference() -> None:
    """A Broker subclass and 'module:attr' both name what the process should serve."""
    for target in (TinyBroker, f"{__name__}:tiny_broker"):
        with serve_broker(target) as served:
            response = httpx.get(
                f"{served.url}/v2/catalog",
                auth=(served.username, served.password),
                headers={"X-Broker-API-Version": "2.17"},
            )
            assert response.status_code == 200


def test_serve_broker_refuses_an_instance_it_cannot_import() -> None:
    """A broker that is not a module global cannot be named to a new process: a clear error."""
    with pytest.raises(ValueError, match="module:attr"), serve_broker(TinyBroker()):
        pass


@pytest.mark.e2e
def test_serve_broker_reports_a_process_that_cannot_start() -> None:
    """A target that does not import fails fast with the process's own message."""
    with pytest.raises(RuntimeError, match="no_such_module"), serve_broker("no_such_module:broker"):
        pass


@pytest.mark.e2e
def test_killed_broker_resumes_its_operation_after_restart() -> None:
    """kill -9 during an async provision; restarted on the same db and URL, it finishes the work."""
    with serve_broker(tiny_broker, env={"SERVICEBAY_BROKER_OPERATION_LEASE": "1"}) as served:
        auth = (served.username, served.password)
        headers = {"X-Broker-API-Version": "2.17"}
        url = f"{served.url}/v2/service_instances/slow-1"
        accepted = httpx.put(
            url,
            params={"accepts_incomplete": "true"},
            json=_provision_body(SLOW_PLAN),
            auth=auth,
            headers=headers,
        )
        assert accepted.status_code == 202
        operation = accepted.json().get("operation")
        served.kill()
        served.restart()
        deadline = time.monotonic() + 45
        while True:
            polled = httpx.get(
                f"{url}/last_operation",
                params={"operation": operation} if operation else {},
                auth=auth,
                headers=headers,
                timeout=5,
            )
            assert polled.status_code == 200, polled.text
            if polled.json()["state"] != "in progress":
                break
            assert time.monotonic() < deadline, "the operation never reached a terminal state"
            time.sleep(0.2)
        assert polled.json()["state"] == "succeeded"


def test_testing_module_exports_exactly_its_helpers() -> None:
    """The public surface of servicebay.testing is pinned (CONTRACTS: servicebay.testing)."""
    import servicebay.testing

    assert sorted(servicebay.testing.__all__) == [
        "BrokerClientForTests",
        "ServedBroker",
        "run_broker",
        "serve_broker",
    ]


@pytest.fixture
def helpers_pg_database(postgres_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    name = f"sb_helpers_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.mark.postgres
async def test_run_broker_on_postgresql(helpers_pg_database: str) -> None:
    """Settings naming PostgreSQL (and a key) put the in-process broker's records there."""
    settings = sb.BrokerSettings(
        username="u", password="p", db=helpers_pg_database, key=Fernet.generate_key().decode()
    )
    async with run_broker(TinyBroker(), settings=settings) as tb:
        response = await tb.client.put("/v2/service_instances/pg-1", json=_provision_body())
        assert response.status_code == 201
        assert await tb.store.get_instance("pg-1") is not None
    async with run_broker(TinyBroker(), settings=settings) as again:
        replay = await again.client.put("/v2/service_instances/pg-1", json=_provision_body())
        assert replay.status_code == 200  # the record outlived the first app


@pytest.mark.e2e
def test_served_workers_die_together_and_restart_on_the_same_url() -> None:
    """With workers, kill() takes the whole process group down; restart() serves the same
    URL and database again, records intact."""
    with serve_broker(tiny_broker, workers=2) as served:
        auth = (served.username, served.password)
        headers = {"X-Broker-API-Version": "2.17"}
        instance = f"{served.url}/v2/service_instances/w-1"
        first = httpx.put(instance, json=_provision_body(), auth=auth, headers=headers)
        assert first.status_code == 201
        served.kill()
        with pytest.raises(httpx.HTTPError):
            # Nobody serves the held socket now: the request waits, then times out.
            httpx.get(f"{served.url}/v2/catalog", auth=auth, headers=headers, timeout=1)
        served.restart()
        again = httpx.put(instance, json=_provision_body(), auth=auth, headers=headers)
        assert again.status_code == 200  # the same provision, remembered across the crash
