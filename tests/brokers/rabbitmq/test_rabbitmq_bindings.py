"""Bindings are users: the returned uri alone lets an app publish and consume; credentials
reach one vhost only; unbind revokes at once; retries and rotation never reset a password."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq
import pytest

from servicebay.brokers.rabbitmq import ManagementAPI

pytestmark = pytest.mark.rabbitmq

WELL_KNOWN = {"type", "provider", "host", "port", "username", "password", "vhost", "uri"}


async def test_bound_app_publishes_with_confirms_and_consumes_with_acks(
    osb_session: Any, new_id: Any
) -> None:
    """Using only `uri`, an app declares a queue, publishes confirmed and consumes with acks."""
    instance = new_id()
    assert (await osb_session.provision(instance)).status_code == 201
    credentials = await osb_session.credentials(instance, new_id())

    connection = await aio_pika.connect(credentials["uri"])
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue("work", durable=True)
        for n in range(5):
            confirmation = await channel.default_exchange.publish(
                aio_pika.Message(f"job {n}".encode(), delivery_mode=2), routing_key="work"
            )
            assert isinstance(confirmation, aiormq.spec.Basic.Ack)
        received: list[str] = []
        async with queue.iterator() as messages:
            async for message in messages:
                received.append(message.body.decode())
                await message.ack()
                if len(received) == 5:
                    break
        assert received == [f"job {n}" for n in range(5)]
        assert (await queue.declare()).message_count == 0  # every message acked


async def test_credentials_carry_the_servicebinding_well_known_entries(
    make_broker: Any, serve: Any, new_id: Any, rabbitmq_prefix: str, tmp_path: Any
) -> None:
    """type/provider/host/port/username/password/vhost/uri, the management URL and CA if set."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    broker = make_broker(
        amqp_host="mq.example.org",
        amqps=True,
        amqp_ca_file=str(ca),
        public_management_url="https://mq.example.org:15671",
    )
    instance = new_id()
    async with serve(broker) as osb:
        assert (await osb.provision(instance)).status_code == 201
        credentials = await osb.credentials(instance, new_id())
    assert set(credentials) >= WELL_KNOWN
    assert credentials["type"] == "rabbitmq" and credentials["provider"] == "servicebay"
    assert (credentials["host"], credentials["port"]) == ("mq.example.org", 5671)
    assert credentials["vhost"] == rabbitmq_prefix + instance
    assert credentials["management-uri"] == "https://mq.example.org:15671"
    assert credentials["certificates"] == ca.read_text()
    uri = urlsplit(credentials["uri"])
    assert (uri.scheme, uri.hostname, uri.port) == ("amqps", "mq.example.org", 5671)
    assert unquote(uri.username or "") == credentials["username"]
    assert unquote(uri.password or "") == credentials["password"]
    assert len(credentials["password"]) >= 32


async def test_uri_encodes_a_vhost_with_reserved_characters(
    make_broker: Any, serve: Any, new_id: Any, rabbitmq_prefix: str
) -> None:
    """A prefix with '/', '%', '#' and a space still yields a uri that reaches the vhost."""
    broker = make_broker(prefix=rabbitmq_prefix + "a/b%c#d ")
    instance = new_id()
    async with serve(broker) as osb:
        assert (await osb.provision(instance)).status_code == 201
        credentials = await osb.credentials(instance, new_id())
    assert credentials["vhost"] == rabbitmq_prefix + "a/b%c#d " + instance
    assert "%2F" in credentials["uri"] and "%25" in credentials["uri"]
    connection = await aio_pika.connect(credentials["uri"])
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue("probe", auto_delete=True)


async def test_retried_bind_returns_the_same_credentials_and_they_keep_working(
    osb_session: Any, new_id: Any
) -> None:
    """The same bind again answers 200 with identical credentials; the first login still works."""
    instance, binding = new_id(), new_id()
    assert (await osb_session.provision(instance)).status_code == 201
    first = await osb_session.bind(instance, binding)
    assert first.status_code == 201
    connection = await aio_pika.connect(first.json()["credentials"]["uri"])
    async with connection:
        again = await osb_session.bind(instance, binding)
        assert again.status_code == 200
        assert again.json()["credentials"] == first.json()["credentials"]
        assert not connection.is_closed
        channel = await connection.channel()  # the connection is still usable
        await channel.declare_queue("still-here", auto_delete=True)
    # and a new login with the same password still succeeds: nothing was reset
    await (await aio_pika.connect(first.json()["credentials"]["uri"])).close()


