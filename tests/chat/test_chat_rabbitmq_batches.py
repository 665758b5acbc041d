"""The RabbitMQ store's room writer: a batch's check concerns that batch alone. The next batch is
checked in the transaction that records the previous one; a check that fails there must not
take that record back, and an append whose own check fails must fail alone."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from servicebay.chat.stores import Appended, StoreUnavailable
from servicebay.chat.stores.rabbitmq import RabbitMQChatStore
from support import chat_rabbitmq

pytestmark = pytest.mark.rabbitmq

BAD_KEY = "\udfff"  # a lone surrogate: SQLite cannot take it, so its key lookup raises


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[RabbitMQChatStore]:
    """An opened RabbitMQ store with room ``r`` where ann and bob are members."""
    async with chat_rabbitmq.opened_store(tmp_path, "r", ("ann", "bob")) as opened:
        yield opened


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


async def test_a_writer_stopped_by_a_failing_record_answers_every_queued_send(
    store: RabbitMQChatStore,
) -> None:
    """When recording a published batch fails unexpectedly (here the metadata file refuses the
    entry's row: a trigger added from another connection), the room's writer stops and every
    send queued behind it hears 'unavailable' at once (they used to wait for the next send to
    the room). The next send recovers the room: the published batch is adopted, resends get
    their first seqs, nothing is stored twice."""
    assert (await store.append("r", "ann", "a0", "zero")).seq == 1
    refuse = (
        "CREATE TRIGGER refuse BEFORE INSERT ON rmq_entries BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    with sqlite3.connect(store.meta.path) as other:
        other.execute(refuse)
    first = store.append("r", "ann", "a1", "one")
    await asyncio.sleep(0)  # the room's writer starts and takes ann's send alone
    queued = [store.append("r", "bob", "b1", "two"), store.append("r", "ann", "a2", "three")]
    with capture_logs() as logs:
        async with asyncio.timeout(20):
            outcomes = await asyncio.gather(first, *queued, return_exceptions=True)
    assert [type(o) for o in outcomes] == [StoreUnavailable] * 3
    assert [e["event"] for e in logs] == ["chat.rabbitmq.append_failed"]
    with sqlite3.connect(store.meta.path) as other:
        other.execute("DROP TRIGGER refuse")
    async with asyncio.timeout(20):
        again = [
            await store.append("r", "bob", "b1", "two"),
            await store.append("r", "ann", "a1", "one"),
            await store.append("r", "ann", "a2", "three"),
        ]
    assert [(a.seq, a.duplicate) for a in again] == [(3, False), (2, False), (4, False)]
    assert [(m.seq, m.body) for m in await store.read("r", 0)] == [
        (1, "zero"),
        (2, "one"),
        (3, "two"),
        (4, "three"),
    ]


async def test_an_entry_orjson_cannot_encode_is_stored_and_read_back(
    store: RabbitMQChatStore,
) -> None:
    """Entries are encoded with orjson, which refuses a lone surrogate: such a body (the
    protocol never lets one through, a direct caller could) goes through the standard encoder
    and reads back as it was, next to plain ones."""
    bodies = ["plain", "half an emoji: \ud83d", "é and 😀"]
    outcomes = await store.append_many("r", "ann", [(f"k{i}", b) for i, b in enumerate(bodies)])
    assert [o.seq for o in outcomes] == [1, 2, 3]  # type: ignore[union-attr]
    assert [m.body for m in await store.read("r", 0)] == bodies
