"""The RabbitMQ store's room writer: a batch's check concerns that batch alone. The next batch is
checked in the transaction that records the previous one; a check that fails there must not
take that record back, and an append whose own check fails must fail alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from servicebay.chat.stores import Appended, open_store
from servicebay.chat.stores.rabbitmq import RabbitMQChatStore
from support import chat_rabbitmq

pytestmark = pytest.mark.rabbitmq

BAD_KEY = "\udfff"  # a lone surrogate: SQLite cannot take it, so its key lookup raises


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[RabbitMQChatStore]:
    """An opened RabbitMQ store with room ``r`` where ann and bob are members."""
    opened = open_store(chat_rabbitmq.store_url(tmp_path))
    assert isinstance(opened, RabbitMQChatStore)
    await opened.open()
    try:
        await opened.put_room("r")
        for user in ("ann", "bob"):
            await opened.put_user(user)
            await opened.join("r", user)
        yield opened
    finally:
        await opened.close()


async def test_a_failing_check_of_the_next_batch_keeps_the_previous_record(
    store: RabbitMQChatStore,
) -> None:
    """Sends queued while a batch is published form the next batch, checked when that batch is
    recorded: one of them failing its check no longer undoes the record of the published batch
    (its sender used to hear 'unavailable' for a stored message) nor strands the other sends."""
    first = store.append("r", "ann", "a1", "one")
    await asyncio.sleep(0)  # the room's writer starts and takes ann's send alone
    queued = [store.append("r", "bob", BAD_KEY, "bad"), store.append("r", "bob", "b1", "two")]
    async with asyncio.timeout(20):
        outcomes = await asyncio.gather(first, *queued, return_exceptions=True)
    assert store.batches == 2  # ann's send, then bob's good one: the next batch was checked
    assert outcomes[0] == Appended(1, outcomes[0].sent_at, False)  # type: ignore[union-attr]
    assert isinstance(outcomes[1], UnicodeEncodeError)
    assert outcomes[2] == Appended(2, outcomes[2].sent_at, False)  # type: ignore[union-attr]
    assert [(m.seq, m.body) for m in await store.read("r", 0)] == [(1, "one"), (2, "two")]
    assert store.resyncs == 1  # no failed record to find out about
    assert (await store.append("r", "bob", "b2", "three")).seq == 3


async def test_an_append_failing_its_check_fails_alone_in_its_batch(
    store: RabbitMQChatStore,
) -> None:
    """Sends checked together (one batch): the one whose check fails gets its error, the others
    are stored (they all used to fail as 'unavailable' and the room's writer stopped)."""
    async with asyncio.timeout(20):
        outcomes = await asyncio.gather(
            store.append("r", "ann", "a1", "one"),
            store.append("r", "bob", BAD_KEY, "bad"),
            store.append("r", "bob", "b1", "two"),
            return_exceptions=True,
        )
    assert store.batches == 1
    assert [getattr(o, "seq", type(o)) for o in outcomes] == [1, UnicodeEncodeError, 2]
    assert [m.body for m in await store.read("r", 0)] == ["one", "two"]
    async with asyncio.timeout(20):
        assert (await store.append("r", "ann", "a2", "three")).seq == 3
