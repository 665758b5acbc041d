"""The client against a real ``bay broker serve`` process over a real socket (e2e)."""

import asyncio

import pytest

from servicebay import osb
from servicebay.client import BrokerClient, BrokerError, PollingPolicy, RequestKind
from servicebay.examples.sandbox import SERVICE_ID, plan_id
from servicebay.testing import ServedBroker, serve_broker

pytestmark = pytest.mark.e2e


async def _lifecycle(served: ServedBroker) -> None:
    policy = PollingPolicy(initial=0.05, maximum=0.25, retry_after_cap=0.25)
    async with BrokerClient(
        served.url, username=served.username, password=served.password, polling=policy, timeout=10
    ) as client:
        catalog = await client.catalog()
        assert catalog.find_service(SERVICE_ID) is not None
        pid = plan_id("async")
        request = osb.ProvisionRequest(
            service_id=SERVICE_ID, plan_id=pid, parameters={"delay_seconds": 0.2}
        )
        started = await client.provision("e2e-inst", request)
        assert started.is_async
        final = await client.poll(
            "e2e-inst", started.operation, kind=RequestKind.PROVISION,
            service_id=SERVICE_ID, plan_id=pid, maximum_polling_duration=60,
        )  # fmt: skip
        assert final.state is osb.OperationState.SUCCEEDED
        sync = plan_id("sync")
        bind = osb.BindRequest(service_id=SERVICE_ID, plan_id=sync)
        await client.provision(
            "e2e-sync", osb.ProvisionRequest(service_id=SERVICE_ID, plan_id=sync)
        )
        bound = await client.bind("e2e-sync", "e2e-bind", bind)
        assert bound.status == 201 and bound.body.credentials
        assert (await client.unbind("e2e-sync", "e2e-bind", SERVICE_ID, sync)).status == 200
        assert (await client.deprovision("e2e-sync", SERVICE_ID, sync)).status == 200
    async with BrokerClient(served.url, username=served.username, password="wrong") as intruder:
        with pytest.raises(BrokerError) as info:
            await intruder.catalog()
        assert isinstance(info.value.error, osb.Unauthorized)


def test_client_drives_a_served_sandbox_broker() -> None:
    """Catalog, async provision polled to success, sync bind/unbind/deprovision, 401."""
    with serve_broker("servicebay.examples.sandbox:broker") as served:
        asyncio.run(_lifecycle(served))
