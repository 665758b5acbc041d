"""The chat service core: rooms in memory over a durable store, shared by WebSocket and HTTP.

Where it sits: ``server`` (WebSocket sessions) and ``http_api`` (bound apps) call
``ChatService``; it calls the ``ChatStore``. Each room has a ``RoomHub`` that knows the highest
seq published without a hole, keeps the newest messages already encoded (so a fan-out to many
receivers reads the store once, not once per receiver), wakes delivery loops, and holds the
members' durable cursors for receipts, lag and presence.

A message reaches the hub only after ``store.append`` returned, i.e. after it is durable; a
delivery loop only sends what the hub published, so nothing is delivered that a crash could undo.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import structlog

from servicebay.chat.metrics import ChatMetrics
from servicebay.chat.protocol import Frames, encode, message_frame
from servicebay.chat.stores import (
    Appended,
    ChatStore,
    ChatStoreError,
    Member,
    Message,
    StoreUnavailable,
    UnknownRoom,
    User,
)

log = structlog.get_logger("servicebay.chat")

RECENT = 4096
# Behind what memory holds, receivers read history in blocks of this many seqs, aligned on
# multiples of it and shared: 100 receivers catching up in one room read each block once (a
# read per receiver made a fast room with 100 members collapse: each store read and its
# encoding repeated 100 times, ~360 µs of server CPU per message instead of ~50).
HISTORY_BLOCK = 256
HISTORY_BLOCKS_KEPT = 32  # per room, and at most HISTORY_CHARS_KEPT of text
HISTORY_CHARS_KEPT = 8_000_000
RECEIPT_EVERY = 0.05
ACK_LINGER = 0.02  # a room's cursor writes are batched over this long
WAKE_PER_LISTENER = 0.0005
WAKE_MAX = 0.025


class Entry(NamedTuple):
    """A stored message with its ``msg`` frame encoded once for every receiver."""

    seq: int
    sender: str
    text: str

    @classmethod
    def of(cls, msg: Message) -> Entry:
        """Encode a stored message."""
        frame = message_frame(msg.room, msg.seq, msg.sender, msg.key, msg.body, msg.sent_at)
        return cls(msg.seq, msg.sender, encode(frame))


@dataclass(frozen=True)
class Batch:
    """Consecutive published messages as one encoded text, shared by every receiver."""

    first: int
    last: int
    text: str  # one frame, or ``Frames``

    @classmethod
    def of(cls, entries: list[Entry]) -> Batch:
        """Join encoded entries (at least one)."""
        if len(entries) == 1:
            return cls(entries[0].seq, entries[0].seq, entries[0].text)
        return cls(entries[0].seq, entries[-1].seq, Frames(",".join(e.text for e in entries)))


Listener = Callable[[str], None]
BATCHES_KEPT = 64  # shared batches kept per room (receivers at a few distinct positions)
BATCH_CHARS_KEPT = 4_000_000  # and at most this much text (256 big messages are 4 MB)


def reap(task: asyncio.Future[Any]) -> None:
    """Done callback of a background task: its failure is logged, never left unretrieved.

    Background tasks handle what they expect (``StoreUnavailable``: retry); anything else is a
    bug, and a task nobody awaits would only say so as "Task exception was never retrieved".
    """
    if task.cancelled():
        return
    if (exc := task.exception()) is not None:
        name = task.get_name() if isinstance(task, asyncio.Task) else "chat.append"
        log.error("chat.task_failed", task=name, exc_info=exc)


class Backoff:
    """Waits between retries against an unavailable store: 0.1 s doubling up to 5 s, jittered."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        """Start at ``first`` seconds, never wait more than ``cap``."""
        self.first, self.cap = first, cap
        self.failures = 0

    def reset(self) -> None:
        """The store answered: the next failure starts from ``first`` again."""
        self.failures = 0

    async def wait(self) -> None:
        """Sleep before the next attempt."""
        delay = min(self.cap, self.first * 2 ** min(self.failures, 16))
        self.failures += 1
        await asyncio.sleep(delay * (0.5 + random.random() / 2))  # noqa: S311 - jitter


@dataclass
class RoomHub:
    """One room in memory: published head, recent messages, cursors, who is online."""

    room: str
    head: int
    cursors: dict[str, int]
    recent: deque[Entry] = field(default_factory=lambda: deque(maxlen=RECENT))
    pending: dict[int, Entry] = field(default_factory=dict)
    online: dict[str, int] = field(default_factory=dict)
    listeners: dict[object, Listener] = field(default_factory=dict)
    # Delivery loops waiting at the head: the wake-up hands them new messages directly (one
    # call each, no task step); a call returns False when its loop must run again instead.
    parked: dict[object, Callable[[], bool]] = field(default_factory=dict)
    delivered_max: dict[str, int] = field(default_factory=dict)
    ack_targets: dict[str, int] = field(default_factory=dict)
    ack_task: asyncio.Task[None] | None = None
    filling: bool = False
    receipt_sent: int = 0
    receipt_timer: asyncio.TimerHandle | None = None
    _batches: dict[tuple[int, int], Batch] = field(default_factory=dict)
    _batch_chars: int = 0
    # History blocks read from the store (see HISTORY_BLOCK): block start → its entries,
    # while being read a future that other readers of the block wait for.
    history: OrderedDict[int, asyncio.Future[list[Entry]]] = field(default_factory=OrderedDict)
    history_chars: dict[int, int] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _last_wake: float = 0.0
    _wake_timer: asyncio.TimerHandle | None = None
    _receipt_rides: bool = False

    def publish(self, entry: Entry) -> bool:
        """Publish a durable message; True when a hole before it remains (caller fills it)."""
        if entry.seq <= self.head:
            return False
        self.pending[entry.seq] = entry
        while (nxt := self.pending.pop(self.head + 1, None)) is not None:
            self.recent.append(nxt)
            self.head = nxt.seq
        self._wake()
        return bool(self.pending)

    def _wake(self) -> None:
        """Wake waiting delivery loops, at most once per period.

        Under load, messages published within one period go out together (one socket write per
        receiver instead of one per message); an idle room wakes at once. Loops that are busy
        sending do not wait at all: they find the new head when they come back.
        """
        if self._wake_timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (unit use): nobody can be waiting
            return self._fire()
        # The period grows with the fan-out so that socket writes per second stay bounded:
        # 10 listeners → 5 ms, 50 or more → 25 ms (the latency budget is 100 ms at p99).
        due = self._last_wake + min(WAKE_MAX, WAKE_PER_LISTENER * max(1, len(self.listeners)))
        if loop.time() >= due:
            return self._fire()
        self._wake_timer = loop.call_at(due, self._fire)
        return None

    def _fire(self) -> None:
        self._wake_timer = None
        with contextlib.suppress(RuntimeError):
            self._last_wake = asyncio.get_running_loop().time()
        for owner, deliver in list(self.parked.items()):
            if not deliver():
                self.parked.pop(owner, None)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if self._receipt_rides:
            # Queued after the woken loops' batches are (they run first): one socket write.
            self._receipt_rides = False
            self._receipt_now()

    def send_receipt(self) -> None:
        """Tell listeners what every member has, riding with a wake-up that is due anyway.

        With 100 members, a receipt of its own is 100 socket writes; together with the
        messages of the next wake-up (at most WAKE_MAX away) it costs none.
        """
        if self._wake_timer is not None:
            self._receipt_rides = True
        else:
            self._receipt_now()

    def _receipt_now(self) -> None:
        if self.delivered != self.receipt_sent:
            self.receipt_sent = self.delivered
            self.broadcast(
                encode({"type": "receipt", "room": self.room, "delivered": self.delivered})
            )

    async def wait_beyond(self, seq: int) -> None:
        """Return once a message after ``seq`` is published."""
        while self.head <= seq:
            await self._changed.wait()

    def cached(self, after: int, limit: int) -> list[Entry] | None:
        """Published entries after ``after`` from memory, or None when memory does not reach."""
        if after >= self.head:
            return []
        if not self.recent or self.recent[0].seq > after + 1:
            return None
        start = after + 1 - self.recent[0].seq
        return [self.recent[i] for i in range(start, min(len(self.recent), start + limit))]

    def batch(self, after: int, limit: int) -> Batch | None:
        """``cached`` as one shared ``Batch``; None when memory does not reach (or nothing new).

        Receivers of a room mostly wait at the same position and wake together: the first one
        joins the texts, the others reuse them (one join per wake-up, not one per receiver).
        """
        key = (after, min(self.head, after + limit))
        if (hit := self._batches.get(key)) is not None:
            return hit
        entries = self.cached(after, limit)
        if not entries:
            return None
        batch = Batch.of(entries)
        self._batch_chars += len(batch.text)
        if len(self._batches) >= BATCHES_KEPT or self._batch_chars > BATCH_CHARS_KEPT:
            self._batches.clear()
            self._batch_chars = len(batch.text)
        self._batches[key] = batch
        return batch

    @property
    def delivered(self) -> int:
        """Highest seq every member has acknowledged."""
        return min(self.cursors.values(), default=self.head)

    def broadcast(self, text: str, *, skip: object = None) -> None:
        """Hand a control frame to every listening session but ``skip``."""
        for owner, listener in list(self.listeners.items()):
            if owner is not skip:
                listener(text)

    def presence_frame(self) -> str:
        """The ``presence`` frame listing who is online in the room."""
        online = sorted(user for user, count in self.online.items() if count > 0)
        return encode({"type": "presence", "room": self.room, "online": online})


class ChatService:
    """Rooms, sends, reads and acks over a store; one per server process."""

    def __init__(
        self, store: ChatStore, metrics: ChatMetrics, *, compact_every: float = 30.0
    ) -> None:
        """Serve on ``store`` (opened by ``start``)."""
        self.store = store
        self.metrics = metrics
        self.compact_every = compact_every
        self._hubs: dict[str, RoomHub] = {}
        self._loading: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._compactor: asyncio.Task[None] | None = None
        self._out: dict[str, Any] = {}  # per room: its messages_out counter (labels() is slow)
        self._in: dict[str, Any] = {}  # per room: its messages_in counter

    async def start(self) -> None:
        """Open the store and start compaction."""
        await self.store.open()
        self._compactor = asyncio.create_task(self._compact_forever())
        self._compactor.add_done_callback(reap)

    async def stop(self) -> None:
        """Stop background work and close the store (pending writes finish first)."""
        for task in [self._compactor, *self._tasks]:
            if task is not None:
                task.cancel()
        for task in [self._compactor, *self._tasks]:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._last_acks()
        await self.store.close()

    async def _last_acks(self) -> None:
        """Write the cursors still lingering in each room (one handed to the store completes)."""
        for hub in self._hubs.values():
            if hub.ack_task is not None and not hub.ack_task.done():
                hub.ack_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await hub.ack_task
            if targets := hub.ack_targets:
                hub.ack_targets = {}
                try:
                    await self.store.ack_many(hub.room, targets)
                except ChatStoreError as exc:  # the cursors trail: redelivery, never loss
                    log.warning("chat.last_acks_failed", room=hub.room, error=str(exc))

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run background work, kept until done (and cancelled by ``stop``), failures logged."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(reap)
        return task

    async def _compact_forever(self) -> None:
        while True:
            await asyncio.sleep(self.compact_every)
            try:
                deleted = await self.store.compact()
            except Exception:
                log.exception("chat.compact_failed")
                continue
            for room, count in deleted.items():
                self.metrics.compacted.labels(room).inc(count)
                if count and (hub := self._hubs.get(room)) is not None:
                    hub.history.clear()  # kept blocks may hold what was just deleted
                    hub.history_chars.clear()

    # rooms ---------------------------------------------------------------------------------

    async def hub(self, room_id: str) -> RoomHub:
        """The room's hub, loaded from the store on first use (raises UnknownRoom)."""
        if (hub := self._hubs.get(room_id)) is not None:
            return hub
        lock = self._loading.setdefault(room_id, asyncio.Lock())
        try:
            async with lock:
                if (hub := self._hubs.get(room_id)) is not None:
                    return hub
                members = await self.store.members(room_id)
                room = await self.store.get_room(room_id)
                assert room is not None  # members() raised UnknownRoom otherwise
                cursors = {m.user: m.cursor for m in members}
                # setdefault: a loader racing on a fresh lock must not replace a live hub.
                return self._hubs.setdefault(room_id, RoomHub(room_id, room.head, cursors))
        finally:
            # Locks exist only while loading: unknown room names must not accumulate.
            self._loading.pop(room_id, None)

    def loaded(self, room_id: str) -> RoomHub | None:
        """The room's hub if it is loaded already (no wait)."""
        return self._hubs.get(room_id)

    def hubs(self) -> list[RoomHub]:
        """Rooms loaded so far."""
        return list(self._hubs.values())

    async def room_for(self, room_id: str, user: User) -> RoomHub:
        """The room's hub for a user's own call; UnknownRoom for a closed room they are not in.

        That a closed room exists is for its members only (docs/security.md), so it answers a
        non-member as a missing room does, and after the same work: the room and the user's
        memberships are read in both cases, before the room's state is loaded (loading it
        first made a closed room answer measurably later than a missing one).
        """
        hub = self._hubs.get(room_id)
        if hub is not None and user.id in hub.cursors:
            return hub
        room = await self.store.get_room(room_id)
        mine = await self.store.membership(user.id)  # read for a missing room too (see above)
        if room is None or not (room.open or any(m.room == room_id for m in mine)):
            raise UnknownRoom(room_id)
        return await self.hub(room_id)

    async def ensure_member(self, room_id: str, user: User) -> int:
        """The user's cursor in the room, joining it when it is open.

        Raises UnknownRoom for a closed room the user is not in, as for a missing room
        (``room_for``).
        """
        hub = await self.room_for(room_id, user)
        if user.id in hub.cursors:
            return hub.cursors[user.id]
        room = await self.store.get_room(room_id)
        if room is None or not room.open:
            raise UnknownRoom(room_id)
        member: Member = await self.store.join(room_id, user.id)
        hub.cursors.setdefault(user.id, member.cursor)
        return hub.cursors[user.id]

    async def is_member(self, hub: RoomHub, user_id: str) -> bool:
        """Whether the user is a member of an open room; raises UnknownRoom for a closed one.

        For users' own calls that need a membership and do not join (ack, typing, leave): a
        non-member of a closed room learns no more than of a missing room.
        """
        if user_id in hub.cursors:
            return True
        room = await self.store.get_room(hub.room)
        if room is None or not room.open:
            raise UnknownRoom(hub.room)
        return False

    async def join(self, room_id: str, user_id: str, cursor: int | None = None) -> Member:
        """Make a user a member (administration), keeping the hub's cursors in step."""
        hub = await self.hub(room_id)
        member = await self.store.join(room_id, user_id, cursor)
        hub.cursors.setdefault(user_id, member.cursor)
        return member

    async def leave(self, room_id: str, user: User) -> bool:
        """End a membership."""
        hub = await self.hub(room_id)
        left = await self.store.leave(room_id, user.id)
        hub.cursors.pop(user.id, None)
        return left

    # messages ------------------------------------------------------------------------------

    async def send(self, room_id: str, user: User, key: str, body: str) -> Appended:
        """Store a message durably, publish it, and return its seq (same key → same seq)."""
        await self.ensure_member(room_id, user)
        hub = await self.hub(room_id)
        stored = self.submit(hub, user, key, body)
        try:
            # Shielded: the append finishes (and is published) even if this caller goes.
            return await asyncio.shield(stored)
        except asyncio.CancelledError:
            stored.add_done_callback(reap)  # its failure is logged: nobody is left to hear it
            raise

    def submit(self, hub: RoomHub, user: User, key: str, body: str) -> asyncio.Future[Appended]:
        """Start storing a member's message; the future settles once it is durable.

        The message is published by a callback on the store's future before any other
        callback runs, whoever waits for it (or not): a sender that disconnects mid-send
        cannot leave a stored message unpublished (the hub would wait for it).
        """
        stored = asyncio.ensure_future(self.store.append(hub.room, user.id, key, body))
        stored.add_done_callback(functools.partial(self._stored, hub, user.id, [(key, body)]))
        return stored

    def submit_many(
        self, hub: RoomHub, user: User, items: list[tuple[str, str]]
    ) -> asyncio.Future[Sequence[Appended | BaseException]]:
        """``submit`` for several ``(key, body)`` of one member: one future for the lot.

        A WebSocket client packs its sends into arrays; the store writes them as one
        operation (one future, and one batch of the room's log). Each item's outcome is an
        ``Appended`` or the error that refused it.
        """
        stored = asyncio.ensure_future(self.store.append_many(hub.room, user.id, items))
        stored.add_done_callback(functools.partial(self._stored, hub, user.id, items))
        return stored

    def _stored(
        self,
        hub: RoomHub,
        sender: str,
        items: list[tuple[str, str]],
        stored: asyncio.Future[Any],
    ) -> None:
        """Publish what a ``submit`` stored (failures are for its caller, or ``reap``)."""
        if stored.cancelled() or stored.exception() is not None:
            return
        outcome = stored.result()
        outcomes = outcome if isinstance(outcome, list) else [outcome]
        published = 0
        for (key, body), appended in zip(items, outcomes, strict=True):
            if not isinstance(appended, Appended):
                continue
            if appended.duplicate:
                self.metrics.duplicate_sends.labels(hub.room).inc()
                continue
            frame = message_frame(hub.room, appended.seq, sender, key, body, appended.sent_at)
            hub.publish(Entry(appended.seq, sender, encode(frame)))
            published += 1
        if published:
            if (counter := self._in.get(hub.room)) is None:
                counter = self._in[hub.room] = self.metrics.messages_in.labels(hub.room)
            counter.inc(published)
        if hub.pending and not hub.filling:  # a hole before what was published
            hub.filling = True
            self._spawn(self._fill(hub), f"chat.fill:{hub.room}")

    async def _fill(self, hub: RoomHub) -> None:
        """Read a hole in the published sequence back from the store (visibility rule).

        Until the hole is filled nothing after it is delivered in the room, so an unavailable
        store is retried (with backoff) until it answers.
        """
        retry = Backoff()
        try:
            while hub.pending:
                before = hub.head
                try:
                    msgs = await self.store.read(hub.room, hub.head, limit=RECENT)
                except StoreUnavailable as exc:
                    log.warning("chat.fill_waits_for_store", room=hub.room, error=str(exc))
                    await retry.wait()
                    continue
                retry.reset()
                for msg in msgs:
                    hub.publish(Entry.of(msg))
                if hub.head == before:
                    await asyncio.sleep(0.01)  # the hole's append has not committed yet
        finally:
            hub.filling = False

    async def fetch(self, hub: RoomHub, after: int, limit: int = 256) -> list[Entry]:
        """Published messages after a seq: from memory when it reaches, else from the store
        (the history block holding ``after + 1``, read once for every reader of the room)."""
        cached = hub.cached(after, limit)
        if cached is not None:
            return cached
        entries = await self._history(hub, after - after % HISTORY_BLOCK)
        found = [e for e in entries if e.seq > after][:limit]
        if not found and after < hub.head:
            # A shared read that ended before what this reader needs was stored (a part block,
            # waited for): read it alone rather than report nothing and wait for a new message.
            msgs = await self.store.read(hub.room, after, min(limit, hub.head - after))
            found = [Entry.of(m) for m in msgs if m.seq <= hub.head]
        return found

    async def _history(self, hub: RoomHub, start: int) -> list[Entry]:
        """The published entries after ``start`` (a block start), up to a block's worth.

        A whole block (every seq of it) is kept for the room's other readers; a read that
        fails or is cancelled is not, and whoever waited for it reads for itself.
        """
        while (pending := hub.history.get(start)) is not None:
            if not pending.done():
                await asyncio.wait([pending])
            if not pending.cancelled():
                if hub.history.get(start) is pending:  # (a part block is not kept)
                    hub.history.move_to_end(start)
                return pending.result()
            if hub.history.get(start) is pending:
                self._drop_history(hub, start)
        fut: asyncio.Future[list[Entry]] = asyncio.get_running_loop().create_future()
        hub.history[start] = fut
        try:
            msgs = await self.store.read(hub.room, start, HISTORY_BLOCK)
        except BaseException:
            if hub.history.get(start) is fut:
                self._drop_history(hub, start)
            fut.cancel()  # its waiters read for themselves
            raise
        entries = [Entry.of(m) for m in msgs if m.seq <= hub.head]
        fut.set_result(entries)
        if hub.history.get(start) is fut:
            whole = len(entries) == HISTORY_BLOCK and entries[-1].seq == start + HISTORY_BLOCK
            if not whole:
                self._drop_history(hub, start)
            else:
                hub.history_chars[start] = sum(len(e.text) for e in entries)
                while len(hub.history) > HISTORY_BLOCKS_KEPT or (
                    len(hub.history) > 1 and sum(hub.history_chars.values()) > HISTORY_CHARS_KEPT
                ):
                    self._drop_history(hub, next(iter(hub.history)))
        return entries

    @staticmethod
    def _drop_history(hub: RoomHub, start: int) -> None:
        hub.history.pop(start, None)
        hub.history_chars.pop(start, None)

    async def fetch_batch(self, hub: RoomHub, after: int, limit: int = 256) -> Batch | None:
        """``fetch`` as one shared ``Batch`` (None: nothing published after ``after``)."""
        if after >= hub.head:
            return None
        if (batch := hub.batch(after, limit)) is not None:
            return batch
        entries = await self.fetch(hub, after, limit)
        return Batch.of(entries) if entries else None

    def count_delivery(self, hub: RoomHub, user: str, entries: list[Entry]) -> None:
        """Metrics for a delivery: messages out, and redeliveries seen since start."""
        self.count_batch(hub, user, entries[0].seq, entries[-1].seq)

    def count_batch(self, hub: RoomHub, user: str, first: int, last: int) -> None:
        """Metrics for delivering seqs ``first..last`` (consecutive) to ``user``."""
        seen = hub.delivered_max.get(user, 0)
        if (out := self._out.get(hub.room)) is None:
            out = self._out[hub.room] = self.metrics.messages_out.labels(hub.room)
        out.inc(last - first + 1)
        if seen >= first:
            self.metrics.redeliveries.labels(hub.room).inc(min(seen, last) - first + 1)
        if last > seen:
            hub.delivered_max[user] = last

    # acknowledgements ----------------------------------------------------------------------

    def request_ack(self, hub: RoomHub, user: str, seq: int) -> None:
        """Advance a cursor in the background; the room's acks of a moment share one write."""
        if seq <= hub.cursors.get(user, seq):
            return  # nothing to move, or not a member
        hub.ack_targets[user] = max(hub.ack_targets.get(user, 0), seq)
        if hub.ack_task is None or hub.ack_task.done():
            # ``stop`` writes what is left (``_last_acks``) before closing the store.
            hub.ack_task = asyncio.create_task(self._flush_acks(hub))
            hub.ack_task.add_done_callback(reap)

    async def _flush_acks(self, hub: RoomHub) -> None:
        """Write the room's requested cursors, ACK_LINGER apart, until none is left.

        With 100 receivers each acking every 20 ms, one write per ack would be 5,000 small
        transactions per second; one per room per ACK_LINGER is 50. An unavailable store is
        retried (the targets are kept); the cursors trail meanwhile, which means redelivery
        after a reconnect, never loss.
        """
        retry = Backoff()
        while hub.ack_targets:
            await asyncio.sleep(ACK_LINGER)
            targets, hub.ack_targets = hub.ack_targets, {}
            try:
                cursors = await self.store.ack_many(hub.room, targets)
            except StoreUnavailable as exc:
                log.warning("chat.acks_wait_for_store", room=hub.room, error=str(exc))
                for user, seq in targets.items():
                    hub.ack_targets[user] = max(hub.ack_targets.get(user, 0), seq)
                await retry.wait()
                continue
            retry.reset()
            self._cursors_moved(hub, cursors)

    async def ack(self, hub: RoomHub, user: str, seq: int) -> int:
        """Advance a cursor durably, then (soon) tell listeners what everyone has."""
        cursor = await self.store.ack(hub.room, user, seq)
        self._cursors_moved(hub, {user: cursor})
        return cursor

    def _cursors_moved(self, hub: RoomHub, cursors: dict[str, int]) -> None:
        for user, cursor in cursors.items():
            if user in hub.cursors:
                hub.cursors[user] = max(hub.cursors[user], cursor)
        if hub.delivered != hub.receipt_sent and hub.receipt_timer is None:
            # Receipts are coalesced: with many members, one per ack would cost O(members)
            # frames per message; every RECEIPT_EVERY seconds is plenty for "delivered".
            loop = asyncio.get_running_loop()
            hub.receipt_timer = loop.call_later(RECEIPT_EVERY, self._send_receipt, hub)

    def _send_receipt(self, hub: RoomHub) -> None:
        hub.receipt_timer = None
        hub.send_receipt()

    # presence ------------------------------------------------------------------------------

    def went_online(self, hub: RoomHub, user: str, owner: object, listener: Listener) -> None:
        """A session listens to the room; everyone hears who is online."""
        hub.listeners[owner] = listener
        hub.online[user] = hub.online.get(user, 0) + 1
        hub.broadcast(hub.presence_frame())

    def went_offline(self, hub: RoomHub, user: str, owner: object) -> None:
        """A session stopped listening to the room."""
        if hub.listeners.pop(owner, None) is None:
            return
        hub.online[user] = hub.online.get(user, 1) - 1
        if hub.online[user] <= 0:
            del hub.online[user]
        hub.broadcast(hub.presence_frame())

    def lag(self) -> dict[str, int]:
        """Per loaded room: messages published but not yet acknowledged by every member."""
        return {hub.room: hub.head - hub.delivered for hub in self._hubs.values()}
