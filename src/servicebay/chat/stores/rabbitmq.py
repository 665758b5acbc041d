"""The RabbitMQ chat store: each room's log in RabbitMQ streams, the rest in a local SQLite file.

Where it sits: a ``ChatStore`` chosen with ``--store rabbitmq[:BINDING]``; it finds RabbitMQ
through a servicebinding.io binding of type ``rabbitmq`` (entry ``uri``). The mapping, and why
(figures in docs/chat-rabbitmq.md):

- **A message is stored once**, in its room's stream, published with a publisher confirm; the
  server fans it out (one queue message per recipient would multiply the durable writes by the
  room size).
- **Seqs are assigned here**, by one writer task per room: it takes every append waiting for the
  room (a batch), checks membership and keys, numbers the new ones head+1, head+2, ..., publishes
  them as ONE stream entry (a packed entry; more only past ``ENTRY_CHARS``), awaits its confirm
  (group commit), records the keys, the entry's offset and the new head in SQLite, and only then
  answers. Seqs are consecutive and become visible in order. The first seq and the count travel
  in the entry's headers, so the stream alone tells what was stored.
- **Seq → offset**: the writer is the stream's only publisher, so it knows the offset each entry
  gets (the next one); ``rmq_entries`` maps a seq to the entry holding it (``_rabbitmq_meta``).
  When a room is first written after a start, or after a failed publish, it is *resynced*: a
  marker is published and the stream is read from the first unrecorded entry up to that marker;
  messages the broker stored but whose confirm never arrived are adopted (their keys recorded, so
  a resend gets their seq and stores nothing), and a new segment starts after the marker. A
  resend of an adopted message is answered once with ``duplicate=False``: its sender never heard
  of it, and the server publishes only non-duplicates to its rooms.
- **Metadata** (users, token digests, rooms, members and cursors, keys, segments) lives in SQLite:
  cursors are the busiest writes (every receiver acks), and a SQLite group commit is an order of
  magnitude cheaper than a confirmed publish; keys must be looked up before each append, which a
  log cannot do. The file belongs to the one server process that owns the store (v1 model).
- **Deletion**: compaction raises the room's floor (reads never return seqs <= floor; that is
  what "deleted" means to clients at once). Streams cannot drop single messages, so a room's log
  rotates to a new stream (generation) every ``rotate_every`` messages and a generation's stream
  is deleted from RabbitMQ once all its seqs are below the floor.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import structlog

from servicebay import bindings
from servicebay.chat.stores import RABBITMQ_STATE
from servicebay.chat.stores._rabbitmq_log import (
    RECONNECT_PAUSE,
    AccessRefused,
    Entry,
    OwnedElsewhere,
    StreamLog,
    chat_entry,
    marker_message,
)
from servicebay.chat.stores._rabbitmq_meta import BatchCheck, MetaStore, Placed, Recorded, Segment
from servicebay.chat.stores.base import (
    Appended,
    ChatStore,
    ChatStoreError,
    IssuedToken,
    Member,
    Message,
    NotMember,
    Retention,
    Room,
    StoreInUse,
    StoreNotOpened,
    StoreUnavailable,
    UnknownRoom,
    User,
)

log = structlog.get_logger("servicebay.chat.rabbitmq")

# Appends per batch (one confirmed publish, one metadata record). As the server's writes
# (SUBMIT_CHUNK): a batch answered while the next is published keeps one fast sender's
# window moving (1,000 per batch measured 28,000-33,000 msg/s at 1 -> 10, 256: 40,000-49,000).
MAX_BATCH = 256
# An entry holds whole messages up to about this many body characters (a batch of big messages
# becomes several entries; RabbitMQ's own limit on a message is far above).
ENTRY_CHARS = 256 * 1024
ROTATE_EVERY = 100_000
# How long open() waits for a SIGKILLed predecessor's owner queue to go (RabbitMQ drops it when
# it notices the dead connection, at once when the kernel closed the socket).
OWNER_WAIT = 3.0
# The metadata's commits survive a crash of this process or of RabbitMQ, not a power loss: the
# level of a single-node stream, whose confirm means written, not fsynced. An fsync per commit
# (4 ms median, 28 ms p99 on the development machine) was the largest part of an append's
# latency; what a power loss could take back is rebuilt (keys, heads: resync reads the stream)
# or redelivered (cursors). docs/chat-rabbitmq.md, "Durability".
META_SYNCHRONOUS = "NORMAL"
START_HINT = "bay run --app chat -- bay chat serve --store rabbitmq"


def open_rabbitmq_store(binding_name: str | None) -> ChatStore:
    """Build (not open) the store for ``open_store("rabbitmq[:SPEC]")``.

    ``SPEC`` is ``[BINDING_NAME][?state=PATH&root=DIR&rotate=N]``: the binding of type
    ``rabbitmq`` to use (the only one when no name is given), where the SQLite metadata file
    lives (default ``./servicebay-chat-rabbitmq.db``), the binding root (default
    ``$SERVICE_BINDING_ROOT``) and the messages per stream generation. A missing, ambiguous or
    malformed binding or option is ``StoreNotOpened`` (one line, no secret).
    """
    name, _, query = (binding_name or "").partition("?")
    options = dict(parse_qsl(query))
    try:
        binding = bindings.find(type="rabbitmq", name=name or None, root=options.get("root"))
        uri = binding["uri"]
    except bindings.BindingNotFound as exc:
        raise StoreNotOpened(f"{exc}. Bind one and start with `{START_HINT}`") from None
    except KeyError:
        raise StoreNotOpened(f"the binding {binding.name!r} has no entry 'uri'") from None
    except bindings.BindingError as exc:
        raise StoreNotOpened(str(exc)) from None
    if not uri.startswith(("amqp://", "amqps://")):
        raise StoreNotOpened(f"the binding {binding.name!r}: entry 'uri' is not an amqp:// URI")
    try:
        rotate_every = int(options.get("rotate", ROTATE_EVERY))
    except ValueError:
        raise StoreNotOpened(f"rotate={options['rotate']!r} is not a number") from None
    state = options.get("state", RABBITMQ_STATE)
    return RabbitMQChatStore(uri, state, rotate_every=rotate_every)


class _Answers:
    """The answers to one ``append`` (``single``) or one ``append_many``, settled together."""

    __slots__ = ("fut", "left", "results", "single")

    def __init__(self, count: int, single: bool) -> None:
        self.fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.results: list[Appended | BaseException | None] = [None] * count
        self.left = count
        self.single = single

    def settle(self, index: int, answer: Appended | BaseException) -> None:
        """Record one item's answer; the future settles with the last one."""
        if self.fut.done() or self.results[index] is not None:
            return  # the caller gave up (cancelled), or already answered
        self.results[index] = answer
        self.left -= 1
        if self.left:
            return
        if not self.single:
            self.fut.set_result(self.results)
        elif isinstance(answer, BaseException):
            self.fut.set_exception(answer)
        else:
            self.fut.set_result(answer)


