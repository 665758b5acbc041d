"""The embedded chat store: an SQLite log in WAL mode with group commit.

Where it sits: the default ``ChatStore`` behind the chat server. One writer thread owns the only
writing connection. Every write (append, ack, join, ...) is staged on the event loop and the
writes of one loop turn go to the writer together (one thread hand-off per turn, not one per
write: a wake-up of another thread costs syscalls); the writer drains all queued writes, runs them
in ONE transaction (each in its own savepoint, so one failing write does not undo its
neighbours), commits, and only then answers each caller, one wake-up per event loop. Concurrent
senders thus share one fsync while "durable before acknowledged" still holds. Reads run on a
second thread with its own connection, which WAL lets proceed while the writer commits. A third
thread checkpoints the WAL into the database file (``_checkpoint_loop``): the writer's commits
never wait for a checkpoint's copy and fsyncs.

Seqs are assigned inside the writer's transaction from the cached ``rooms.head``, so they are
consecutive per room and become visible in seq order (the visibility rule of the store
interface); ``rooms.head`` is written once per room per transaction, before its commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson
import structlog

from servicebay.chat.stores._owner import OwnerLock
from servicebay.chat.stores.base import (
    Appended,
    ChatStoreError,
    IssuedToken,
    Member,
    Message,
    NotMember,
    Retention,
    Room,
    StoreNotOpened,
    StoreUnavailable,
    UnknownRoom,
    UnknownUser,
    User,
)

log = structlog.get_logger("servicebay.chat.sqlite")

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]

# How long an idempotency key outlives its compacted message: a client that lost the answer to
# a send retries within seconds; a day is ample and bounds the table.
KEY_GRACE_SECONDS = 86400.0
MAX_BATCH = 2000
# The checkpointer copies the WAL into the database at most this often, after commits. SQLite's
# automatic checkpoint runs inside a commit (every 1,000 WAL pages) and fsyncs the database
# there: a write waiting behind it held up every answer (an 80 ms record among 3,000 of 0.2 ms,
# RabbitMQ store's metadata at 500 msg/s, 16:45 UTC).
CHECKPOINT_EVERY = 0.25

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY, display_name TEXT NOT NULL, kind TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    token_id TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(id),
    digest TEXT NOT NULL UNIQUE, label TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rooms (
    id TEXT PRIMARY KEY, keep_all INTEGER NOT NULL, keep_seconds REAL NOT NULL,
    keep_last INTEGER NOT NULL, open INTEGER NOT NULL, head INTEGER NOT NULL,
    floor INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS members (
    room TEXT NOT NULL, user TEXT NOT NULL, cursor INTEGER NOT NULL, joined_at REAL NOT NULL,
    PRIMARY KEY (room, user)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_by_user ON members(user);
CREATE TABLE IF NOT EXISTS messages (
    room TEXT NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL, key TEXT NOT NULL,
    body TEXT NOT NULL, sent_at REAL NOT NULL, PRIMARY KEY (room, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS keys (
    room TEXT NOT NULL, sender TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL,
    sent_at REAL NOT NULL, PRIMARY KEY (room, sender, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
"""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _room(row: sqlite3.Row | tuple[Any, ...]) -> Room:
    rid, keep_all, keep_seconds, keep_last, is_open, head, floor = row
    retention = Retention(bool(keep_all), float(keep_seconds), int(keep_last))
    return Room(rid, retention, bool(is_open), int(head), int(floor))


def _connect(path: str, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit survives power loss, not only a killed process; "durable before ack".
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    # Commits on this connection never checkpoint: the store's checkpointer thread does.
    conn.execute("PRAGMA wal_autocheckpoint=0")
    return conn


def _checkpoint(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """Copy what the WAL holds into the database without waiting for readers or the writer.

    (busy, WAL frames, frames checkpointed), as ``PRAGMA wal_checkpoint`` answers. The WAL starts
    over at the writer's next transaction once every frame is copied and no reader needs them.
    """
    busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(busy), int(frames), int(copied)


class _Pending:
    """A queued operation and the future its caller awaits.

    ``checked``: the operation raises ``ChatStoreError`` only before its first write, so it needs
    no savepoint of its own (the hot paths, append and ack, are written that way). Should it
    raise anything else, the batch is rolled back and run again without it (``_commit_batch``).
    """

    __slots__ = ("checked", "fut", "loop", "op")

    def __init__(
        self, op: Op, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], checked: bool
    ) -> None:
        self.op, self.loop, self.fut, self.checked = op, loop, fut, checked


Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]
_COMMITTED = object()  # to the checkpointer: the writer committed, a checkpoint is due


