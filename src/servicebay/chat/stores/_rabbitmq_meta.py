"""The RabbitMQ chat store's local metadata: the SQLite store plus the log's index.

Where it sits: ``stores.rabbitmq`` keeps every chat message in RabbitMQ streams and everything
else here, in one SQLite file (WAL, synchronous=NORMAL as chosen there, group-committed by the
SQLite store's writer thread): users, token digests, rooms (with ``head`` and ``floor``),
members with their cursors, the idempotency keys (room, sender, key) → (seq, sent_at), and the
index from a seq to the stream entry that holds it. Its messages table stays empty.

Stored fields added to the SQLite store's schema:

- ``rmq_segments(room, first_seq, stream, first_offset, gen)``: from ``first_seq`` on, the
  room's entries sit in ``stream`` (generation ``gen`` of the room's streams) from offset
  ``first_offset`` on, until the next segment begins. A new segment starts after every resync
  marker and at every new generation.
- ``rmq_entries(room, first_seq, gen, offset)``: the packed entry at ``offset`` of generation
  ``gen``'s stream holds seqs ``first_seq`` up to the next row's ``first_seq`` - 1 (or the head).
  One row per published entry, written in the transaction that records its keys.
- ``rmq_settings(name, value)``: ``store_id``, the random prefix of this store's stream names;
  ``format``, how entries are laid out (``packed``; files from before packing are refused);
  ``synced``, how often ``make_durable`` had to sync with a commit of its own.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from dataclasses import dataclass, field
from typing import NamedTuple

import structlog

from servicebay.chat.stores.base import StoreNotOpened, StoreUnavailable, UnknownRoom
from servicebay.chat.stores.sqlite import (
    KEY_GRACE_SECONDS,
    SQLiteChatStore,
    insert_rows,
    known_keys,
)

log = structlog.get_logger("servicebay.chat.rabbitmq")

_TABLES = (
    "CREATE TABLE IF NOT EXISTS rmq_segments (room TEXT NOT NULL, first_seq INTEGER NOT NULL, "
    "stream TEXT NOT NULL, first_offset INTEGER NOT NULL, gen INTEGER NOT NULL, "
    "PRIMARY KEY (room, first_seq)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS rmq_entries (room TEXT NOT NULL, first_seq INTEGER NOT NULL, "
    "gen INTEGER NOT NULL, offset INTEGER NOT NULL, PRIMARY KEY (room, first_seq)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS rmq_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
FORMAT = "packed"
# How long make_durable's checkpoint waits for the store's writer or a reader (on the store's
# checkpointer thread: reads and writes go on meanwhile), and how long its fallback commit
# waits for the write lock.
CHECKPOINT_WAIT = 1.0
DURABLE_WAIT = 10.0


@dataclass(frozen=True)
class Segment:
    """A run of consecutive seqs at consecutive offsets of one stream."""

    room: str
    first_seq: int
    stream: str
    first_offset: int
    gen: int


@dataclass(frozen=True)
class Placed:
    """Where a stored entry sits: its first seq, its stream's generation, its offset there."""

    first_seq: int
    gen: int
    offset: int


class Recorded(NamedTuple):
    """One message as its key is recorded: who sent it under which key, and when."""

    sender: str
    key: str
    seq: int
    sent_at: float


@dataclass(frozen=True)
class BatchCheck:
    """What a batch of appends needs to know before it publishes.

    ``failed``: the (sender, key) pairs whose own check raised (a text SQLite cannot take, such
    as a lone surrogate), with what it raised: those appends fail, the rest of the batch goes on.
    """

    head: int
    members: frozenset[str]
    known: dict[tuple[str, str], tuple[int, float]]
    failed: dict[tuple[str, str], Exception] = field(default_factory=dict)


