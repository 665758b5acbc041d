"""Interrupted operations end right with nothing left behind.

Two kinds of interruption: RabbitMQ failing half-way (injected at the management API's
transport) — the operation answers 500, takes back what it created, and its retry succeeds;
and a broker killed half-way — RabbitMQ keeps what was done so far (a vhost without limits, a
user without permissions), and the retry, or deprovision, converges on it.
"""

from __future__ import annotations

import gc
from typing import Any

import aio_pika
import httpx
import pytest

from servicebay.brokers.rabbitmq import ManagementAPI, user_name

pytestmark = pytest.mark.rabbitmq


def failing(method: str, path_part: str) -> Any:
    """A fault that answers 503 to every `method` request whose path contains `path_part`."""

    def fault(request: httpx.Request) -> int | None:
        return 503 if request.method == method and path_part in request.url.path else None

    return fault


async def test_provision_failing_half_way_leaves_nothing_and_its_retry_succeeds(
    make_broker: Any,
    serve: Any,
    faulty_transport: Any,
    new_id: Any,
    rabbitmq_prefix: str,
    rabbitmq_names: Any,
    management_api: ManagementAPI,
) -> None:
    """Limits failing after the vhost exists → 500 naming the step, vhost taken back; retry ok."""
    instance = new_id()
    broken = make_broker(transport=faulty_transport(failing("PUT", "/vhost-limits/")))
    async with serve(broken) as osb:
        response = await osb.provision(instance, max_connections=3)
        assert response.status_code == 500, response.text
        assert "limits of vhost" in response.json()["description"]
        # spec: orphan mitigation — the platform deprovisions; nothing is left to find.
        assert (await osb.deprovision(instance)).status_code == 410
    assert rabbitmq_names(rabbitmq_prefix) == set()

    async with serve(make_broker()) as osb:  # the platform retries with RabbitMQ healthy
        response = await osb.provision(instance, max_connections=3)
        assert response.status_code == 201, response.text
    assert await management_api.get_vhost_limits(rabbitmq_prefix + instance) == {
        "max-connections": 3,
        "max-queues": 1000,
    }


async def test_provision_finishes_a_vhost_left_by_a_killed_attempt(
    osb_session: Any, new_id: Any, rabbitmq_prefix: str, management_api: ManagementAPI
) -> None:
    """A vhost created without its limits (the broker died then) gets them on the retry."""
    instance = new_id()
    vhost = rabbitmq_prefix + instance
    await management_api.put_vhost(vhost, default_queue_type="quorum")  # what the crash left
    response = await osb_session.provision(instance, default_queue_type="quorum", max_queues=5)
    assert response.status_code == 201, response.text
    assert await management_api.get_vhost_limits(vhost) == {
        "max-connections": 1000,
        "max-queues": 5,
    }


async def test_leftover_vhost_with_another_queue_type_is_recreated_when_empty(
    osb_session: Any, new_id: Any, rabbitmq_prefix: str, management_api: ManagementAPI
) -> None:
    """An empty vhost left by an earlier attempt with other parameters is made right."""
    instance = new_id()
    await management_api.put_vhost(rabbitmq_prefix + instance, default_queue_type="classic")
    response = await osb_session.provision(instance, default_queue_type="quorum")
    assert response.status_code == 201, response.text
    vhost = await management_api.get_vhost(rabbitmq_prefix + instance)
    assert vhost is not None and vhost.default_queue_type == "quorum"


async def test_bind_failing_half_way_leaves_no_user_and_its_retry_succeeds(
    make_broker: Any,
    serve: Any,
    faulty_transport: Any,
    new_id: Any,
    rabbitmq_prefix: str,
    rabbitmq_names: Any,
) -> None:
    """Permissions failing after the user exists → 500, user taken back; the retry's
    credentials work and RabbitMQ holds exactly one user for the binding."""
    instance, binding = new_id(), new_id()
    async with serve(make_broker()) as osb:
        assert (await osb.provision(instance)).status_code == 201
    broken = make_broker(transport=faulty_transport(failing("PUT", "/permissions/")))
    async with serve(broken) as osb:
        assert (await osb.bind(instance, binding)).status_code == 500
        assert (await osb.unbind(instance, binding)).status_code == 410  # orphan mitigation
    assert rabbitmq_names(rabbitmq_prefix) == {rabbitmq_prefix + instance}

    async with serve(make_broker()) as osb:
        response = await osb.bind(instance, binding)
        assert response.status_code == 201, response.text
        credentials = response.json()["credentials"]
    assert rabbitmq_names(rabbitmq_prefix) == {rabbitmq_prefix + instance, credentials["username"]}
    await (await aio_pika.connect(credentials["uri"])).close()


async def test_bind_finishes_a_user_left_by_a_killed_attempt(
    osb_session: Any, new_id: Any, rabbitmq_prefix: str, rabbitmq_names: Any
) -> None:
    """A user created without permissions (the broker died then) is completed by the retry;
    the password no one ever received is replaced."""
    instance, binding = new_id(), new_id()
    assert (await osb_session.provision(instance)).status_code == 201
    username = user_name(rabbitmq_prefix, instance, binding)
    async with httpx.AsyncClient(auth=("guest", "guest")) as admin:
        leftover = await admin.put(
            f"http://127.0.0.1:15672/api/users/{username}", json={"password": "lost", "tags": ""}
        )
        assert leftover.status_code == 201
    credentials = await osb_session.credentials(instance, binding)
    assert credentials["username"] == username
    assert rabbitmq_names(rabbitmq_prefix) == {rabbitmq_prefix + instance, username}
    await (await aio_pika.connect(credentials["uri"])).close()


async def test_failed_rollback_leaves_a_user_that_deprovision_still_removes(
    make_broker: Any,
    serve: Any,
    faulty_transport: Any,
    new_id: Any,
    rabbitmq_prefix: str,
    rabbitmq_names: Any,
) -> None:
    """RabbitMQ failing the bind and its rollback leaves a user without rights; deprovision
    finds it by name with the bound users and the vhost, and leaves nothing."""
    instance = new_id()
    async with serve(make_broker()) as osb:
        assert (await osb.provision(instance)).status_code == 201
        await osb.credentials(instance, new_id())

    def fault(request: httpx.Request) -> int | None:
        path = request.url.path
        broken = (request.method == "PUT" and "/permissions/" in path) or (
            request.method == "DELETE" and "/users/" in path
        )
        return 503 if broken else None

    async with serve(make_broker(transport=faulty_transport(fault))) as osb:
        assert (await osb.bind(instance, new_id())).status_code == 500
    assert len(rabbitmq_names(rabbitmq_prefix)) == 3  # vhost, bound user, half-created user

    async with serve(make_broker()) as osb:
        assert (await osb.deprovision(instance)).status_code == 200
    assert rabbitmq_names(rabbitmq_prefix) == set()


async def test_broker_refuses_to_start_when_rabbitmq_refuses_its_credentials(
    make_broker: Any, serve: Any
) -> None:
    """Wrong admin password: the app's start-up fails with a message naming the cause."""
    broker = make_broker(management_password="certainly-wrong")
    with pytest.raises(Exception, match="refused user 'guest'") as caught:
        async with serve(broker):
            pass
    message = str(caught.value)
    assert "certainly-wrong" not in message
    # The failed lifespan task's exception is reported by its finalizer; let it run now, not in
    # the middle of some later compile() (CPython 3.11 then raises "AST constructor recursion
    # depth mismatch"). The traceback kept by `caught` holds the task alive until dropped.
    del caught
    gc.collect()
