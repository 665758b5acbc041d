"""The management API client against the machine's real RabbitMQ: typed answers, idempotent
deletes, retries on transient failures, and RabbitMQ's errors as readable OSB errors."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from servicebay import osb
from servicebay.brokers.rabbitmq import ManagementAPI, ManagementAPIError
from servicebay.brokers.rabbitmq._management import Permissions

pytestmark = pytest.mark.rabbitmq


async def test_vhost_round_trip_with_limits_and_queue_type(
    management_api: ManagementAPI, rabbitmq_prefix: str
) -> None:
    """A vhost is created with tags and queue type, its limits set and cleared (one at a time
    and all at once), then deleted."""
    name = rabbitmq_prefix + "orders/eu"  # a '/' must survive as one path segment
    assert await management_api.get_vhost(name) is None
    await management_api.put_vhost(
        name, description="d", tags=("servicebay",), default_queue_type="quorum"
    )
    vhost = await management_api.get_vhost(name)
    assert vhost is not None
    assert (vhost.name, vhost.description, vhost.tags) == (name, "d", ("servicebay",))
    assert vhost.default_queue_type == "quorum"

    await management_api.set_vhost_limit(name, "max-connections", 3)
    await management_api.set_vhost_limit(name, "max-queues", 7)
    assert await management_api.get_vhost_limits(name) == {"max-connections": 3, "max-queues": 7}
    await management_api.clear_vhost_limit(name, "max-queues")
    await management_api.clear_vhost_limit(name, "max-queues")  # absent is fine
    assert await management_api.get_vhost_limits(name) == {"max-connections": 3}
    await management_api.set_vhost_limits(name, {"max-queues": 5, "max-connections": 2})
    assert await management_api.get_vhost_limits(name) == {"max-connections": 2, "max-queues": 5}
    await management_api.set_vhost_limits(name, {"max-queues": 4})  # the other one is cleared
    assert await management_api.get_vhost_limits(name) == {"max-queues": 4}
    await management_api.set_vhost_limits(name, {})
    assert await management_api.get_vhost_limits(name) == {}
    assert await management_api.count_queues(name) == 0

    assert await management_api.delete_vhost(name) is True
    assert await management_api.delete_vhost(name) is False
    assert await management_api.get_vhost(name) is None


async def test_user_and_permissions_round_trip(
    management_api: ManagementAPI, rabbitmq_prefix: str
) -> None:
    """A user gets permissions on one vhost; deleting it twice is not an error."""
    vhost, user = rabbitmq_prefix + "v", rabbitmq_prefix + "u"
    await management_api.put_vhost(vhost)
    await management_api.put_user(user, "pw-1", tags=("management",))
    found = await management_api.get_user(user)
    assert found is not None and found.tags == ("management",)
    assert await management_api.get_permissions(vhost, user) is None

    await management_api.set_permissions(Permissions(user=user, vhost=vhost, read="^r"))
    granted = await management_api.get_permissions(vhost, user)
    assert granted == Permissions(user=user, vhost=vhost, configure=".*", write=".*", read="^r")
    # RabbitMQ also grants the admin who created the vhost full rights on it.
    assert user in [p.user for p in await management_api.list_vhost_permissions(vhost)]
    assert user in {u.name for u in await management_api.list_users()}
    assert await management_api.list_user_connections(user) == []
    await management_api.close_user_connections(user, reason="test")

    assert await management_api.delete_user(user) is True
    assert await management_api.delete_user(user) is False
    assert await management_api.get_user(user) is None


async def test_rabbitmq_rejection_becomes_bad_request_with_its_reason(
    management_api: ManagementAPI, rabbitmq_prefix: str
) -> None:
    """Permissions on a missing vhost: RabbitMQ's 400 becomes BadRequest naming the object."""
    user = rabbitmq_prefix + "u"
    await management_api.put_user(user, "pw")
    with pytest.raises(osb.BadRequest) as caught:
        await management_api.set_permissions(Permissions(user=user, vhost=rabbitmq_prefix + "no"))
    assert "vhost_or_user_not_found" in caught.value.description
    assert user in caught.value.description


async def test_transient_failures_are_retried(
    management_url: str, faulty_transport: Any, rabbitmq_prefix: str
) -> None:
    """A connection error and a 503 are retried; the call then succeeds."""
    failures: list[Exception | int] = [httpx.ConnectError("injected"), 503]

    def fault(request: httpx.Request) -> Exception | int | None:
        return failures.pop(0) if failures else None

    transport = faulty_transport(fault)
    async with ManagementAPI(
        management_url, "guest", "guest", backoff=0.01, transport=transport
    ) as api:
        await api.put_vhost(rabbitmq_prefix + "v")
        assert await api.get_vhost(rabbitmq_prefix + "v") is not None
    assert [m for m, _ in transport.seen].count("PUT") == 3


async def test_persistent_5xx_gives_up_with_readable_error(
    management_url: str, faulty_transport: Any
) -> None:
    """A 5xx on every attempt ends in ManagementAPIError naming the status and the object."""
    transport = faulty_transport(lambda request: 500)
    async with ManagementAPI(
        management_url, "guest", "guest", attempts=3, backoff=0.01, transport=transport
    ) as api:
        with pytest.raises(ManagementAPIError) as caught:
            await api.get_vhost("anything")
    assert caught.value.status == 500
    assert "vhost 'anything'" in caught.value.description
    assert len(transport.seen) == 3
    assert isinstance(caught.value, osb.InternalError)


async def test_unreachable_api_names_the_url_not_the_password(unused_tcp_port: int) -> None:
    """Nothing listening: the error names the URL and attempts, never the credentials."""
    url = f"http://127.0.0.1:{unused_tcp_port}"
    async with ManagementAPI(url, "admin", "s3cret-pw", attempts=2, backoff=0.01) as api:
        with pytest.raises(ManagementAPIError) as caught:
            await api.overview()
    assert caught.value.status is None
    assert url in caught.value.description and "2 attempts" in caught.value.description
    assert "s3cret-pw" not in caught.value.description


async def test_wrong_credentials_are_not_retried(management_url: str) -> None:
    """A 401 is answered at once as a ManagementAPIError saying the credentials were refused."""
    async with ManagementAPI(management_url, "guest", "wrong-password") as api:
        with pytest.raises(ManagementAPIError) as caught:
            await api.whoami()
    assert caught.value.status == 401
    assert "refused" in caught.value.description
    assert "wrong-password" not in caught.value.description
