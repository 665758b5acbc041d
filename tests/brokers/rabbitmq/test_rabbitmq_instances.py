"""Service instances are vhosts: provision applies limits and queue type, update changes the
limits, fetch reports what RabbitMQ has, deprovision leaves no vhost and no user behind."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aio_pika
import httpx
import pytest

from servicebay.brokers.rabbitmq import ManagementAPI

pytestmark = pytest.mark.rabbitmq


async def test_provision_creates_vhost_with_limits_and_queue_type(
    osb_session: Any, new_id: Any, rabbitmq_prefix: str, management_api: ManagementAPI
) -> None:
    """A provisioned instance is a vhost whose limits and default queue type RabbitMQ holds."""
    instance = new_id()
    response = await osb_session.provision(
        instance, "shared", max_connections=7, default_queue_type="quorum"
    )
    assert response.status_code == 201, response.text
    vhost = await management_api.get_vhost(rabbitmq_prefix + instance)
    assert vhost is not None and vhost.default_queue_type == "quorum"
    assert await management_api.get_vhost_limits(vhost.name) == {
        "max-connections": 7,
        "max-queues": 100,  # the plan's default
    }


async def test_default_queue_type_applies_to_queues_declared_without_one(
    osb_session: Any, new_id: Any, rabbitmq_prefix: str, management_url: str
) -> None:
    """A queue declared with no x-queue-type in a `quorum` instance is a quorum queue."""
    instance = new_id()
    assert (await osb_session.provision(instance, default_queue_type="quorum")).status_code == 201
    credentials = await osb_session.credentials(instance, new_id())
    connection = await aio_pika.connect(credentials["uri"])
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue("orders", durable=True)
    async with httpx.AsyncClient(auth=("guest", "guest")) as admin:
        vhost = quote(rabbitmq_prefix + instance, safe="")
        response = await admin.get(f"{management_url}/api/queues/{vhost}/orders")
    assert response.json()["type"] == "quorum"


async def test_update_changes_limits_and_fetch_reports_rabbitmq_state(
    osb_session: Any, new_id: Any, rabbitmq_prefix: str, management_api: ManagementAPI
) -> None:
    """PATCH changes the vhost limits; GET reports RabbitMQ's values, even changed behind it."""
    instance = new_id()
    assert (await osb_session.provision(instance, max_queues=50)).status_code == 201
    response = await osb_session.update(instance, max_connections=3)
    assert response.status_code == 200, response.text
    vhost = rabbitmq_prefix + instance
    assert await management_api.get_vhost_limits(vhost) == {
        "max-connections": 3,
        "max-queues": 50,
    }
    # An operator changes a limit by hand: fetch shows RabbitMQ's truth, not the records.
    await management_api.set_vhost_limit(vhost, "max-queues", 42)
    fetched = await osb_session.fetch_instance(instance)
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["parameters"] == {
        "max_connections": 3,
        "max_queues": 42,
        "default_queue_type": "classic",
    }


async def test_plan_change_lowers_limits_to_the_new_plans_maximum(
    osb_session: Any, new_id: Any, rabbitmq_prefix: str, management_api: ManagementAPI
) -> None:
    """standard → limited keeps what fits and lowers what does not to limited's maxima."""
    instance = new_id()
    assert (await osb_session.provision(instance, max_connections=4)).status_code == 201
    response = await osb_session.update(instance, plan="limited")
    assert response.status_code == 200, response.text
    assert await management_api.get_vhost_limits(rabbitmq_prefix + instance) == {
        "max-connections": 4,
        "max-queues": 20,
    }


async def test_queue_type_cannot_change_after_provision(
    osb_session: Any, new_id: Any, rabbitmq_prefix: str, management_api: ManagementAPI
) -> None:
    """Asking for another default queue type is refused with 400 and changes nothing."""
    instance = new_id()
    assert (await osb_session.provision(instance, default_queue_type="stream")).status_code == 201
    response = await osb_session.update(instance, default_queue_type="quorum", max_queues=9)
    assert response.status_code == 400
    assert "default_queue_type cannot change" in response.json()["description"]
    vhost = await management_api.get_vhost(rabbitmq_prefix + instance)
    assert vhost is not None and vhost.default_queue_type == "stream"
    limits = await management_api.get_vhost_limits(rabbitmq_prefix + instance)
    assert limits["max-queues"] != 9


async def test_deprovision_leaves_no_vhost_and_no_user(
    osb_session: Any, new_id: Any, rabbitmq_prefix: str, rabbitmq_names: Any
) -> None:
    """Deprovision deletes the vhost and every user of its bindings, even unbound ones."""
    instance, other = new_id(), new_id()
    for inst in (instance, other):
        assert (await osb_session.provision(inst)).status_code == 201
    for _ in range(3):
        await osb_session.credentials(instance, new_id())
    kept = await osb_session.credentials(other, new_id())
    assert len(rabbitmq_names(rabbitmq_prefix)) == 2 + 3 + 1

    # The platform would unbind first; the broker must not leave users behind if it does not.
    response = await osb_session.deprovision(instance)
    assert response.status_code == 200, response.text
    assert rabbitmq_names(rabbitmq_prefix) == {rabbitmq_prefix + other, kept["username"]}


async def test_fetch_of_an_instance_gone_from_rabbitmq_is_404(
    osb_session: Any, new_id: Any, rabbitmq_prefix: str, management_api: ManagementAPI
) -> None:
    """If the vhost was deleted behind the broker's back, fetch says so instead of guessing."""
    instance = new_id()
    assert (await osb_session.provision(instance)).status_code == 201
    await management_api.delete_vhost(rabbitmq_prefix + instance)
    response = await osb_session.fetch_instance(instance)
    assert response.status_code == 404
    assert "does not exist in RabbitMQ" in response.json()["description"]