class _Append:
    """One queued message: its sender, key and body, and where its answer goes."""

    __slots__ = ("answers", "body", "index", "key", "sender")

    def __init__(self, sender: str, key: str, body: str, answers: _Answers, index: int) -> None:
        self.sender, self.key, self.body = sender, key, body
        self.answers, self.index = answers, index

    def settle(self, answer: Appended | BaseException) -> None:
        """Answer this message (once)."""
        self.answers.settle(self.index, answer)


@dataclass
class _RoomLog:
    """What the store knows of one room's log in memory."""

    segments: list[Segment] = field(default_factory=list)
    waiting: deque[_Append] = field(default_factory=deque)
    writer: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    synced: bool = False
    unanswered: set[tuple[str, str]] = field(default_factory=set)
    head: int = 0
    floor: int = 0
    next_offset: int = 0  # where the current stream's next entry lands (known once synced)

    def segment_of(self, seq: int) -> Segment:
        """The segment holding ``seq``."""
        return next(s for s in reversed(self.segments) if s.first_seq <= seq)

    def stream_end(self, segment: Segment) -> int | None:
        """The last seq stored in ``segment``'s stream, or None for the current stream."""
        later = [s.first_seq for s in self.segments if s.gen > segment.gen]
        return min(later) - 1 if later else None