class _OpFailed(Exception):
    """A checked op raised something other than ``ChatStoreError`` (it may have written)."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(f"op {index} failed: {error!r}")
        self.index, self.error = index, error


def _settle(outcomes: list[Outcome]) -> None:
    for fut, result, error in outcomes:
        if fut.done():
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)


def _run_one(item: _Pending, conn: sqlite3.Connection) -> None:
    """Run a read (or a checkpointer's op) and answer its caller."""
    try:
        result, error = item.op(conn), None
    except Exception as exc:  # handed to its caller, never swallowed
        result, error = None, exc
    _answer([item], [(result, error)])


def _answer(batch: list[_Pending], results: list[tuple[Any, BaseException | None]]) -> None:
    """Settle every caller's future with one wake-up per event loop, not one per caller."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for item, (result, error) in zip(batch, results, strict=True):
        by_loop.setdefault(item.loop, []).append((item.fut, result, error))
    for loop, outcomes in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there
            loop.call_soon_threadsafe(_settle, outcomes)


class SQLiteChatStore:
    """``ChatStore`` on one SQLite file (see module docstring for the write path)."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        """Use the database at ``path`` (created on open)."""
        if synchronous.upper() not in {"FULL", "NORMAL", "EXTRA", "OFF"}:
            raise ValueError(f"unsupported synchronous mode {synchronous!r}")
        self.path = str(path)
        self.synchronous = synchronous.upper()
        self._writes: queue.Queue[list[_Pending] | None] = queue.Queue()
        self._staged: list[_Pending] = []  # this loop turn's writes, handed over together
        self._hand_off_on: asyncio.AbstractEventLoop | None = None  # the loop that will
        self._reads: queue.Queue[_Pending | None] = queue.Queue()
        # The checkpointer's queue: _COMMITTED (a checkpoint is due), an op to run on its
        # connection (a FULL checkpoint: two checkpoints at once would refuse one), None (stop).
        self._checkpoints: queue.Queue[_Pending | object | None] = queue.Queue()
        self._checkpoint_asked = False  # set by the writer, cleared by the checkpointer
        self._threads: list[threading.Thread] = []
        self._closed = True
        self._owner = OwnerLock(self.path)
        self.batches = 0
        # Writer-thread caches (only the writer writes, so they stay true; cleared on rollback).
        self._heads: dict[str, int] = {}
        self._dirty_heads: dict[str, int] = {}  # appended this transaction, not yet in rooms
        self._members: set[tuple[str, str]] = set()
        self.batched_writes = 0

    # lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        """Take the owner lock, create the schema, start the writer and reader threads.

        Refused (``StoreNotOpened``) when the file's directory does not exist (a typo must not
        create a tree of directories), when another process owns the store (``StoreInUse``,
        checked before the database is touched), or when the file cannot be opened or written.
        """
        folder = Path(self.path).parent
        if not folder.is_dir():
            raise StoreNotOpened(f"the directory {folder} of the SQLite store does not exist")
        self._owner.acquire()
        opened: list[sqlite3.Connection] = []
        try:
            # Messages and token digests are the owner's only: SQLite would create the file 0644
            # (less the umask), and its -wal/-shm files copy the database's mode.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            writer = _connect(self.path, self.synchronous)
            opened.append(writer)
            writer.executescript(_SCHEMA)
            if writer.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 0:
                writer.execute("INSERT INTO schema_version VALUES (1)")
            for _ in range(2):  # the reader's, the checkpointer's
                opened.append(_connect(self.path, self.synchronous))
        except (OSError, sqlite3.Error) as exc:
            for conn in opened:
                conn.close()
            self._owner.release()
            why = exc.strerror if isinstance(exc, OSError) else exc
            raise StoreNotOpened(f"cannot open the SQLite store {self.path}: {why}") from None
        reader, checkpointer = opened[1:]
        self._closed = False
        self._checkpoint_asked = False
        self._threads = [
            threading.Thread(target=self._write_loop, args=(writer,), daemon=True),
            threading.Thread(target=self._read_loop, args=(reader,), daemon=True),
            threading.Thread(target=self._checkpoint_loop, args=(checkpointer,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    async def close(self) -> None:
        """Let queued writes finish, then stop the threads."""
        if self._closed:
            return
        self._closed = True
        self._hand_off()  # staged writes finish first
        self._writes.put(None)
        self._reads.put(None)
        for thread in self._threads[:2]:
            await asyncio.to_thread(thread.join)
        self._checkpoints.put(None)  # after the writer: its last commits are checkpointed too
        for thread in self._threads[2:]:
            await asyncio.to_thread(thread.join)
        self._owner.release()

    async def ping(self) -> None:
        """Run a trivial read."""
        await self._read(lambda c: c.execute("SELECT 1").fetchone())

    # the two threads ---------------------------------------------------------------------------

    def _stage(self, op: Op, checked: bool = False) -> asyncio.Future[Any]:
        """Queue a write for the writer; this loop turn's writes are handed over together."""
        if self._closed:
            raise StoreUnavailable("the chat store is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._staged.append(_Pending(op, loop, fut, checked))
        if self._hand_off_on is not loop:  # (a loop that stopped before it ran: ask this one)
            self._hand_off_on = loop
            loop.call_soon(self._hand_off)
        return fut

    def _hand_off(self) -> None:
        self._hand_off_on = None
        if self._staged:
            staged, self._staged = self._staged, []
            self._writes.put(staged)

    async def _write(self, op: Callable[[sqlite3.Connection], T], checked: bool = False) -> T:
        result: T = await self._stage(op, checked)
        return result

    async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run_on(self._reads, op)

    async def _run_on(self, inbox: queue.Queue[Any], op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` on the connection of the thread serving ``inbox`` (reader, checkpointer)."""
        if self._closed:
            raise StoreUnavailable("the chat store is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        inbox.put(_Pending(op, loop, fut, False))
        return await fut

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        running = True
        while running:
            first = self._writes.get()
            if first is None:
                break
            batch = list(first)
            while len(batch) < MAX_BATCH:
                try:
                    more = self._writes.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    running = False
                    break
                batch.extend(more)
            self._commit_batch(conn, batch)
        conn.close()

    def _checkpoint_loop(self, conn: sqlite3.Connection) -> None:
        """Checkpoint after commits, at most every CHECKPOINT_EVERY seconds, and run the ops
        asked of this connection (``_on_checkpointer``), until closed."""
        last, due_at = -CHECKPOINT_EVERY, None
        try:
            while True:
                wait = None if due_at is None else max(0.0, due_at - time.monotonic())
                try:
                    item = self._checkpoints.get(timeout=wait)
                except queue.Empty:
                    item = _COMMITTED  # the due time came
                if item is None:
                    self._passive_checkpoint(conn)
                    return
                if isinstance(item, _Pending):
                    _run_one(item, conn)
                elif due_at is None:
                    due_at = max(time.monotonic(), last + CHECKPOINT_EVERY)
                if due_at is not None and time.monotonic() >= due_at:
                    # Cleared first: a commit from here on asks again (none is left out).
                    self._checkpoint_asked = False
                    self._passive_checkpoint(conn)
                    last, due_at = time.monotonic(), None
        finally:
            conn.close()

    def _passive_checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            _checkpoint(conn)
        except Exception as exc:  # the next commit brings another try
            log.warning("chat.store.checkpoint_failed", error=f"{type(exc).__name__}: {exc}")

    async def _on_checkpointer(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` on the checkpointer's connection (between its own checkpoints)."""
        return await self._run_on(self._checkpoints, op)

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[_Pending]) -> None:
        failed: dict[int, BaseException] = {}
        while True:
            try:
                results = self._run_batch(conn, batch, failed)
            except _OpFailed as exc:
                # A checked op failed in a way it does not promise to before its first write
                # (a bug, or input no caller should have let through, e.g. a lone surrogate):
                # undo the transaction and run the batch again without it. Only that op fails.
                self._roll_back(conn)
                failed[exc.index] = exc.error  # handed to its caller, never swallowed
                continue
            except Exception as exc:
                # Nothing of this batch is durable: every caller hears so and may retry.
                self._roll_back(conn)
                # The database's words go to the log; callers (and so clients) hear "unavailable".
                log.warning("chat.store.commit_failed", error=f"{type(exc).__name__}: {exc}")
                failure = StoreUnavailable("the chat store could not commit this write; retry")
                results = [(None, failure)] * len(batch)
            break
        self.batches += 1
        self.batched_writes += len(batch)
        _answer(batch, results)
        if not self._checkpoint_asked:  # one wake-up of the checkpointer per checkpoint
            self._checkpoint_asked = True
            self._checkpoints.put(_COMMITTED)

    def _run_batch(
        self, conn: sqlite3.Connection, batch: list[_Pending], failed: dict[int, BaseException]
    ) -> list[tuple[Any, BaseException | None]]:
        """Apply and commit the batch in one transaction; ops in ``failed`` are left out."""
        results: list[tuple[Any, BaseException | None]] = []
        conn.execute("BEGIN IMMEDIATE")
        for index, item in enumerate(batch):
            if index in failed:
                results.append((None, failed[index]))
            else:
                results.append(self._apply(conn, item, index))
        self._write_heads(conn)
        conn.execute("COMMIT")
        return results

    def _roll_back(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        self._heads.clear()
        self._dirty_heads.clear()
        self._members.clear()

    def _apply(
        self, conn: sqlite3.Connection, item: _Pending, index: int
    ) -> tuple[Any, BaseException | None]:
        if item.checked:
            try:
                return item.op(conn), None
            except ChatStoreError as exc:  # raised before any write: nothing to undo
                return None, exc
            except sqlite3.Error:
                raise  # the database failed, not this op: the whole batch is unavailable
            except Exception as exc:  # it may have written: only a rollback undoes it
                raise _OpFailed(index, exc) from exc
        # Its rollback must not undo the heads of appends before it (nor read stale ones).
        self._write_heads(conn)
        conn.execute("SAVEPOINT op")
        try:
            result = item.op(conn)
        except Exception as exc:  # handed to its caller, never swallowed
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            self._heads.clear()
            self._members.clear()
            return None, exc
        conn.execute("RELEASE op")
        return result, None

    def _write_heads(self, conn: sqlite3.Connection) -> None:
        """Write the heads of the rooms appended to since the last call (writer thread only)."""
        if self._dirty_heads:
            sql = "UPDATE rooms SET head = ? WHERE id = ?"
            conn.executemany(sql, [(seq, room) for room, seq in self._dirty_heads.items()])
            self._dirty_heads.clear()

    def _read_loop(self, conn: sqlite3.Connection) -> None:
        while (item := self._reads.get()) is not None:
            _run_one(item, conn)
        conn.close()

    # users and tokens --------------------------------------------------------------------------

    async def put_user(self, user_id: str, display_name: str = "", kind: str = "person") -> User:
        """Create or update a user."""

        def op(c: sqlite3.Connection) -> User:
            c.execute(
                "INSERT INTO users VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "display_name = excluded.display_name, kind = excluded.kind",
                (user_id, display_name or user_id, kind),
            )
            return User(user_id, display_name or user_id, kind)

        return await self._write(op)

    async def get_user(self, user_id: str) -> User | None:
        """The user, or None."""

        def op(c: sqlite3.Connection) -> User | None:
            row = c.execute(
                "SELECT id, display_name, kind FROM users WHERE id = ?", (user_id,)
            ).fetchone()
            return User(*row) if row else None

        return await self._read(op)

    async def issue_token(self, user_id: str, label: str = "") -> IssuedToken:
        """Issue a token; only its sha256 digest is stored."""
        token = secrets.token_urlsafe(32)
        token_id = secrets.token_hex(8)

        def op(c: sqlite3.Connection) -> IssuedToken:
            if c.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone() is None:
                raise UnknownUser(user_id)
            c.execute(
                "INSERT INTO tokens VALUES (?, ?, ?, ?, ?)",
                (token_id, user_id, _digest(token), label, time.time()),
            )
            return IssuedToken(token_id, user_id, token)

        return await self._write(op)

    async def revoke_token(self, token_id: str) -> bool:
        """Delete one token."""

        def op(c: sqlite3.Connection) -> bool:
            return c.execute("DELETE FROM tokens WHERE token_id = ?", (token_id,)).rowcount > 0

        return await self._write(op)

    async def authenticate(self, token: str) -> User | None:
        """Look the token up by digest."""
        digest = _digest(token)

        def op(c: sqlite3.Connection) -> User | None:
            row = c.execute(
                "SELECT u.id, u.display_name, u.kind FROM tokens t JOIN users u "
                "ON u.id = t.user_id WHERE t.digest = ?",
                (digest,),
            ).fetchone()
            return User(*row) if row else None

        return await self._read(op)

    # rooms and members -------------------------------------------------------------------------

    async def put_room(
        self, room_id: str, retention: Retention | None = None, open: bool = True
    ) -> Room:
        """Create a room or update its settings."""

        retention = retention or Retention()

        def op(c: sqlite3.Connection) -> Room:
            c.execute(
                "INSERT INTO rooms VALUES (?, ?, ?, ?, ?, 0, 0) ON CONFLICT(id) DO UPDATE SET "
                "keep_all = excluded.keep_all, keep_seconds = excluded.keep_seconds, "
                "keep_last = excluded.keep_last, open = excluded.open",
                (
                    room_id,
                    int(retention.keep_all),
                    retention.keep_seconds,
                    retention.keep_last,
                    int(open),
                ),
            )
            return _room(c.execute("SELECT * FROM rooms WHERE id = ?", (room_id,)).fetchone())

        return await self._write(op)

    async def get_room(self, room_id: str) -> Room | None:
        """The room, or None."""

        def op(c: sqlite3.Connection) -> Room | None:
            row = c.execute("SELECT * FROM rooms WHERE id = ?", (room_id,)).fetchone()
            return _room(row) if row else None

        return await self._read(op)

    async def list_rooms(self) -> list[Room]:
        """Every room, by id."""
        rows = await self._read(lambda c: c.execute("SELECT * FROM rooms ORDER BY id").fetchall())
        return [_room(r) for r in rows]

    async def join(self, room_id: str, user_id: str, cursor: int | None = None) -> Member:
        """Add a member (idempotent)."""

        def op(c: sqlite3.Connection) -> Member:
            head = _head(c, room_id)
            if c.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone() is None:
                raise UnknownUser(user_id)
            start = head if cursor is None else max(0, min(cursor, head))
            c.execute(
                "INSERT OR IGNORE INTO members VALUES (?, ?, ?, ?)",
                (room_id, user_id, start, time.time()),
            )
            row = c.execute(
                "SELECT room, user, cursor, joined_at FROM members WHERE room = ? AND user = ?",
                (room_id, user_id),
            ).fetchone()
            return Member(*row)

        return await self._write(op)

    async def leave(self, room_id: str, user_id: str) -> bool:
        """End a membership."""

        def op(c: sqlite3.Connection) -> bool:
            sql = "DELETE FROM members WHERE room = ? AND user = ?"
            self._members.discard((room_id, user_id))
            return c.execute(sql, (room_id, user_id)).rowcount > 0

        return await self._write(op)

    async def members(self, room_id: str) -> list[Member]:
        """The room's members."""

        def op(c: sqlite3.Connection) -> list[Member]:
            _head(c, room_id)
            sql = "SELECT room, user, cursor, joined_at FROM members WHERE room = ? ORDER BY user"
            return [Member(*r) for r in c.execute(sql, (room_id,))]

        return await self._read(op)

    async def membership(self, user_id: str) -> list[Member]:
        """The user's memberships."""
        sql = "SELECT room, user, cursor, joined_at FROM members WHERE user = ? ORDER BY room"
        rows = await self._read(lambda c: c.execute(sql, (user_id,)).fetchall())
        return [Member(*r) for r in rows]

    # the log -----------------------------------------------------------------------------------

    def append(self, room_id: str, sender: str, key: str, body: str) -> asyncio.Future[Appended]:
        """Append durably (group-committed with concurrent appends): a future, no task."""
        return self._stage(lambda c: self._append(c, room_id, sender, [(key, body)])[0], True)

    def append_many(
        self, room_id: str, sender: str, items: Sequence[tuple[str, str]]
    ) -> asyncio.Future[list[Appended]]:
        """``append`` for several ``(key, body)`` of one sender, in order, in one write.

        One future and a few statements for the lot: what a client's array of sends costs.
        A key repeated within ``items`` is a duplicate of its first occurrence.
        """
        items = list(items)
        return self._stage(lambda c: self._append(c, room_id, sender, items), True)

    def _append(
        self, c: sqlite3.Connection, room_id: str, sender: str, items: list[tuple[str, str]]
    ) -> list[Appended]:
        """Assign seqs after the cached head; known keys answer their first seq (writer only)."""
        head = self._head(c, room_id)
        self._check_member(c, room_id, sender)
        now = time.time()
        known = known_keys(c, room_id, sender, [key for key, _ in items])
        results: list[Appended] = []
        keys: list[tuple[str, str, str, int, float]] = []
        rows: list[tuple[str, int, str, str, str, float]] = []
        for key, body in items:
            if (first := known.get(key)) is not None:
                results.append(first)
                continue
            head += 1
            keys.append((room_id, sender, key, head, now))
            rows.append((room_id, head, sender, key, body, now))
            known[key] = Appended(head, now, True)
            results.append(Appended(head, now, False))
        if rows:
            insert_rows(c, "keys", keys)
            insert_rows(c, "messages", rows)
            self._heads[room_id] = self._dirty_heads[room_id] = head
        return results

    def _head(self, c: sqlite3.Connection, room_id: str) -> int:
        """The room's head, from the writer's cache (writer thread only)."""
        head = self._heads.get(room_id)
        if head is None:
            head = self._heads[room_id] = _head(c, room_id)
        return head

    def _check_member(self, c: sqlite3.Connection, room_id: str, user: str) -> None:
        """Raise NotMember unless the user is in the room (writer thread only)."""
        if (room_id, user) in self._members:
            return
        sql = "SELECT 1 FROM members WHERE room = ? AND user = ?"
        if c.execute(sql, (room_id, user)).fetchone() is None:
            raise NotMember(room_id, user)
        self._members.add((room_id, user))

    async def read(self, room_id: str, after: int, limit: int = 500) -> list[Message]:
        """Retained messages after a seq."""

        def op(c: sqlite3.Connection) -> list[Message]:
            rows = c.execute(
                "SELECT room, seq, sender, key, body, sent_at FROM messages "
                "WHERE room = ? AND seq > ? ORDER BY seq LIMIT ?",
                (room_id, after, limit),
            ).fetchall()
            if not rows:
                _head(c, room_id)
            return [Message(*r) for r in rows]

        return await self._read(op)

    async def ack(self, room_id: str, user_id: str, seq: int) -> int:
        """Advance a member's cursor durably."""

        def op(c: sqlite3.Connection) -> int:
            head = self._head(c, room_id)
            row = c.execute(
                "SELECT cursor FROM members WHERE room = ? AND user = ?", (room_id, user_id)
            ).fetchone()
            if row is None:
                raise NotMember(room_id, user_id)
            cursor = max(int(row[0]), min(seq, head))
            if cursor != row[0]:
                c.execute(
                    "UPDATE members SET cursor = ? WHERE room = ? AND user = ?",
                    (cursor, room_id, user_id),
                )
            return cursor

        return await self._write(op, checked=True)

    async def ack_many(self, room_id: str, seqs: dict[str, int]) -> dict[str, int]:
        """Advance several members' cursors in one write (non-members are left out)."""

        def op(c: sqlite3.Connection) -> dict[str, int]:
            head = self._head(c, room_id)
            sql = "SELECT user, cursor FROM members WHERE room = ?"
            known = {user: int(cursor) for user, cursor in c.execute(sql, (room_id,))}
            cursors = {u: max(known[u], min(s, head)) for u, s in seqs.items() if u in known}
            moved = [(cur, room_id, u) for u, cur in cursors.items() if cur != known[u]]
            sql = "UPDATE members SET cursor = ? WHERE room = ? AND user = ?"
            c.executemany(sql, moved)
            return cursors

        return await self._write(op, checked=True)

    async def compact(self, now: float | None = None) -> dict[str, int]:
        """Delete acknowledged messages that retention no longer keeps."""
        moment = time.time() if now is None else now
        return await self._write(lambda c: _compact(c, moment))


def insert_rows(
    c: sqlite3.Connection, table: str, rows: Sequence[Sequence[Any]], verb: str = "INSERT"
) -> None:
    """``{verb} INTO table VALUES`` for every row, in ONE statement step.

    ``executemany`` steps once per row, and the sqlite3 module lets the GIL go around every
    step: each row then has to win the GIL back from the event loop's thread, which keeps it
    for up to the switch interval when busy. Under load 256 rows took tens of milliseconds
    that way, and every hand-off interrupted the loop. Here the rows go as one JSON array
    (``json_each``): SQLite reads them back exactly (text, integers, and floats as orjson
    writes them). ``executemany`` stays for what JSON cannot carry as is: a string with a NUL
    (``->>`` ends the text there) or one orjson refuses (a lone surrogate: the error stays
    the driver's).
    """
    if not rows:
        return
    try:
        payload: bytes | None = orjson.dumps(rows)
    except orjson.JSONEncodeError:
        payload = None
    if payload is None or b"\\u0000" in payload:
        marks = ", ".join("?" * len(rows[0]))
        c.executemany(f"{verb} INTO {table} VALUES ({marks})", rows)
        return
    columns = ", ".join(f"value->>{i}" for i in range(len(rows[0])))
    sql = f"{verb} INTO {table} SELECT {columns} FROM json_each(?)"  # noqa: S608 - our names
    c.execute(sql, (payload,))


def known_keys(
    c: sqlite3.Connection, room_id: str, sender: str, keys: list[str]
) -> dict[str, Appended]:
    """The seqs already stored for some of ``keys`` (as duplicates)."""
    known: dict[str, Appended] = {}
    for at in range(0, len(keys), 500):  # SQLite's bound-parameter limit
        chunk = keys[at : at + 500]
        marks = ",".join("?" * len(chunk))
        where = f"room = ? AND sender = ? AND key IN ({marks})"  # placeholders only
        sql = "SELECT key, seq, sent_at FROM keys WHERE " + where  # noqa: S608
        for key, seq, sent_at in c.execute(sql, (room_id, sender, *chunk)):
            known[key] = Appended(int(seq), float(sent_at), True)
    return known


def _head(c: sqlite3.Connection, room_id: str) -> int:
    row = c.execute("SELECT head FROM rooms WHERE id = ?", (room_id,)).fetchone()
    if row is None:
        raise UnknownRoom(room_id)
    return int(row[0])


def _compact(c: sqlite3.Connection, now: float) -> dict[str, int]:
    deleted: dict[str, int] = {}
    for row in c.execute("SELECT * FROM rooms WHERE keep_all = 0").fetchall():
        room = _room(row)
        acked = c.execute("SELECT min(cursor) FROM members WHERE room = ?", (room.id,)).fetchone()[
            0
        ]
        acked = room.head if acked is None else int(acked)
        limit = min(acked, room.head - room.retention.keep_last)
        old = c.execute(
            "SELECT max(seq) FROM messages WHERE room = ? AND seq <= ? AND sent_at <= ?",
            (room.id, limit, now - room.retention.keep_seconds),
        ).fetchone()[0]
        if old is None or int(old) <= room.floor:
            continue
        # Deleting a prefix (seq <= old) keeps "floor" exact: everything at or below it is gone.
        count = c.execute(
            "DELETE FROM messages WHERE room = ? AND seq <= ?", (room.id, int(old))
        ).rowcount
        c.execute("UPDATE rooms SET floor = ? WHERE id = ?", (int(old), room.id))
        deleted[room.id] = count
    c.execute(
        "DELETE FROM keys WHERE sent_at < ? AND seq <= (SELECT floor FROM rooms WHERE id = room)",
        (now - KEY_GRACE_SECONDS,),
    )
    return deleted
