"""The RabbitMQ side of the RabbitMQ chat store: one connection, confirmed publishes, stream reads.

Where it sits: ``stores.rabbitmq`` decides what to write and read; this module talks AMQP 0-9-1
through aio-pika. A stream (``x-queue-type: stream``) entry is one persistent AMQP message,
published on a channel in confirm mode, that holds a run of consecutive chat messages (a *packed
entry*: headers ``seq`` = the first seq and ``count``, body a JSON array of ``[sender, key, body,
sent_at]``), or a resync marker. Reads are short-lived stream consumers with manual acks that
start at an offset and unpack entries into messages. Any AMQP failure becomes
``StoreUnavailable`` here, in one place; the connection is re-established on the next call (at
most one attempt at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aiormq.exceptions import ChannelLockedResource  # aio-pika's own AMQP layer

from servicebay.chat.stores.base import StoreUnavailable

# A refused connection is retried at most this often, so an outage does not turn every request
# into a connection attempt.
RECONNECT_PAUSE = 0.25
READ_CHANNELS = 8


@dataclass(frozen=True)
class Entry:
    """One chat message as read back (``offset``: its stream entry's), or a resync marker."""

    offset: int
    seq: int
    sender: str
    key: str
    body: str
    sent_at: float
    marker: str


def chat_entry(first_seq: int, messages: list[tuple[str, str, str, float]]) -> aio_pika.Message:
    """The AMQP message that stores consecutive chat messages from ``first_seq`` on.

    ``messages`` are ``(sender, key, body, sent_at)``. One entry per batch rather than one per
    message: a confirmed publish costs ~0.7 ms of our CPU and ~0.5 ms of RabbitMQ's on the
    development machine, whatever its size (docs/chat-rabbitmq.md, "Speed").
    """
    headers: dict[str, Any] = {"seq": first_seq, "count": len(messages)}
    try:
        body = orjson.dumps(messages)
    except orjson.JSONEncodeError:  # a string orjson refuses (a lone surrogate): escaped
        body = json.dumps(messages, separators=(",", ":")).encode()
    return aio_pika.Message(body, headers=headers, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)


def marker_message(nonce: str) -> aio_pika.Message:
    """A marker: reading up to it proves everything before it has been seen."""
    return aio_pika.Message(b"", headers={"marker": nonce})


def _entries(message: AbstractIncomingMessage) -> list[Entry]:
    headers = message.headers
    offset = int(headers["x-stream-offset"])  # type: ignore[arg-type]
    if "marker" in headers:
        return [Entry(offset, 0, "", "", "", 0.0, _text(headers["marker"]))]
    first = int(headers["seq"])  # type: ignore[arg-type]
    try:
        rows = orjson.loads(message.body)
    except orjson.JSONDecodeError:  # written by json.dumps (see chat_entry)
        rows = json.loads(message.body)
    if len(rows) != int(headers["count"]):  # type: ignore[arg-type]
        raise ValueError(f"entry at offset {offset} holds {len(rows)} messages, not its count")
    return [
        Entry(offset, first + i, sender, key, body, float(sent_at), "")
        for i, (sender, key, body, sent_at) in enumerate(rows)
    ]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class AccessRefused(StoreUnavailable):
    """RabbitMQ answered and refused us: credentials, vhost or permissions (not an outage)."""


class OwnedElsewhere(StoreUnavailable):
    """Another connection holds this store's owner queue: another chat server serves it."""


def _refusal(exc: BaseException) -> bool:
    # A protocol-level "no" (bad credentials, unknown vhost) rather than a socket that failed.
    return isinstance(exc, aio_pika.exceptions.ProbableAuthenticationError) or (
        isinstance(exc, aio_pika.exceptions.AMQPError) and not isinstance(exc, OSError)
    )


class StreamLog:
    """An AMQP connection to one RabbitMQ, with confirmed publishes and offset reads.

    With ``owner`` set, every connection first declares that queue *exclusive*: RabbitMQ lets
    one connection hold it and drops it when that connection dies (a SIGKILLed server's
    included), so two servers can never write one store's streams at the same time.
    """

    def __init__(self, uri: str, *, timeout: float = 10.0) -> None:
        """Talk to the broker at ``uri`` (connected lazily)."""
        self.uri = uri
        self.timeout = timeout
        self.owner: str | None = None
        self._conn: AbstractConnection | None = None
        self._publisher: AbstractChannel | None = None
        self._readers: list[AbstractChannel] = []
        self._read_gate = asyncio.Semaphore(READ_CHANNELS)
        self._connecting = asyncio.Lock()
        self._failed_at = 0.0
        self._declared: set[str] = set()
        self.connects = 0

    # connection ------------------------------------------------------------------------------

    async def connection(self) -> AbstractConnection:
        """The open connection, (re)connecting when needed."""
        conn = self._conn
        if conn is not None and not conn.is_closed:
            return conn
        async with self._connecting:
            if self._conn is not None and not self._conn.is_closed:
                return self._conn
            self._forget()
            if time.monotonic() - self._failed_at < RECONNECT_PAUSE:
                raise StoreUnavailable("RabbitMQ is unreachable")
            try:
                conn = await aio_pika.connect(self.uri, timeout=self.timeout)
            except Exception as exc:
                self._failed_at = time.monotonic()
                # The URI holds a password: name the failure, never the URI.
                if _refusal(exc):
                    why = type(exc).__name__
                    raise AccessRefused(f"RabbitMQ refused the connection: {why}") from exc
                raise StoreUnavailable(f"RabbitMQ is unreachable: {type(exc).__name__}") from exc
            try:
                await self._claim(conn)
                self._publisher = await conn.channel(publisher_confirms=True)
            except Exception as exc:
                self._failed_at = time.monotonic()
                with contextlib.suppress(Exception):
                    await conn.close()
                if isinstance(exc, StoreUnavailable):
                    raise
                raise StoreUnavailable(f"RabbitMQ is unreachable: {type(exc).__name__}") from exc
            self._conn = conn
            self.connects += 1
            return conn

    async def _claim(self, conn: AbstractConnection) -> None:
        """Declare the owner queue exclusive on ``conn`` (see the class docstring)."""
        if self.owner is None:
            return
        channel = await conn.channel()
        try:
            await channel.declare_queue(self.owner, exclusive=True)
        except ChannelLockedResource:
            raise OwnedElsewhere(f"another chat server holds {self.owner}") from None

    def _forget(self) -> None:
        self._conn, self._publisher = None, None
        self._readers.clear()
        self._declared.clear()

    async def close(self) -> None:
        """Close the connection."""
        conn, self._conn = self._conn, None
        self._forget()
        if conn is not None and not conn.is_closed:
            with contextlib.suppress(Exception):  # closing a dead connection may fail; it is gone
                await conn.close()

    @contextlib.asynccontextmanager
    async def _amqp(self, what: str) -> AsyncIterator[None]:
        """Turn any AMQP or socket failure into StoreUnavailable (the connection is dropped)."""
        try:
            async with asyncio.timeout(self.timeout):
                yield
        except StoreUnavailable:
            raise
        except Exception as exc:
            await self.close()
            raise StoreUnavailable(f"RabbitMQ {what} failed: {type(exc).__name__}") from exc

    # streams ---------------------------------------------------------------------------------

    async def declare(self, stream: str) -> None:
        """Create the stream unless it exists."""
        if stream in self._declared:
            return
        async with self._amqp("declare"):
            await self.connection()
            assert self._publisher is not None
            await self._publisher.declare_queue(
                stream, durable=True, arguments={"x-queue-type": "stream"}
            )
        self._declared.add(stream)

    async def delete(self, stream: str) -> None:
        """Delete a stream and everything in it."""
        async with self._amqp("delete"):
            await self.connection()
            assert self._publisher is not None
            await self._publisher.queue_delete(stream)
        self._declared.discard(stream)

    async def publish(self, stream: str, messages: list[aio_pika.Message]) -> None:
        """Publish ``messages`` (entries) in order and return once the broker confirmed each."""
        async with self._amqp("publish"):
            await self.connection()
            channel = self._publisher
            assert channel is not None
            exchange = channel.default_exchange
            # One channel keeps the order; all confirms are awaited together (one wait per batch).
            await asyncio.gather(
                *(exchange.publish(m, routing_key=stream, mandatory=True) for m in messages)
            )

    async def read(
        self, stream: str, offset: int, done: Callable[[Entry], bool], prefetch: int = 500
    ) -> list[Entry]:
        """Messages from the entry at ``offset`` on, until ``done(entry)`` says that was enough."""
        async with self._read_gate, self._amqp("read"):
            conn = await self.connection()
            channel = self._readers.pop() if self._readers else await conn.channel()
            got = await self._consume(channel, stream, offset, done, prefetch)
            self._readers.append(channel)
            return got

    async def _consume(
        self,
        channel: AbstractChannel,
        stream: str,
        offset: int,
        done: Callable[[Entry], bool],
        prefetch: int,
    ) -> list[Entry]:
        # A stream consumer needs a prefetch (RabbitMQ refuses one without); acks return credit.
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.get_queue(stream, ensure=False)
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        tag = await queue.consume(inbox.put, arguments={"x-stream-offset": offset})
        got: list[Entry] = []
        unacked = 0
        try:
            while True:
                message = await inbox.get()
                unpacked = _entries(message)
                got += unpacked
                unacked += 1
                finished = any(done(entry) for entry in unpacked)
                if finished or unacked >= prefetch // 2:
                    await message.ack(multiple=True)
                    unacked = 0
                if finished:
                    return got
        finally:
            await queue.cancel(tag)