def _take(room: _RoomLog) -> list[_Append]:
    """The appends waiting for the room (at most MAX_BATCH), in arrival order."""
    return [room.waiting.popleft() for _ in range(min(MAX_BATCH, len(room.waiting)))]


def _pairs(batch: list[_Append]) -> list[tuple[str, str]]:
    return [(a.sender, a.key) for a in batch]


def _fail(batch: list[_Append], exc: BaseException) -> None:
    for item in batch:
        item.settle(exc)


def _pack(rows: list[Recorded], bodies: list[str]) -> list[list[tuple[Recorded, str]]]:
    """Split a numbered batch into entries of at most ~ENTRY_CHARS body characters (one mostly)."""
    packs: list[list[tuple[Recorded, str]]] = [[]]
    size = 0
    for row, body in zip(rows, bodies, strict=True):
        if packs[-1] and size + len(body) > ENTRY_CHARS:
            packs.append([])
            size = 0
        packs[-1].append((row, body))
        size += len(body)
    return packs


def _stream_name(store_id: str, room_id: str, gen: int) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]", "_", room_id)[:40]
    digest = hashlib.sha256(room_id.encode()).hexdigest()[:8]
    return f"sbchat.{store_id}.{slug}.{digest}.g{gen}"


class RabbitMQChatStore:
    """``ChatStore`` with the log in RabbitMQ streams (see the module docstring)."""

    def __init__(
        self,
        uri: str,
        state: str,
        *,
        rotate_every: int = ROTATE_EVERY,
    ) -> None:
        """Log to the RabbitMQ at ``uri``; keep metadata in the SQLite file ``state``."""
        self.meta = MetaStore(state, synchronous=META_SYNCHRONOUS)
        self.log = StreamLog(uri)
        self.rotate_every = max(1, rotate_every)
        self._rooms: dict[str, _RoomLog] = {}
        self._store_id = ""
        self.batches = 0
        self.resyncs = 0

    # lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        """Own the store, open the metadata, then claim the store in RabbitMQ.

        The metadata file's lock comes first (``StoreInUse``: another server on this file),
        then the owner queue ``chat.<store id>.owner`` (``StoreInUse``: a server elsewhere with
        a copy of the file). Refused credentials or vhost are ``StoreNotOpened``; RabbitMQ
        being down is not: the server starts and claims the store when it is back.
        """
        await self.meta.open()
        try:
            self._store_id = await self.meta.store_id()
            self.log.owner = f"chat.{self._store_id}.owner"
            await self._claim()
            for segment in await self.meta.segments():
                self._room(segment.room).segments.append(segment)
        except BaseException:
            await self.meta.close()
            raise

    async def _claim(self) -> None:
        started = time.monotonic()
        while True:
            try:
                await self.log.connection()
                return
            except OwnedElsewhere:
                if time.monotonic() - started > OWNER_WAIT:
                    raise StoreInUse(
                        f"the store {self.meta.path} is in use by another chat server "
                        f"(it holds the RabbitMQ queue {self.log.owner}): one server per store"
                    ) from None
            except AccessRefused as exc:
                raise StoreNotOpened(f"{exc}: check the binding's credentials and vhost") from None
            except StoreUnavailable as exc:
                log.warning("chat.rabbitmq.down_at_start", error=str(exc))
                return
            # Past the log's pause between connection attempts, so the next one is a real try.
            await asyncio.sleep(RECONNECT_PAUSE * 1.2)

    async def close(self) -> None:
        """Let queued appends finish, then close RabbitMQ and the metadata."""
        writers = [r.writer for r in self._rooms.values() if r.writer is not None]
        await asyncio.gather(*writers, return_exceptions=True)
        await self.log.close()
        await self.meta.close()

    async def ping(self) -> None:
        """Raise StoreUnavailable unless both RabbitMQ and the metadata answer."""
        await self.log.connection()
        await self.meta.ping()

    def _room(self, room_id: str) -> _RoomLog:
        room = self._rooms.get(room_id)
        if room is None:  # (not setdefault: that would build an entry on every call)
            room = self._rooms[room_id] = _RoomLog()
        return room

    def _forget(self, room_id: str, room: _RoomLog) -> None:
        """Drop the room's entry when it holds nothing: a missing room leaves nothing behind.

        Any user may ask about any room name; an entry kept for each would let them grow this
        process's memory without bound. An entry that was never synced and has no segments,
        nothing queued and no other writer holds nothing a later call could not rebuild, so
        this is also safe for a room that exists (its next call makes a new entry). A caller
        waiting for the old entry's lock sees that it was dropped (``_synced``).
        """
        writer = room.writer
        if (
            self._rooms.get(room_id) is room
            and not (room.synced or room.segments or room.waiting or room.unanswered)
            and (writer is None or writer.done() or writer is asyncio.current_task())
        ):
            del self._rooms[room_id]

    # users, tokens, rooms, members: metadata only ---------------------------------------------

    async def put_user(self, user_id: str, display_name: str = "", kind: str = "person") -> User:
        """Create or update a user."""
        return await self.meta.put_user(user_id, display_name, kind)

    async def get_user(self, user_id: str) -> User | None:
        """The user, or None."""
        return await self.meta.get_user(user_id)

    async def issue_token(self, user_id: str, label: str = "") -> IssuedToken:
        """Issue a token (only its digest is stored)."""
        return await self.meta.issue_token(user_id, label)

    async def revoke_token(self, token_id: str) -> bool:
        """Revoke one token."""
        return await self.meta.revoke_token(token_id)

    async def authenticate(self, token: str) -> User | None:
        """The token's user, or None."""
        return await self.meta.authenticate(token)

    async def put_room(
        self, room_id: str, retention: Retention | None = None, open: bool = True
    ) -> Room:
        """Create a room or change its settings (its streams are created on first write)."""
        return await self.meta.put_room(room_id, retention, open)

    async def get_room(self, room_id: str) -> Room | None:
        """The room, or None; its head is RabbitMQ's when reachable, else the recorded one."""
        try:
            await self._synced(room_id)
        except UnknownRoom:
            return None
        except StoreUnavailable:
            # Settings and a possibly short head are still right to show (and the server must
            # start while RabbitMQ is down); whatever depends on a complete head uses members()
            # or read(), which do not fall back.
            pass
        return await self.meta.get_room(room_id)

    async def list_rooms(self) -> list[Room]:
        """Every room (each resynced with its stream first when RabbitMQ is reachable)."""
        for room in await self.meta.list_rooms():
            try:
                await self._synced(room.id)
            except StoreUnavailable:
                break  # as in get_room: the recorded heads are shown
        return await self.meta.list_rooms()

    async def join(self, room_id: str, user_id: str, cursor: int | None = None) -> Member:
        """Add a member (idempotent)."""
        return await self.meta.join(room_id, user_id, cursor)

    async def leave(self, room_id: str, user_id: str) -> bool:
        """End a membership."""
        return await self.meta.leave(room_id, user_id)

    async def members(self, room_id: str) -> list[Member]:
        """The room's members (the room is resynced first, so its head is complete)."""
        await self._synced(room_id)
        return await self.meta.members(room_id)

    async def membership(self, user_id: str) -> list[Member]:
        """The user's memberships."""
        return await self.meta.membership(user_id)

    async def ack(self, room_id: str, user_id: str, seq: int) -> int:
        """Advance a member's cursor durably (SQLite group commit)."""
        return await self.meta.ack(room_id, user_id, seq)

    async def ack_many(self, room_id: str, seqs: dict[str, int]) -> dict[str, int]:
        """Advance several members' cursors in one SQLite transaction."""
        return await self.meta.ack_many(room_id, seqs)

    # resync ----------------------------------------------------------------------------------

    async def _synced(self, room_id: str) -> _RoomLog:
        """The room, resynced with its stream once per start and after every failed publish.

        Raises UnknownRoom for a missing room, and keeps nothing for it (``_forget``).
        """
        while True:
            room = self._room(room_id)
            if room.synced:
                return room
            try:
                async with room.lock:
                    if self._rooms.get(room_id) is not room:
                        continue  # dropped while this call waited: the current entry decides
                    if not room.synced:
                        await self._resync(room_id, room, rotate=False)
            except UnknownRoom:
                self._forget(room_id, room)
                raise
            return room

    async def _resync(self, room_id: str, room: _RoomLog, *, rotate: bool) -> None:
        """Read the stream up to a fresh marker; adopt stored but unrecorded messages."""
        head, floor = await self.meta.span(room_id)
        last = room.segments[-1] if room.segments else None
        if last is None or rotate:
            gen = last.gen + 1 if last is not None else 1
            stream, offset = _stream_name(self._store_id, room_id, gen), 0
        else:
            gen, stream, offset = last.gen, last.stream, last.first_offset
            held = await self.meta.entry_at(room_id, head) if head else None
            if held is not None and held.first_seq >= last.first_seq:
                offset = held.offset + 1  # right after the last recorded entry
        await self.log.declare(stream)
        nonce = secrets.token_hex(8)
        await self.log.publish(stream, [marker_message(nonce)])
        entries = await self.log.read(stream, offset, lambda e: e.marker == nonce)
        adopted: list[Recorded] = []
        placed: list[Placed] = []
        for entry in entries:
            if entry.marker:
                continue
            if entry.seq != head + len(adopted) + 1:
                raise StoreUnavailable(f"stream {stream} does not match its index at {entry.seq}")
            if not placed or placed[-1].offset != entry.offset:
                placed.append(Placed(entry.seq, gen, entry.offset))
            adopted.append(Recorded(entry.sender, entry.key, entry.seq, entry.sent_at))
        head += len(adopted)
        room.unanswered.update((r.sender, r.key) for r in adopted)
        segment = Segment(room_id, head + 1, stream, entries[-1].offset + 1, gen)
        await self.meta.record(room_id, adopted, head, placed, segment=segment)
        # From here the room's segments and its next offset disagree (a rotation's new stream,
        # the old stream's offset) until both are set: should anything below fail, the room is
        # unsynced, and its next write resyncs from what is recorded (a rotation included).
        room.synced = False
        room.segments = [s for s in room.segments if s.first_seq != segment.first_seq]
        room.segments.append(segment)
        # Resync rebuilds keys and heads from the streams, not which stream a room continues
        # in: a power loss must not take this record back (seqs would be given out twice).
        # Should it fail, the room stays unsynced and its writes fail until a resync has it.
        await self.meta.make_durable()
        room.next_offset = segment.first_offset
        room.head, room.floor, room.synced = head, floor, True
        self.resyncs += 1
        if adopted:
            log.info("chat.rabbitmq.adopted", room=room_id, count=len(adopted), head=head)

    # the log ---------------------------------------------------------------------------------

    def append(self, room_id: str, sender: str, key: str, body: str) -> asyncio.Future[Appended]:
        """Queue the message for its room's writer; the future settles once confirmed and recorded.

        (A future rather than a coroutine: the server attaches its callbacks to it directly.)
        """
        answers = _Answers(1, single=True)
        self._queue(room_id, [_Append(sender, key, body, answers, 0)])
        fut: asyncio.Future[Appended] = answers.fut
        return fut

    def append_many(
        self, room_id: str, sender: str, items: Sequence[tuple[str, str]]
    ) -> asyncio.Future[list[Appended | BaseException]]:
        """``append`` for several ``(key, body)`` of one sender, in order: one future for the
        lot, with each item's ``Appended`` or the error that refused it.

        They join the room's queue together, so they go into the same batch (or consecutive
        ones past ``MAX_BATCH``); a key repeated within ``items`` is a duplicate of its first.
        """
        answers = _Answers(len(items), single=False)
        if not items:
            answers.fut.set_result([])
        else:
            queued = [_Append(sender, k, b, answers, i) for i, (k, b) in enumerate(items)]
            self._queue(room_id, queued)
        fut: asyncio.Future[list[Appended | BaseException]] = answers.fut
        return fut

    def _queue(self, room_id: str, items: list[_Append]) -> None:
        room = self._room(room_id)
        room.waiting.extend(items)
        if room.writer is None or room.writer.done():
            room.writer = asyncio.create_task(self._write_loop(room_id, room))

    async def _write_loop(self, room_id: str, room: _RoomLog) -> None:
        """Write batches until none waits; each batch's check comes with the previous record."""
        batch, check = _take(room), None
        while batch:
            try:
                if check is None:
                    await self._synced(room_id)
                    check = await self.meta.check(room_id, _pairs(batch))
                batch, check = await self._write_batch(room_id, room, batch, check)
            except ChatStoreError as exc:
                _fail(batch, exc)
                batch, check = _take(room), None
            except BaseException as exc:  # cancelled or a bug: every caller hears it
                if not isinstance(exc, asyncio.CancelledError):
                    log.error("chat.rabbitmq.append_failed", room=room_id, exc_info=exc)
                # The exception's words are in the log; callers (and clients) hear the code.
                # The sends queued behind this batch are answered too: with this writer gone
                # they would wait for the next send to the room. None of them was published
                # (a batch taken for the next record goes back to the queue when it fails),
                # and the room resyncs on its next write, adopting what this one published.
                failure = StoreUnavailable("the append was not stored; retry")
                queued, room.waiting = list(room.waiting), deque()
                _fail([*batch, *queued], failure)
                raise
            if not batch:
                # Appends that came while the last record was written found this writer still
                # running and started none: take them now (nothing awaits between this take and
                # the end of the task, so none can be left behind).
                batch, check = _take(room), None

    async def _write_batch(
        self, room_id: str, room: _RoomLog, batch: list[_Append], check: BatchCheck
    ) -> tuple[list[_Append], BatchCheck | None]:
        """Store one checked batch and answer it; return the next batch (checked if it could be).

        The next batch is taken when this one's record is written and checked in the same
        SQLite transaction (one hand-off to the writer thread per batch, not two).
        """
        head = check.head
        fresh: list[tuple[_Append, Recorded]] = []
        answers: list[tuple[_Append, Appended | Exception]] = []
        assigned: dict[tuple[str, str], int] = {}  # seqs given in this batch
        now = time.time()
        for item in batch:
            pair = (item.sender, item.key)
            if pair in check.failed:
                answers.append((item, check.failed[pair]))
            elif item.sender not in check.members:
                answers.append((item, NotMember(room_id, item.sender)))
            elif pair in check.known:
                # An adopted message was never answered: its first answer is not a duplicate,
                # so the server publishes it (the hub would otherwise wait for it).
                first = pair in room.unanswered
                room.unanswered.discard(pair)
                answers.append((item, Appended(*check.known[pair], duplicate=not first)))
            elif (seq := assigned.get(pair)) is not None:
                answers.append((item, Appended(seq, now, True)))
            else:
                head += 1
                fresh.append((item, Recorded(item.sender, item.key, head, now)))
                assigned[pair] = head
                answers.append((item, Appended(head, now, False)))
        nxt: tuple[list[_Append], BatchCheck | None] = ([], None)
        if fresh:
            rows, bodies = [r for _, r in fresh], [a.body for a, _ in fresh]
            nxt = await self._store(room_id, room, rows, bodies)
        else:
            nxt = (_take(room), None)
        for item, answer in answers:
            item.settle(answer)
        return nxt

    async def _store(
        self, room_id: str, room: _RoomLog, rows: list[Recorded], bodies: list[str]
    ) -> tuple[list[_Append], BatchCheck | None]:
        """Publish (confirmed) and record a numbered batch; on failure the room resyncs.

        Returns the next batch, taken when the record is written, with its check.
        """
        current = room.segments[-1]
        first_of_gen = min(s.first_seq for s in room.segments if s.gen == current.gen)
        if rows[0].seq - first_of_gen >= self.rotate_every:
            async with room.lock:
                try:
                    await self._resync(room_id, room, rotate=True)
                except BaseException:
                    room.synced = False  # the next write resyncs from what is recorded
                    raise
            current = room.segments[-1]
        packs = _pack(rows, bodies)
        at = room.next_offset
        placed = [Placed(pack[0][0].seq, current.gen, at + i) for i, pack in enumerate(packs)]
        entries = [
            chat_entry(pack[0][0].seq, [(r.sender, r.key, body, r.sent_at) for r, body in pack])
            for pack in packs
        ]
        nxt: list[_Append] = []
        try:
            await self.log.publish(current.stream, entries)
            nxt = _take(room)
            check = await self.meta.record(room_id, rows, rows[-1].seq, placed, _pairs(nxt))
        except BaseException:
            # Part of the batch may be stored: the next write reads the stream to find out.
            room.synced = False
            room.waiting.extendleft(reversed(nxt))  # unchecked: back to the front, in order
            raise
        room.next_offset += len(entries)
        room.head = rows[-1].seq
        self.batches += 1
        return nxt, check

    async def read(self, room_id: str, after: int, limit: int = 500) -> list[Message]:
        """Retained messages after ``after``, read from the room's streams.

        An unreachable RabbitMQ raises ``StoreUnavailable`` at once: the server's delivery
        loops and room loading retry with backoff and tell their clients.
        """
        room = await self._synced(room_id)
        first = max(after, room.floor) + 1
        last = min(room.head, first + limit - 1)
        found: list[Message] = []
        while first <= last:
            segment = room.segment_of(first)
            end = room.stream_end(segment)
            upto = last if end is None else min(last, end)
            found += await self._read_stream(room_id, segment, first, upto)
            first = upto + 1
        return found

    async def _read_stream(
        self, room_id: str, segment: Segment, first: int, last: int
    ) -> list[Message]:
        def done(entry: Entry) -> bool:
            return not entry.marker and entry.seq >= last

        held = await self.meta.entry_at(room_id, first)
        if held is None or held.gen != segment.gen:
            raise StoreUnavailable(f"no entry of stream {segment.stream} is recorded for {first}")
        prefetch = min(1000, last - first + 16)
        entries = await self.log.read(segment.stream, held.offset, done, prefetch)
        found = [
            Message(room_id, e.seq, e.sender, e.key, e.body, e.sent_at)
            for e in entries
            if not e.marker and first <= e.seq <= last
        ]
        if [m.seq for m in found] != list(range(first, last + 1)):
            raise StoreUnavailable(f"stream {segment.stream} does not match its index")
        return found

    async def compact(self, now: float | None = None) -> dict[str, int]:
        """Raise floors as retention allows; delete streams wholly below their room's floor."""
        moved = await self.meta.advance_floors(time.time() if now is None else now)
        for room_id, (_, floor) in moved.items():
            self._room(room_id).floor = floor
        for room_id, room in list(self._rooms.items()):
            await self._drop_old_streams(room_id, room)
        return {room_id: count for room_id, (count, _) in moved.items()}

    async def _drop_old_streams(self, room_id: str, room: _RoomLog) -> None:
        if not room.segments:
            return
        floor = room.floor
        for gen in sorted({s.gen for s in room.segments})[:-1]:
            segment = next(s for s in room.segments if s.gen == gen)
            end = room.stream_end(segment)
            if end is None or end > floor:
                break
            try:
                await self.log.delete(segment.stream)
            except StoreUnavailable as exc:
                # The floor already hides these messages; an unreachable RabbitMQ only delays
                # freeing the space until the next compaction, which tries again.
                log.warning("chat.rabbitmq.drop_deferred", stream=segment.stream, error=str(exc))
                return
            await self.meta.drop_stream(room_id, gen)
            room.segments = [s for s in room.segments if s.gen != gen]
