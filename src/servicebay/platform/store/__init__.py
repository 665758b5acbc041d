"""The platform store: one SQLAlchemy async engine over SQLite (default) or PostgreSQL.

The schema is owned by Alembic migrations (``migrations/``), applied on every start by
:meth:`Database.migrate`; the tables are described in :mod:`.tables`. Services use
:meth:`Database.begin` for one transaction per use case and never hold one across a broker call.
On SQLite, statements run on the event loop and wait in a thread only for another process's
write lock (:class:`_SQLiteCursor`), write transactions take turns on one kept connection and
begin and end on the driver (:meth:`Database.begin`); on PostgreSQL, :meth:`Database.notify`
and :meth:`Database.listen` carry wake-ups between processes. Hot statements are built once
(:mod:`.statements`, :func:`update_by_id`, :func:`delete_by_id`) and on SQLite run straight on
the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from servicebay.platform.keys import Cipher
from servicebay.platform.store import tables
from servicebay.platform.store.statements import Statement, busy, plain_rows

log = logging.getLogger("servicebay.platform.store")

__all__ = [
    "Database",
    "Statement",
    "by_id_params",
    "delete_by_id",
    "plain_rows",
    "tables",
    "update_by_id",
    "utcnow",
]

_NOTIFY = sa.text("SELECT pg_notify(:channel, :payload)")


async def _listen_once(
    url: str, callbacks: dict[str, Callable[[str], None]], stop: asyncio.Event
) -> None:
    """Listen on one connection until ``stop`` is set or the connection is lost."""
    connection = await asyncpg.connect(url, timeout=10)
    lost = asyncio.Event()
    connection.add_termination_listener(lambda _conn: lost.set())
    try:
        for channel, callback in callbacks.items():
            await connection.add_listener(channel, _relay(callback))
        waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lost.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
    finally:
        # Closing a listener that is going away anyway: a failure changes nothing.
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await connection.close(timeout=2)


def _relay(callback: Callable[[str], None]) -> Callable[[Any, int, str, str], None]:
    def on_notification(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        callback(payload)

    return on_notification


# Any fixed number: the advisory lock that serialises migrations across platform processes.
_MIGRATION_LOCK = 7_470_001


def utcnow() -> dt.datetime:
    """Naive UTC now: every stored timestamp is naive UTC, so both backends compare alike."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _urls(url: str) -> tuple[URL, URL]:
    """The (async runtime, sync migration) URLs for a driverless database URL."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite"), parsed.set(drivername="sqlite")
    if backend == "postgresql":
        return (
            parsed.set(drivername="postgresql+asyncpg"),
            parsed.set(drivername="postgresql+psycopg"),
        )
    raise ValueError(f"unsupported database URL {parsed.drivername!r}: use sqlite or postgresql")


# Statements the hot paths execute with new values each time are built once per shape: building
# and cache-keying a statement costs more than executing it on SQLite.


@functools.lru_cache(maxsize=256)
def update_by_id(
    table: sa.Table, columns: tuple[str, ...], guard: tuple[str, tuple[str, ...]] | None = None
) -> Statement:
    """``UPDATE table SET col = :_col ... WHERE id = :_key`` (built once per shape).

    ``guard`` = (column, states) adds ``AND owner = :_owner AND <column> IN states`` (the
    worker's lease check). Execute with ``{"_key": id, "_owner": ..., "_<col>": value}``.
    """
    c = table.c
    where = [c.id == sa.bindparam("_key", type_=c.id.type)]
    if guard is not None:
        column, states = guard
        where.append(c.owner == sa.bindparam("_owner", type_=c.owner.type))
        where.append(sa.or_(*(c[column] == state for state in states)))
    values = {name: sa.bindparam("_" + name, type_=c[name].type) for name in columns}
    return Statement(table.update().where(*where).values(values))


@functools.lru_cache(maxsize=32)
def delete_by_id(table: sa.Table) -> Statement:
    """``DELETE FROM table WHERE id = :_key`` (built once)."""
    return Statement(
        table.delete().where(table.c.id == sa.bindparam("_key", type_=table.c.id.type))
    )


def by_id_params(key: str, values: dict[str, Any], owner: str | None = None) -> dict[str, Any]:
    """The parameters of :func:`update_by_id` / :func:`delete_by_id`."""
    params = {"_" + name: value for name, value in values.items()}
    params["_key"] = key
    if owner is not None:
        params["_owner"] = owner
    return params


def _create_private_file(path: Path) -> None:
    """Create the SQLite file 0600 (its folder 0700) before SQLite does: SQLite would make it
    0644 less the umask, and its -wal/-shm files copy the database's mode."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


class Database:
    """The platform's database: migrations, transactions, and which backend it is."""

    def __init__(self, url: str) -> None:
        self._async_url, self._sync_url = _urls(url)
        self.is_postgres = self._async_url.get_backend_name() == "postgresql"
        if not self.is_postgres and self._async_url.database not in (None, "", ":memory:"):
            _create_private_file(Path(self._async_url.database))
        # Every use goes through begin()/read(), which always ends its transaction, so the
        # pool's reset-on-return would be a second, redundant round trip per transaction.
        kwargs: dict[str, Any] = {"pool_reset_on_return": None}
        if self.is_postgres:
            kwargs.update(pool_size=10, max_overflow=10, pool_pre_ping=True, pool_recycle=1800)
        if not self.is_postgres:
            # Connections are kept, never churned: opening one costs a thread and the pragmas.
            kwargs.update(pool_size=4, max_overflow=0, pool_timeout=60)
        if not self.is_postgres:
            kwargs["async_creator"] = _sqlite_creator(self._async_url)
        self.engine: AsyncEngine = create_async_engine(self._async_url, **kwargs)
        self._reader = self.engine
        self._write_lock: asyncio.Lock | None = None
        # SQLite: the one connection every write transaction of the process uses (see begin).
        self._writer: AsyncConnection | None = None
        self._rollback_hooks: list[Callable[[], None]] = []
        if not self.is_postgres:
            # SQLite has one writer at a time; its busy handler makes waiters sleep up to
            # 100 ms between tries. Queueing this process's writers on an asyncio lock hands
            # the write lock over at once (other processes still meet the busy timeout).
            self._write_lock = asyncio.Lock()
            _sqlite_pragmas(self.engine)
            _sqlite_immediate(self.engine)
            # Readers need no write lock: in WAL mode they never block, nor wait for, writers.
            self._reader = create_async_engine(
                self._async_url, **{**kwargs, "pool_size": 16, "max_overflow": 16}
            )
            _sqlite_pragmas(self._reader)

    async def migrate(self, cipher: Cipher | None = None) -> None:
        """Bring the schema to the newest revision (safe when several processes start at once).

        ``cipher`` opens stored secrets for migrations that need them (0004 masks the brokers'
        credentials in stored text); without it such a migration refuses a database that has
        them.
        """
        await asyncio.to_thread(self._migrate_sync, cipher)

    def _migrate_sync(self, cipher: Cipher | None) -> None:
        engine = sa.create_engine(self._sync_url)
        try:
            with engine.connect() as conn:
                if self.is_postgres:
                    conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK})
                    conn.commit()
                try:
                    config = Config()
                    config.set_main_option(
                        "script_location", str(Path(__file__).parent / "migrations")
                    )
                    config.attributes["connection"] = conn
                    config.attributes["cipher"] = cipher
                    command.upgrade(config, "head")
                    conn.commit()
                finally:
                    if self.is_postgres:
                        conn.execute(
                            sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK}
                        )
                        conn.commit()
        finally:
            engine.dispose()

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """One transaction: committed when the block ends, rolled back if it raises.

        On SQLite the process's write transactions take turns on one kept connection, and the
        transaction is begun and ended on the driver: SQLAlchemy's own begin and commit (pool
        checkout, a greenlet switch each way, events) cost more than the transaction's
        :class:`Statement` s. A statement run through SQLAlchemy joins the transaction, which
        SQLAlchemy then commits or rolls back itself.
        """
        if self._write_lock is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock:
            conn = self._writer or await self._open_writer()
            driver = _driver(conn)
            await driver.begin_immediate()
            self._rollback_hooks = []
            try:
                yield conn
                await (conn.commit() if conn.in_transaction() else driver.commit())
            except BaseException:
                await self._rollback(conn, driver)
                raise
            await driver.checkpoint_if_due()

    async def _open_writer(self) -> AsyncConnection:
        """The kept writer connection of SQLite (see :meth:`begin`)."""
        self._writer = await self.engine.connect()
        return self._writer

    async def _rollback(self, conn: AsyncConnection, driver: _SQLiteConnection) -> None:
        hooks, self._rollback_hooks = self._rollback_hooks, []
        try:
            await (conn.rollback() if conn.in_transaction() else driver.rollback())
        except BaseException:
            # Not reused in an unknown state (the next begin opens one), but closed, so the
            # pool gets its connection back.
            self._writer = None
            with contextlib.suppress(Exception):
                await asyncio.shield(conn.close())
            raise
        finally:
            for hook in hooks:
                hook()

    def on_rollback(self, conn: AsyncConnection, hook: Callable[[], None]) -> None:
        """Call ``hook`` if the transaction of :meth:`begin` that ``conn`` is in rolls back."""
        if self._write_lock is None:
            event.listen(conn.sync_connection, "rollback", lambda _conn: hook(), once=True)
        else:
            self._rollback_hooks.append(hook)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction (on SQLite it does not queue behind writers)."""
        async with self._reader.begin() as conn:
            yield conn

    async def notify(self, conn: AsyncConnection, channel: str, payload: str = "") -> None:
        """On PostgreSQL, signal ``channel`` to every listening process when ``conn``'s
        transaction commits (nothing on SQLite: there, other processes poll)."""
        if self.is_postgres:
            await conn.execute(_NOTIFY, {"channel": channel, "payload": payload})

    async def listen(
        self, callbacks: dict[str, Callable[[str], None]], stop: asyncio.Event
    ) -> None:
        """On PostgreSQL, call ``callbacks[channel](payload)`` for every notification until
        ``stop`` is set, on a connection of its own that is reopened if it drops. A process
        that misses notifications meanwhile still polls, so this only ever saves waiting."""
        url = self._async_url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not stop.is_set():
            try:
                await _listen_once(url, callbacks, stop)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("not listening for notifications (%s); polling", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def close(self) -> None:
        """Release every pooled connection."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await writer.close()
        await self.engine.dispose()
        if self._reader is not self.engine:
            await self._reader.dispose()


