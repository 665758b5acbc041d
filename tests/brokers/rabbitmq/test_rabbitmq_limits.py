"""A plan's limits are enforced by RabbitMQ itself, not only checked by the broker."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import aiormq
import pytest

pytestmark = pytest.mark.rabbitmq


async def connect_within(uri: str, seconds: float) -> aio_pika.abc.AbstractConnection:
    """Connect, retrying while RabbitMQ still counts a connection that was just closed."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        try:
            return await aio_pika.connect(uri)
        except aiormq.exceptions.AMQPError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_third_connection_is_refused_with_max_connections_2(
    osb_session: Any, new_id: Any
) -> None:
    """max_connections=2: two connections open, RabbitMQ refuses the third; one closes, it fits."""
    instance = new_id()
    response = await osb_session.provision(instance, "limited", max_connections=2)
    assert response.status_code == 201, response.text
    uri = (await osb_session.credentials(instance, new_id()))["uri"]

    first, second = await aio_pika.connect(uri), await aio_pika.connect(uri)
    try:
        # RabbitMQ answers connection.open with connection.close ("connection limit reached").
        with pytest.raises(aiormq.exceptions.AMQPError):
            await aio_pika.connect(uri)
        await first.close()
        third = await connect_within(uri, seconds=10)  # room again once one closed
        await third.close()
    finally:
        for connection in (first, second):
            await connection.close()


async def test_queue_beyond_max_queues_is_refused(osb_session: Any, new_id: Any) -> None:
    """max_queues=2: RabbitMQ refuses to declare a third queue in the vhost."""
    instance = new_id()
    assert (await osb_session.provision(instance, "limited", max_queues=2)).status_code == 201
    uri = (await osb_session.credentials(instance, new_id()))["uri"]
    connection = await aio_pika.connect(uri)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue("q1")
        await channel.declare_queue("q2")
        with pytest.raises(aiormq.exceptions.AMQPError) as refused:
            await channel.declare_queue("q3")
        assert "queue limit" in str(refused.value)


async def test_lowered_limit_applies_to_new_connections_at_once(
    osb_session: Any, new_id: Any
) -> None:
    """An update to max_connections=1 refuses a second connection right after the update."""
    instance = new_id()
    assert (await osb_session.provision(instance, "limited")).status_code == 201
    uri = (await osb_session.credentials(instance, new_id()))["uri"]
    connection = await aio_pika.connect(uri)
    async with connection:
        assert (await osb_session.update(instance, max_connections=1)).status_code == 200
        with pytest.raises(aiormq.exceptions.AMQPError):
            await aio_pika.connect(uri)
