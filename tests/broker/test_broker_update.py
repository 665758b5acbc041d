"""Updates: plan changes, parameter merges, context and maintenance updates, deprovision."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from test_broker_support import (
    ROTATABLE,
    SERVICE,
    SYNC,
    SampleBroker,
    bind_body,
    ids,
    provision_body,
    running,
)

from servicebay import osb
from servicebay.broker import UpdateDetails

INSTANCE = "/v2/service_instances/i-1"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[SampleBroker, httpx.AsyncClient]]:
    broker = SampleBroker()
    async with running(broker, f"sqlite:///{tmp_path}/broker.db") as client:
        assert (await client.put(INSTANCE, json=provision_body(SYNC, size=2))).status_code == 201
        yield broker, client


def _last_update(broker: SampleBroker) -> UpdateDetails:
    kind, details = broker.calls[-1]
    assert kind == "update"
    assert isinstance(details, UpdateDetails)
    return details


async def test_update_answers_200_with_empty_body(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """A synchronous update answers 200 {} when the author returns nothing new."""
    _, client = env
    response = await client.patch(INSTANCE, json={"service_id": SERVICE})
    assert response.status_code == 200
    assert response.json() == {}


async def test_plan_change_is_applied_and_reported_to_the_author(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """A plan change hands the author the new and previous plan; fetch shows the new one."""
    broker, client = env
    response = await client.patch(INSTANCE, json={"service_id": SERVICE, "plan_id": ROTATABLE})
    assert response.status_code == 200
    details = _last_update(broker)
    assert details.plan.id == ROTATABLE
    assert details.previous_plan is not None
    assert details.previous_plan.id == SYNC
    assert details.plan_changed
    assert (await client.get(INSTANCE)).json()["plan_id"] == ROTATABLE


async def test_update_without_plan_id_keeps_the_plan(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """spec: without plan_id the plan MUST NOT change."""
    broker, client = env
    await client.patch(INSTANCE, json={"service_id": SERVICE, "parameters": {"size": 5}})
    details = _last_update(broker)
    assert details.plan.id == SYNC
    assert details.previous_plan is None
    assert not details.plan_changed
    assert (await client.get(INSTANCE)).json()["plan_id"] == SYNC


async def test_update_parameters_are_merged_into_the_records(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """The author gets only the new parameters plus the previous ones; the records merge them."""
    broker, client = env
    update = {"service_id": SERVICE, "parameters": {"name": "team"}}
    assert (await client.patch(INSTANCE, json=update)).status_code == 200
    details = _last_update(broker)
    assert details.parameters == {"name": "team"}
    assert details.previous_parameters == {"size": 2}
    assert (await client.get(INSTANCE)).json()["parameters"] == {"size": 2, "name": "team"}


async def test_update_without_parameters_keeps_them(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """spec: without parameters the instance's parameters MUST NOT change."""
    _, client = env
    context = {"platform": "servicebay", "namespace": "prod"}
    assert (
        await client.patch(INSTANCE, json={"service_id": SERVICE, "context": context})
    ).status_code == 200
    assert (await client.get(INSTANCE)).json()["parameters"] == {"size": 2}


async def test_context_update_reaches_the_author(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """A context-only update (allow_context_updates) hands the new context to the author."""
    broker, client = env
    context = {"platform": "servicebay", "namespace": "prod", "instance_name": "chat"}
    await client.patch(INSTANCE, json={"service_id": SERVICE, "context": context})
    assert _last_update(broker).context == context


async def test_maintenance_update_with_matching_version_is_accepted(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """An update naming the plan's maintenance version is handed to the author."""
    broker, client = env
    update = {"service_id": SERVICE, "maintenance_info": {"version": "1.2.0"}}
    assert (await client.patch(INSTANCE, json=update)).status_code == 200
    details = _last_update(broker)
    assert details.maintenance_info is not None
    assert details.maintenance_info.version == "1.2.0"


async def test_failed_sync_update_changes_nothing(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """spec: a 4xx/5xx update MUST NOT apply any change."""
    _, client = env
    update = {"service_id": SERVICE, "plan_id": ROTATABLE, "parameters": {"fail": True}}
    assert (await client.patch(INSTANCE, json=update)).status_code == 500
    fetched = (await client.get(INSTANCE)).json()
    assert fetched["plan_id"] == SYNC
    assert fetched["parameters"] == {"size": 2}


async def test_deprovision_answers_200_and_forgets_the_instance(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """A synchronous deprovision answers 200 {} and the instance is gone."""
    broker, client = env
    response = await client.delete(INSTANCE, params=ids())
    assert response.status_code == 200
    assert response.json() == {}
    assert broker.count("deprovision") == 1
    assert (await client.get(INSTANCE)).status_code == 404


async def test_deprovision_of_another_service_is_400(
    env: tuple[SampleBroker, httpx.AsyncClient],
) -> None:
    """A deprovision naming an unknown service is refused; the instance stays."""
    broker, client = env
    response = await client.delete(INSTANCE, params={"service_id": "other", "plan_id": SYNC})
    assert response.status_code == 400
    assert broker.count("deprovision") == 0
    assert (await client.get(INSTANCE)).status_code == 200


async def test_instances_of_a_plan_dropped_from_the_catalog_can_still_be_deleted(
    tmp_path: Path,
) -> None:
    """A plan removed from the catalog leaves its instances fetchable and deletable."""
    db = f"sqlite:///{tmp_path}/b.db"
    async with running(SampleBroker(), db) as client:
        await client.put(INSTANCE, json=provision_body(ROTATABLE, secret="hunter2"))
        await client.put(INSTANCE + "/service_bindings/b-1", json=bind_body(ROTATABLE))

    class Shrunk(SampleBroker):
        catalog = osb.Catalog.model_validate(
            {
                "services": [
                    {
                        **SampleBroker.catalog.services[0].to_wire(),
                        "plans": [SampleBroker.catalog.services[0].plans[0].to_wire()],
                    }
                ]
            }
        )

    shrunk = Shrunk()
    async with running(shrunk, db) as client:
        fetched = await client.get(INSTANCE)
        assert fetched.status_code == 200
        assert "parameters" not in fetched.json()  # nothing says which values are secret
        assert "hunter2" not in fetched.text
        binding = INSTANCE + "/service_bindings/b-1"
        assert (await client.delete(binding, params=ids(ROTATABLE))).status_code == 200
        assert (await client.delete(INSTANCE, params=ids(ROTATABLE))).status_code == 200
        assert (await client.delete(INSTANCE, params=ids(ROTATABLE))).status_code == 410
    assert shrunk.count("unbind") == shrunk.count("deprovision") == 1