def _sqlite_immediate(engine: AsyncEngine) -> None:
    """Make SQLite transactions take the write lock up front and wait for it.

    A deferred SQLite transaction that reads and then writes fails at once with "database is
    locked" when another connection writes meanwhile; ``BEGIN IMMEDIATE`` with a busy timeout
    queues writers instead, which is what several workers sharing one file need.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Database.begin has begun the transaction on the driver already, and a statement run
        # through SQLAlchemy inside it only opens SQLAlchemy's view of that same transaction.
        if not conn.connection.driver_connection.sqlite.in_transaction:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_pragmas(engine: AsyncEngine) -> None:
    """WAL (readers and one writer at a time), foreign keys enforced, commits without fsync;
    busy waits and checkpoints are left to the connection (:class:`_SQLiteConnection`)."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=0")  # see _SQLiteCursor: waits happen in a thread
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA wal_autocheckpoint=0")  # see _SQLiteConnection.commit
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


# The busy timeout of statements that wait in aiosqlite's thread (another process writes).
_BUSY_TIMEOUT_MS = 30000
# Commits (of the process) between two WAL checkpoints (run in the thread: they fsync).
_CHECKPOINT_EVERY = 200


def _driver(conn: AsyncConnection) -> _SQLiteConnection:
    """The aiosqlite connection under a SQLite ``conn``."""
    driver = conn.sync_connection.connection.driver_connection if conn.sync_connection else None
    assert isinstance(driver, _SQLiteConnection)
    return driver