class MetaStore(SQLiteChatStore):
    """The SQLite store with the tables and queries the RabbitMQ store needs."""

    durable_wait = DURABLE_WAIT

    async def open(self) -> None:
        """Open the SQLite store and add the log's index tables (refusing an older layout)."""
        await super().open()

        def op(c: sqlite3.Connection) -> bool:
            for sql in _TABLES:
                c.execute(sql)
            row = c.execute("SELECT value FROM rmq_settings WHERE name = 'format'").fetchone()
            if row is not None:
                return bool(row[0] == FORMAT)
            if c.execute("SELECT 1 FROM rmq_segments LIMIT 1").fetchone() is not None:
                return False  # written before packing: one entry per message, offsets differ
            c.execute("INSERT INTO rmq_settings VALUES ('format', ?)", (FORMAT,))
            return True

        if not await self._write(op):
            await self.close()
            raise StoreNotOpened(
                f"the metadata file {self.path} was written by an older servicebay (one stream "
                "entry per message); start with a new state file"
            )

    async def store_id(self) -> str:
        """This store's random stream-name prefix, created on first use."""
        candidate = secrets.token_hex(4)

        def op(c: sqlite3.Connection) -> str:
            c.execute("INSERT OR IGNORE INTO rmq_settings VALUES ('store_id', ?)", (candidate,))
            row = c.execute("SELECT value FROM rmq_settings WHERE name = 'store_id'").fetchone()
            return str(row[0])

        return await self._write(op)

    async def segments(self) -> list[Segment]:
        """Every segment, by room and first seq."""
        sql = "SELECT * FROM rmq_segments ORDER BY room, first_seq"
        rows = await self._read(lambda c: c.execute(sql).fetchall())
        return [Segment(r[0], int(r[1]), r[2], int(r[3]), int(r[4])) for r in rows]

    async def span(self, room_id: str) -> tuple[int, int]:
        """The room's (head, floor) as recorded; raises UnknownRoom."""
        sql = "SELECT head, floor FROM rooms WHERE id = ?"
        row = await self._read(lambda c: c.execute(sql, (room_id,)).fetchone())
        if row is None:
            raise UnknownRoom(room_id)
        return int(row[0]), int(row[1])

    async def check(self, room_id: str, pairs: list[tuple[str, str]]) -> BatchCheck:
        """Head, the senders that are members, and which (sender, key) pairs are known."""
        return await self._read(lambda c: _check(c, room_id, pairs))

    async def entry_at(self, room_id: str, seq: int) -> Placed | None:
        """The recorded entry holding ``seq`` (None: none recorded at or before it)."""
        sql = (
            "SELECT first_seq, gen, offset FROM rmq_entries WHERE room = ? AND first_seq <= ? "
            "ORDER BY first_seq DESC LIMIT 1"
        )
        row = await self._read(lambda c: c.execute(sql, (room_id, seq)).fetchone())
        return None if row is None else Placed(int(row[0]), int(row[1]), int(row[2]))

    async def record(
        self,
        room_id: str,
        rows: list[Recorded],
        head: int,
        entries: list[Placed],
        then_check: list[tuple[str, str]] | None = None,
        segment: Segment | None = None,
    ) -> BatchCheck | None:
        """Durably record published messages' keys and entries, the new head and a segment.

        With ``then_check``, the next batch's ``check`` runs in the same transaction, after the
        record (so it sees these keys): one hand-off to the writer thread instead of two. That
        check concerns the next batch only: a pair it cannot check is in ``failed`` (raising
        would take this record back); only the database failing fails the record.
        """

        def op(c: sqlite3.Connection) -> BatchCheck | None:
            keys = [(room_id, r.sender, r.key, r.seq, r.sent_at) for r in rows]
            insert_rows(c, "keys", keys, "INSERT OR IGNORE")
            placed = [(room_id, e.first_seq, e.gen, e.offset) for e in entries]
            insert_rows(c, "rmq_entries", placed, "INSERT OR REPLACE")
            c.execute("UPDATE rooms SET head = max(head, ?) WHERE id = ?", (head, room_id))
            # The SQLite store's writer caches heads for ack/join; only the writer thread (where
            # this runs) touches that cache.
            self._heads[room_id] = max(head, self._heads.get(room_id, 0))
            if segment is not None:
                c.execute(
                    "INSERT OR REPLACE INTO rmq_segments VALUES (?, ?, ?, ?, ?)",
                    (room_id, segment.first_seq, segment.stream, segment.first_offset, segment.gen),
                )
            return _check(c, room_id, then_check) if then_check else None

        return await self._write(op)

    async def make_durable(self) -> None:
        """Make what is committed so far survive a power loss (commits here skip the fsync).

        For the rare records resync cannot rebuild, such as the segment a room's seqs continue
        in. A FULL checkpoint syncs the WAL, then the database file; but a reader holding an
        older snapshot (a backup, an operator's ``sqlite3``) keeps it from finishing (busy=1):
        the frames past that reader's are then neither copied nor synced. That is not taken
        for durable: a commit with ``synchronous=FULL`` then syncs the WAL, which holds every
        commit before it. Raises ``StoreUnavailable`` when neither could be done.
        """
        busy = await self._on_checkpointer(_checkpoint_full)
        if not busy:
            return
        log.warning("chat.rabbitmq.checkpoint_busy", path=self.path)
        try:
            await asyncio.to_thread(_synced_commit, self.path, self.durable_wait)
        except sqlite3.Error as exc:
            raise StoreUnavailable(
                f"the metadata file {self.path} could not be synced to disk ({exc}); retry"
            ) from exc

    async def drop_stream(self, room_id: str, gen: int) -> None:
        """Forget the segments and entries of a deleted stream (generation ``gen``)."""

        def op(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM rmq_segments WHERE room = ? AND gen = ?", (room_id, gen))
            c.execute("DELETE FROM rmq_entries WHERE room = ? AND gen = ?", (room_id, gen))

        await self._write(op)

    async def advance_floors(self, now: float) -> dict[str, tuple[int, int]]:
        """Raise each room's floor as far as retention allows: room → (deleted, new floor)."""
        return await self._write(lambda c: _advance(c, now))


def _checkpoint_full(c: sqlite3.Connection) -> bool:
    """A FULL checkpoint (on the checkpointer's connection); True when it could not finish."""
    # Waiting the connection's 30 s for a reader to move would stall the store's checkpoints.
    usual = int(c.execute("PRAGMA busy_timeout").fetchone()[0])
    c.execute(f"PRAGMA busy_timeout={int(CHECKPOINT_WAIT * 1000)}")
    try:
        busy, _, _ = c.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
    finally:
        c.execute(f"PRAGMA busy_timeout={usual}")
    return bool(busy)


def _synced_commit(path: str, wait: float) -> None:
    """Commit a change with synchronous=FULL on a connection of its own (syncs the WAL)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=wait)
    try:
        # The setting cannot change inside a transaction, so not on the writer's connection.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        # A changed row: a commit that writes no page syncs nothing.
        conn.execute(
            "INSERT INTO rmq_settings VALUES ('synced', '1') "
            "ON CONFLICT(name) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


def _check(c: sqlite3.Connection, room_id: str, pairs: list[tuple[str, str]]) -> BatchCheck:
    """Raises only for the room (UnknownRoom) or the database; a pair's own failure is kept."""
    row = c.execute("SELECT head FROM rooms WHERE id = ?", (room_id,)).fetchone()
    if row is None:
        raise UnknownRoom(room_id)
    member = "SELECT 1 FROM members WHERE room = ? AND user = ?"
    sent = "SELECT seq, sent_at FROM keys WHERE room = ? AND sender = ? AND key = ?"
    members: set[str] = set()
    known: dict[tuple[str, str], tuple[int, float]] = {}
    failed: dict[tuple[str, str], Exception] = {}
    by_sender: dict[str, list[str]] = {}
    for sender, key in dict.fromkeys(pairs):
        by_sender.setdefault(sender, []).append(key)
    for sender, keys in by_sender.items():
        try:  # one statement per sender (and 500 keys), as the SQLite store does
            if c.execute(member, (room_id, sender)).fetchone():
                members.add(sender)
            found = {
                key: (a.seq, a.sent_at) for key, a in known_keys(c, room_id, sender, keys).items()
            }
        except sqlite3.Error:
            raise  # the database failed, not a pair: the whole check fails
        except Exception:  # a value that cannot be bound: each pair is judged alone
            found = {}
            for key in keys:
                try:
                    if sender not in members and c.execute(member, (room_id, sender)).fetchone():
                        members.add(sender)
                    hit = c.execute(sent, (room_id, sender, key)).fetchone()
                except sqlite3.Error:
                    raise
                except Exception as exc:  # handed to that append's caller, never swallowed
                    failed[(sender, key)] = exc
                    continue
                if hit is not None:
                    found[key] = (int(hit[0]), float(hit[1]))
        for key, first in found.items():
            known[(sender, key)] = first
    return BatchCheck(int(row[0]), frozenset(members), known, failed)


def _advance(c: sqlite3.Connection, now: float) -> dict[str, tuple[int, int]]:
    """The SQLite store's retention rule, over the keys table (one row per stored seq)."""
    moved: dict[str, tuple[int, int]] = {}
    rooms = c.execute(
        "SELECT id, keep_seconds, keep_last, head, floor FROM rooms WHERE keep_all = 0"
    ).fetchall()
    for room_id, keep_seconds, keep_last, head, floor in rooms:
        acked = c.execute("SELECT min(cursor) FROM members WHERE room = ?", (room_id,)).fetchone()
        limit = min(head if acked[0] is None else int(acked[0]), head - int(keep_last))
        old = c.execute(
            "SELECT max(seq) FROM keys WHERE room = ? AND seq <= ? AND sent_at <= ?",
            (room_id, limit, now - float(keep_seconds)),
        ).fetchone()[0]
        if old is None or int(old) <= floor:
            continue
        # Seqs are consecutive, so everything in (floor, old] existed and is now gone.
        c.execute("UPDATE rooms SET floor = ? WHERE id = ?", (int(old), room_id))
        moved[room_id] = (int(old) - int(floor), int(old))
    c.execute(
        "DELETE FROM keys WHERE sent_at < ? AND seq <= (SELECT floor FROM rooms WHERE id = room)",
        (now - KEY_GRACE_SECONDS,),
    )
    return moved