async def test_unbind_closes_open_connections_and_refuses_new_logins(
    osb_session: Any, new_id: Any, management_api: ManagementAPI
) -> None:
    """After unbind the user's open connection is closed by RabbitMQ and a new login fails."""
    instance, binding = new_id(), new_id()
    assert (await osb_session.provision(instance)).status_code == 201
    credentials = await osb_session.credentials(instance, binding)
    connection = await aio_pika.connect(credentials["uri"])
    closed = asyncio.Event()
    connection.close_callbacks.add(lambda *_: closed.set())

    response = await osb_session.unbind(instance, binding)
    assert response.status_code == 200, response.text
    await asyncio.wait_for(closed.wait(), timeout=10)
    assert await management_api.get_user(credentials["username"]) is None
    with pytest.raises(aiormq.exceptions.ProbableAuthenticationError):
        await aio_pika.connect(credentials["uri"])


async def test_credentials_of_one_instance_cannot_touch_another(
    osb_session: Any, new_id: Any, rabbitmq_prefix: str
) -> None:
    """A's user cannot open B's vhost, so it can neither read nor write anything of B."""
    a, b = new_id(), new_id()
    for inst in (a, b):
        assert (await osb_session.provision(inst)).status_code == 201
    creds_a = await osb_session.credentials(a, new_id())
    creds_b = await osb_session.credentials(b, new_id())

    # B has a queue with a message in it.
    conn_b = await aio_pika.connect(creds_b["uri"])
    async with conn_b:
        channel = await conn_b.channel()
        await channel.declare_queue("secrets", durable=True)
        await channel.default_exchange.publish(aio_pika.Message(b"B only"), routing_key="secrets")

    # A's user against B's vhost: refused at connection.open.
    uri_a_on_b = creds_a["uri"].rsplit("/", 1)[0] + "/" + creds_b["uri"].rsplit("/", 1)[1]
    assert uri_a_on_b != creds_a["uri"]
    # RabbitMQ answers connection.open with connection.close (NOT_ALLOWED: access refused).
    with pytest.raises(aiormq.exceptions.AMQPError):
        await aio_pika.connect(uri_a_on_b)
    # A's own vhost has no trace of B's queue.
    conn_a = await aio_pika.connect(creds_a["uri"])
    async with conn_a:
        channel = await conn_a.channel()
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
            await channel.declare_queue("secrets", passive=True)
    # B's message is still there, unread.
    conn_b = await aio_pika.connect(creds_b["uri"])
    async with conn_b:
        channel = await conn_b.channel()
        queue = await channel.declare_queue("secrets", passive=True)
        assert queue.declaration_result.message_count == 1


async def test_rotation_creates_a_new_user_and_keeps_the_old_one_until_unbound(
    osb_session: Any, new_id: Any, management_api: ManagementAPI
) -> None:
    """A bind with predecessor_binding_id gets new credentials; the old ones work until unbind."""
    instance, old, new = new_id(), new_id(), new_id()
    assert (await osb_session.provision(instance)).status_code == 201
    old_creds = await osb_session.credentials(instance, old)
    response = await osb_session.bind(instance, new, predecessor=old)
    assert response.status_code == 201, response.text
    new_creds = response.json()["credentials"]
    assert new_creds["username"] != old_creds["username"]
    assert new_creds["password"] != old_creds["password"]
    for creds in (old_creds, new_creds):
        await (await aio_pika.connect(creds["uri"])).close()

    assert (await osb_session.unbind(instance, old)).status_code == 200
    assert await management_api.get_user(old_creds["username"]) is None
    await (await aio_pika.connect(new_creds["uri"])).close()


async def test_fetch_binding_reports_a_user_removed_behind_the_brokers_back(
    osb_session: Any, new_id: Any, management_api: ManagementAPI
) -> None:
    """GET binding answers the credentials while RabbitMQ has the user, 404 once it does not."""
    instance, binding = new_id(), new_id()
    assert (await osb_session.provision(instance)).status_code == 201
    credentials = await osb_session.credentials(instance, binding)
    fetched = await osb_session.fetch_binding(instance, binding)
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["credentials"] == credentials
    await management_api.delete_user(credentials["username"])
    assert (await osb_session.fetch_binding(instance, binding)).status_code == 404


async def test_concurrent_binds_and_unbinds_on_one_instance(
    osb_session: Any, new_id: Any, rabbitmq_prefix: str, rabbitmq_names: Any
) -> None:
    """Eight binds at once: eight users, each able to log in; eight unbinds at once: none left."""
    instance = new_id()
    assert (await osb_session.provision(instance)).status_code == 201
    bindings = [new_id() for _ in range(8)]
    answers = await asyncio.gather(*(osb_session.bind(instance, b) for b in bindings))
    assert [a.status_code for a in answers] == [201] * 8
    credentials = [a.json()["credentials"] for a in answers]
    assert len({c["username"] for c in credentials}) == 8
    for creds in credentials:
        await (await aio_pika.connect(creds["uri"])).close()

    answers = await asyncio.gather(*(osb_session.unbind(instance, b) for b in bindings))
    assert [a.status_code for a in answers] == [200] * 8
    assert rabbitmq_names(rabbitmq_prefix) == {rabbitmq_prefix + instance}