def _waiting(connection: sqlite3.Connection, run: Callable[[], Any]) -> Any:
    """``run()`` with SQLite's busy timeout on (in aiosqlite's thread: it may sleep)."""
    connection.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    try:
        return run()
    finally:
        connection.execute("PRAGMA busy_timeout=0")


class _SQLiteCursor(aiosqlite.Cursor):
    """An aiosqlite cursor that runs its statement on the event loop unless SQLite is busy.

    aiosqlite hands every call (cursor, execute, fetchall, close) to its thread and back; each
    hand-off wakes a thread and then the loop, which costs more CPU than the statement (a WAL
    read never waits for a writer, and a primary-key lookup or an insert without fsync takes
    tens of microseconds). So a statement and the fetch of its rows run here, with SQLite's busy
    timeout at zero; only when another process holds the write lock (``database is locked``)
    does it go to the connection's thread, which waits for the lock with the usual timeout. The
    event loop never waits for another process. ``servicebay.broker``'s SQLite store does the
    same for the same reason.
    """

    _rows: list[Any] | None = None

    async def execute(self, sql: str, parameters: Iterable[Any] | None = None) -> aiosqlite.Cursor:
        values: Any = [] if parameters is None else parameters
        try:
            self._rows = self._run(sql, values)
        except sqlite3.OperationalError as exc:
            if not busy(exc):
                raise
            hand_off: Callable[..., Awaitable[list[Any] | None]] = self._execute  # untyped
            self._rows = await hand_off(self._run_waiting, sql, values)
        return self

    def _run(self, sql: str, parameters: Any) -> list[Any] | None:
        self._cursor.execute(sql, parameters)
        return self._cursor.fetchall() if self._cursor.description else None

    def _run_waiting(self, sql: str, parameters: Any) -> list[Any] | None:
        rows: list[Any] | None = _waiting(
            self._cursor.connection, partial(self._run, sql, parameters)
        )
        return rows

    async def fetchall(self) -> Iterable[sqlite3.Row]:
        rows, self._rows = self._rows, None
        return rows if rows is not None else self._cursor.fetchall()

    async def close(self) -> None:
        self._rows = None
        self._cursor.close()


