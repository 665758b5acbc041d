"""The client against the real sandbox broker app (SDK + durable store), in-process.

Everything goes through public surfaces: ``servicebay.testing.run_broker`` runs the app with
its lifespan, and the client reaches it through a transport that forwards to the test client.
"""

from collections.abc import AsyncIterator

import httpx
import pytest

from servicebay import osb
from servicebay.client import (
    BrokerClient,
    BrokerError,
    OrphanMitigation,
    PollingPolicy,
    RequestKind,
    orphan_mitigation,
)
from servicebay.examples.sandbox import SERVICE_ID, SandboxBroker, plan_id
from servicebay.testing import run_broker

FAST = PollingPolicy(initial=0.05, factor=1.5, maximum=0.2, retry_after_cap=0.2)


class _ViaTestClient(httpx.AsyncBaseTransport):
    """Forwards each request to the in-process app through run_broker's client."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._client.send(request)
        content = await response.aread()
        return httpx.Response(response.status_code, headers=response.headers, content=content)


@pytest.fixture
async def sandbox() -> AsyncIterator[BrokerClient]:
    """A BrokerClient talking to a fresh sandbox broker."""
    async with run_broker(SandboxBroker()) as tb:
        settings = tb.settings
        assert settings.username is not None and settings.password is not None
        client = BrokerClient(
            tb.url,
            username=settings.username,
            password=settings.password,
            transport=_ViaTestClient(tb.client),
            polling=FAST,
            originating_identity=osb.OriginatingIdentity(
                platform="servicebay", value={"username": "tester"}
            ),
        )
        async with client:
            yield client


def _provision(plan: str, **parameters: object) -> osb.ProvisionRequest:
    return osb.ProvisionRequest(
        service_id=SERVICE_ID,
        plan_id=plan_id(plan),
        context={"platform": "servicebay", "namespace": "test"},
        parameters=dict(parameters) or None,
    )


def _bind(plan: str, **parameters: object) -> osb.BindRequest:
    return osb.BindRequest(
        service_id=SERVICE_ID,
        plan_id=plan_id(plan),
        bind_resource=osb.BindResource(app_guid="chat"),
        parameters=dict(parameters) or None,
    )


async def test_catalog_of_the_sandbox_parses(sandbox: BrokerClient) -> None:
    """The sandbox catalog is a valid typed Catalog with its plans."""
    catalog = await sandbox.catalog()
    service = catalog.find_service(SERVICE_ID)
    assert service is not None and service.name == "sandbox"
    assert {p.name for p in service.plans} >= {"sync", "async", "param"}
    assert (await sandbox.catalog()) == catalog


async def test_sync_lifecycle_with_idempotent_retries(sandbox: BrokerClient) -> None:
    """Provision, bind, fetch, unbind, deprovision; retries answer 200 with the same body."""
    created = await sandbox.provision("inst-sync", _provision("sync"))
    assert created.status == 201
    again = await sandbox.provision("inst-sync", _provision("sync"))
    assert again.status == 200 and again.body == created.body

    bound = await sandbox.bind("inst-sync", "bind-1", _bind("sync"))
    assert bound.status == 201
    credentials = bound.body.credentials
    assert credentials is not None and credentials["password"]
    rebound = await sandbox.bind("inst-sync", "bind-1", _bind("sync"))
    assert rebound.status == 200 and rebound.body.credentials == credentials

    fetched = await sandbox.fetch_binding("inst-sync", "bind-1", SERVICE_ID, plan_id("sync"))
    assert fetched.credentials == credentials
    instance = await sandbox.fetch_instance("inst-sync", SERVICE_ID, plan_id("sync"))
    assert instance.plan_id == plan_id("sync")

    unbound = await sandbox.unbind("inst-sync", "bind-1", SERVICE_ID, plan_id("sync"))
    assert unbound.status == 200
    gone = await sandbox.unbind("inst-sync", "bind-1", SERVICE_ID, plan_id("sync"))
    assert gone.gone
    deleted = await sandbox.deprovision("inst-sync", SERVICE_ID, plan_id("sync"))
    assert deleted.status == 200
    assert (await sandbox.deprovision("inst-sync", SERVICE_ID, plan_id("sync"))).gone


async def test_async_lifecycle_is_polled_to_the_end(sandbox: BrokerClient) -> None:
    """Async plan: every 202 is polled to success; the binding is fetched afterwards."""
    pid = plan_id("async")
    seen: list[str | None] = []
    started = await sandbox.provision("inst-async", _provision("async", delay_seconds=0.2))
    assert started.is_async
    final = await sandbox.poll(
        "inst-async",
        started.operation,
        kind=RequestKind.PROVISION,
        service_id=SERVICE_ID,
        plan_id=pid,
        maximum_polling_duration=30,
        on_progress=lambda answer: seen.append(answer.description),
    )
    assert final.state is osb.OperationState.SUCCEEDED
    assert seen, "progress descriptions were reported"

    binding = await sandbox.bind("inst-async", "bind-a", _bind("async", delay_seconds=0.2))
    assert binding.is_async and binding.body.credentials is None
    done = await sandbox.poll(
        "inst-async", binding.operation, kind=RequestKind.BIND, binding_id="bind-a",
        service_id=SERVICE_ID, plan_id=pid, maximum_polling_duration=30,
    )  # fmt: skip
    assert done.state is osb.OperationState.SUCCEEDED
    fetched = await sandbox.fetch_binding("inst-async", "bind-a", SERVICE_ID, pid)
    assert fetched.credentials is not None and fetched.credentials["username"]

    unbinding = await sandbox.unbind("inst-async", "bind-a", SERVICE_ID, pid)
    assert unbinding.is_async
    unbound = await sandbox.poll(
        "inst-async", unbinding.operation, kind=RequestKind.UNBIND, binding_id="bind-a",
        service_id=SERVICE_ID, plan_id=pid, maximum_polling_duration=30,
    )  # fmt: skip
    assert unbound.state is osb.OperationState.SUCCEEDED

    deleting = await sandbox.deprovision("inst-async", SERVICE_ID, pid)
    assert deleting.is_async
    gone = await sandbox.poll(
        "inst-async", deleting.operation, kind=RequestKind.DEPROVISION,
        service_id=SERVICE_ID, plan_id=pid, maximum_polling_duration=30,
    )  # fmt: skip
    assert gone.state is osb.OperationState.SUCCEEDED


async def test_failed_async_provision_is_orphan_mitigated(sandbox: BrokerClient) -> None:
    """A failed async provision calls for instance mitigation, which the broker confirms."""
    pid = plan_id("async")
    started = await sandbox.provision("inst-fail", _provision("async", delay_seconds=0, fail=True))
    final = await sandbox.poll(
        "inst-fail", started.operation, service_id=SERVICE_ID, plan_id=pid,
        maximum_polling_duration=30,
    )  # fmt: skip
    assert final.state is osb.OperationState.FAILED
    mitigation = orphan_mitigation(RequestKind.PROVISION, 200, state=final.state)
    assert mitigation is OrphanMitigation.INSTANCE
    assert await sandbox.mitigate_orphan(mitigation, "inst-fail", SERVICE_ID, pid)


async def test_failed_sync_provision_is_a_500_needing_mitigation(sandbox: BrokerClient) -> None:
    """fail=true on a sync plan: 500, instance mitigation, confirmed by the broker."""
    with pytest.raises(BrokerError) as info:
        await sandbox.provision("inst-500", _provision("sync", fail=True))
    assert info.value.status == 500
    assert info.value.mitigation is OrphanMitigation.INSTANCE
    assert await sandbox.mitigate_orphan(
        info.value.mitigation, "inst-500", SERVICE_ID, plan_id("sync")
    )


async def test_broker_errors_arrive_typed(sandbox: BrokerClient) -> None:
    """Schema violations are 400 naming the field; async-only plans demand accepts_incomplete."""
    with pytest.raises(BrokerError) as bad:
        await sandbox.provision("inst-bad", _provision("param", size=50))
    assert isinstance(bad.value.error, osb.BadRequest)
    assert "size" in bad.value.error.description
    assert bad.value.mitigation is OrphanMitigation.NONE
    with pytest.raises(BrokerError) as sync_only:
        await sandbox.provision("inst-x", _provision("async"), accepts_incomplete=False)
    assert isinstance(sync_only.value.error, osb.AsyncRequired)
    with pytest.raises(BrokerError) as missing:
        await sandbox.fetch_instance("no-such-instance")
    assert isinstance(missing.value.error, osb.NotFound)


async def test_update_rotation_and_maintenance_info(sandbox: BrokerClient) -> None:
    """Update changes plan and parameters; rotation binds a successor; stale
    maintenance_info is MaintenanceInfoConflict."""
    await sandbox.provision("inst-upd", _provision("sync", size=2))
    updated = await sandbox.update(
        "inst-upd",
        osb.UpdateRequest(
            service_id=SERVICE_ID,
            plan_id=plan_id("rotatable"),
            parameters={"size": 3},
            previous_values=osb.PreviousValues(plan_id=plan_id("sync")),
        ),
    )
    assert updated.status == 200
    instance = await sandbox.fetch_instance("inst-upd")
    assert instance.plan_id == plan_id("rotatable")

    first = await sandbox.bind("inst-upd", "old", _bind("rotatable"))
    successor = osb.BindRequest(
        service_id=SERVICE_ID, plan_id=plan_id("rotatable"), predecessor_binding_id="old"
    )
    rotated = await sandbox.bind("inst-upd", "new", successor)
    assert rotated.status == 201 and rotated.body.credentials
    assert first.body.credentials != rotated.body.credentials

    stale = osb.ProvisionRequest(
        service_id=SERVICE_ID,
        plan_id=plan_id("sync"),
        maintenance_info=osb.MaintenanceInfo(version="0.0.1"),
    )
    with pytest.raises(BrokerError) as info:
        await sandbox.provision("inst-stale", stale)
    assert isinstance(info.value.error, osb.MaintenanceInfoConflict)
    assert info.value.mitigation is OrphanMitigation.NONE