class _SQLiteConnection(aiosqlite.Connection):
    """An aiosqlite connection whose statements run on the loop (see :class:`_SQLiteCursor`)."""

    commits = 0  # of every connection of the process, for the checkpoint cadence

    @property
    def sqlite(self) -> sqlite3.Connection:
        """The driver's own connection, on which :class:`.statements.Statement` runs."""
        return self._conn

    def cursor(self) -> Any:  # a plain call: no hand-off needed
        return _SQLiteCursor(self, self._conn.cursor())

    async def begin_immediate(self) -> None:
        """Begin a write transaction: at once, or in the thread while another process writes."""
        if self._conn.in_transaction:
            # Left open by a begin cancelled while it waited in the thread: nothing uses it.
            self._conn.rollback()
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not busy(exc):
                raise
            hand_off: Callable[..., Awaitable[Any]] = self._execute  # untyped upstream
            waiting = asyncio.ensure_future(
                hand_off(_waiting, self._conn, partial(self._conn.execute, "BEGIN IMMEDIATE"))
            )
            try:
                await asyncio.shield(waiting)
            except asyncio.CancelledError:
                # The thread goes on waiting for the lock. Until it is done, the connection
                # (and the caller's turn on it) stays ours; then no transaction is left behind.
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.shield(waiting)
                if not waiting.done():  # cancelled twice: stop waiting, retrieve its outcome
                    waiting.add_done_callback(lambda done: done.cancelled() or done.exception())
                if self._conn.in_transaction:
                    self._conn.rollback()
                raise

    async def commit(self) -> None:
        if not self._conn.in_transaction:
            return  # a read-only use has nothing to commit
        # In WAL mode the writer already holds the lock, and with synchronous=NORMAL a commit
        # appends to the WAL without fsync; the checkpoint that does fsync runs in the thread.
        self._conn.commit()
        _SQLiteConnection.commits += 1

    async def checkpoint_if_due(self) -> None:
        """Every so many commits, a PASSIVE checkpoint in the thread. Run after a transaction's
        outcome is settled: its failure or cancellation must not look like a rollback."""
        if _SQLiteConnection.commits % _CHECKPOINT_EVERY or self._conn.in_transaction:
            return
        hand_off: Callable[..., Awaitable[Any]] = self._execute  # untyped upstream
        job = asyncio.ensure_future(hand_off(self._checkpoint))
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(job)  # the connection is ours until the thread is done
            raise
        except sqlite3.Error as exc:  # a missed checkpoint only lets the WAL grow a little
            log.warning("WAL checkpoint failed (%s)", type(exc).__name__)

    def _checkpoint(self) -> None:
        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # fetched: finished

    async def rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.rollback()


def _sqlite_creator(url: URL) -> Any:
    """The engine's ``async_creator``: the dialect's own connect arguments, our connection.

    Statements run on the event loop's thread and, when SQLite is busy, on aiosqlite's own
    thread, so the connection must allow use from more than one thread (never at once:
    SQLAlchemy uses a connection for one statement at a time).
    """
    args, params = SQLiteDialect_aiosqlite().create_connect_args(url)
    params["check_same_thread"] = False

    async def connect() -> aiosqlite.Connection:
        connection = _SQLiteConnection(partial(sqlite3.connect, *args, **params), 64)
        connection._thread.daemon = True  # as SQLAlchemy's own aiosqlite connect does
        return await connection

    return connect
