"""The `Store` in SQL: a SQLite file by default, PostgreSQL at scale (SQLAlchemy schema).

Where it sits: the SDK's lifecycle calls the store on every request (about two calls per OSB
request), so this is the broker's hot path. `open_store` picks the backend from the URL. Tables
are defined once below with SQLAlchemy and created on ``open()``, with a one-row
``broker_schema`` table holding the schema version and a key check (a token encrypted with the
store's key, so a wrong key fails at start rather than on the first binding fetch).

Several broker processes may share one database (uvicorn workers, replicas): every write is a
single atomic statement (insert-if-absent for ``create_*``, upsert for ``put_*``), and the
operation lease is a conditional UPDATE on SQLite (whose writers are serialised) and
``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, so a running operation is never picked up
by a second process while its owner is alive.

`SqlStore` turns records into rows; a driver runs SQL prepared once from that metadata straight
on the database library, because SQLAlchemy's execution layer (pool checkout, statement handling,
the greenlet bridge) cost more per call than the database work itself. The PostgreSQL driver
awaits each statement on an asyncpg pool (autocommit; the lease in a transaction).

Its SQLite driver runs prepared SQL on two stdlib connections (WAL mode, ``synchronous=NORMAL``: a
commit survives a process crash, which is what a killed broker needs). A WAL read never waits
for a writer and a primary-key lookup costs tens of microseconds, less than handing it to a
thread (which, on a busy machine, costs milliseconds: the thread waits for the GIL and a CPU),
so reads run on the event loop: on the writer connection while it is free (its page cache
survives its own commits, while the reader's is dropped after every commit and read again), on
the reader while a batch waits in our thread for another process. Writes run on the loop too
while this process can take the writer lock (an ``flock`` on ``<db>.writer-lock`` shared by
every process on the database) at once; when another process holds it, the write waits for it
in a thread, so the event loop never waits for another process. The fsync-heavy WAL checkpoint
also runs in a thread.

Writes are group-committed: a write is queued, and the writes queued during one turn of the event
loop (the requests in flight) run at the next turn as one transaction, each caller answered with
its own result once that transaction has committed. One commit per batch instead of one per
statement writes each touched page to the WAL once, not once per request (served lifecycle at
concurrency 16: ~25% less CPU per request). Durability is unchanged: a request is answered only
after its batch's COMMIT returned, and in WAL mode with ``synchronous=NORMAL`` a returned commit
is in the WAL file, so killing the process (even ``kill -9``) loses nothing acknowledged; an OS
crash or power cut may lose the last commits (``synchronous=FULL`` would fsync each batch, which
is what the batching would then amortise). A failing write rolls its batch back and the batch
runs again write by write, so only that write fails. A read waits for the writes this process
queued before it (not for another process), so each request still reads its own writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
from cryptography.fernet import Fernet
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL, Row, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool, StaticPool
from sqlalchemy.types import TypeDecorator

from servicebay.broker._crypto import (
    KEY_ENV,
    KEY_FILE_NAME,
    EncryptionKeyError,
    FieldCipher,
    load_or_create_key,
)
from servicebay.broker._store import (
    BindingRecord,
    InstanceRecord,
    OperationRecord,
    Store,
    StoreError,
    utcnow,
)

__all__ = ["SCHEMA_VERSION", "SqlStore", "database_url", "open_sql_store"]

# 2: fields sealed as "sb3:" tokens bound to their field, which version 1 cannot open; a
# version-1 store is marked 2 when opened, so an older servicebay says "upgrade", not "wrong key".
SCHEMA_VERSION = 2
_KEY_CHECK = "servicebay-broker-key-check"
_SQLITE_BUSY_TIMEOUT_S = 30.0
# WAL pages written before this process asks its thread for a checkpoint (SQLite's own default
# would run it inside a commit, on the event loop, with an fsync).
_CHECKPOINT_EVERY_WRITES = 500
# A WAL holding more frames than this (16 MB of 4 kB pages) after a checkpoint is started over
# (see _restart_wal): rarely, since each time the writers wait for its fsync.
_WAL_RESTART_FRAMES = 4096
_IN_PROGRESS = "in progress"
_NOT_OPEN = "the broker store is not open (call open() first)"
T = TypeVar("T")
R = TypeVar("R")


class _UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored as naive UTC, read back timezone-aware (SQLite keeps no zone)."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("the store only keeps timezone-aware datetimes")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


_metadata = MetaData()

_schema = Table(
    "broker_schema",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", Integer, nullable=False),
    Column("key_check", Text, nullable=False),
)

_instances = Table(
    "broker_instances",
    _metadata,
    Column("instance_id", String(255), primary_key=True),
    Column("service_id", String(255), nullable=False),
    Column("plan_id", String(255), nullable=False),
    Column("state", String(32), nullable=False),
    Column("request_fingerprint", String(255), nullable=False),
    Column("parameters", Text, nullable=False),  # encrypted JSON
    Column("context", Text, nullable=False),
    Column("maintenance_info", Text),
    Column("dashboard_url", Text),
    Column("metadata", Text),
    Column("created_at", _UTCDateTime, nullable=False),
    Column("updated_at", _UTCDateTime, nullable=False),
)

_bindings = Table(
    "broker_bindings",
    _metadata,
    Column("instance_id", String(255), primary_key=True),
    Column("binding_id", String(255), primary_key=True),
    Column("state", String(32), nullable=False),
    Column("request_fingerprint", String(255), nullable=False),
    Column("parameters", Text, nullable=False),  # encrypted JSON
    Column("response", Text, nullable=False),  # encrypted JSON: holds the credentials
    Column("created_at", _UTCDateTime, nullable=False),
    Column("updated_at", _UTCDateTime, nullable=False),
)

_operations = Table(
    "broker_operations",
    _metadata,
    Column("operation_id", String(255), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("instance_id", String(255), nullable=False),
    Column("binding_id", String(255)),
    Column("state", String(32), nullable=False),
    Column("description", Text),
    Column("instance_usable", Boolean),
    Column("update_repeatable", Boolean),
    Column("request", Text, nullable=False),  # encrypted JSON
    Column("deadline", _UTCDateTime),
    Column("owner", String(255)),
    Column("heartbeat_at", _UTCDateTime),
    Column("created_at", _UTCDateTime, nullable=False),
    Column("updated_at", _UTCDateTime, nullable=False),
    Index("ix_broker_operations_target", "instance_id", "binding_id", "created_at"),
    Index("ix_broker_operations_state", "state"),
)

_DATA = (_instances, _bindings, _operations)

_SQLITE_DRIVERS = {"sqlite", "sqlite+pysqlite", "sqlite+aiosqlite"}
_POSTGRES_DRIVERS = {
    "postgres",
    "postgresql",
    "postgresql+asyncpg",
    "postgresql+psycopg",
    "postgresql+psycopg2",
}


def database_url(url: str) -> URL:
    """``url`` parsed, with the driver this store uses (SQLite: stdlib sqlite3, PG: asyncpg)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(
            "the broker's database URL is not a URL; use sqlite:///path/to/file.db "
            "or postgresql://user@host/dbname"
        ) from exc
    if parsed.drivername in _SQLITE_DRIVERS:
        return parsed.set(drivername="sqlite+pysqlite")
    if parsed.drivername in _POSTGRES_DRIVERS:
        return parsed.set(drivername="postgresql+asyncpg")
    raise StoreError(
        f"unsupported database for the broker store: {parsed.drivername!r} "
        "(use sqlite:///path/to/file.db or postgresql://user@host/dbname)"
    )


def open_sql_store(url: str, key: str | None = None) -> Store:
    """The SQL store for ``url``, unopened (see `servicebay.broker._store.open_store`)."""
    return SqlStore(database_url(url), key)


# One encoder for every call: json.dumps with options builds a new one each time.
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _field(*parts: str) -> str:
    """A stored field's identity, the context its token is sealed for (a JSON array, so no id
    can make two fields' identities equal)."""
    return _dumps(parts)


_KEY_CHECK_FIELD = _field("broker_schema", "key_check")


def _dumps_opt(value: Any) -> str | None:
    return None if value is None else _dumps(value)


def _loads_opt(value: str | None) -> Any:
    return None if value is None else json.loads(value)


class _Codec:
    """Records to column values and back; the sensitive fields pass through the cipher."""

    def __init__(self, cipher: FieldCipher) -> None:
        self._cipher = cipher

    def instance_values(self, rec: InstanceRecord) -> dict[str, Any]:
        return {
            "instance_id": rec.instance_id,
            "service_id": rec.service_id,
            "plan_id": rec.plan_id,
            "state": rec.state,
            "request_fingerprint": rec.request_fingerprint,
            "parameters": self._cipher.encrypt(rec.parameters, _field("i", rec.instance_id, "p")),
            "context": _dumps(rec.context),
            "maintenance_info": _dumps_opt(rec.maintenance_info),
            "dashboard_url": rec.dashboard_url,
            "metadata": _dumps_opt(rec.metadata),
            "created_at": rec.created_at,
            "updated_at": rec.updated_at,
        }

    def instance(self, row: Mapping[Any, Any]) -> InstanceRecord:
        return InstanceRecord(
            instance_id=row["instance_id"],
            service_id=row["service_id"],
            plan_id=row["plan_id"],
            state=row["state"],
            request_fingerprint=row["request_fingerprint"],
            parameters=self._cipher.decrypt(
                row["parameters"], _field("i", row["instance_id"], "p")
            ),
            context=json.loads(row["context"]),
            maintenance_info=_loads_opt(row["maintenance_info"]),
            dashboard_url=row["dashboard_url"],
            metadata=_loads_opt(row["metadata"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    def binding_values(self, rec: BindingRecord) -> dict[str, Any]:
        # Encryption contexts name the field: a token opens only there.
        field = ("b", rec.instance_id, rec.binding_id)
        return {
            "instance_id": rec.instance_id,
            "binding_id": rec.binding_id,
            "state": rec.state,
            "request_fingerprint": rec.request_fingerprint,
            "parameters": self._cipher.encrypt(rec.parameters, _field(*field, "p")),
            "response": self._cipher.encrypt(rec.response, _field(*field, "r")),
            "created_at": rec.created_at,
            "updated_at": rec.updated_at,
        }

    def binding(self, row: Mapping[Any, Any]) -> BindingRecord:
        field = ("b", row["instance_id"], row["binding_id"])
        return BindingRecord(
            instance_id=row["instance_id"],
            binding_id=row["binding_id"],
            state=row["state"],
            request_fingerprint=row["request_fingerprint"],
            parameters=self._cipher.decrypt(row["parameters"], _field(*field, "p")),
            response=self._cipher.decrypt(row["response"], _field(*field, "r")),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    def operation_values(self, rec: OperationRecord) -> dict[str, Any]:
        return {
            "operation_id": rec.operation_id,
            # OperationKind is a str Enum; store its plain value.
            "kind": str(getattr(rec.kind, "value", rec.kind)),
            "instance_id": rec.instance_id,
            "binding_id": rec.binding_id,
            "state": str(getattr(rec.state, "value", rec.state)),
            "description": rec.description,
            "instance_usable": rec.instance_usable,
            "update_repeatable": rec.update_repeatable,
            "request": self._cipher.encrypt(rec.request, _field("o", rec.operation_id, "r")),
            "deadline": rec.deadline,
            "owner": rec.owner,
            "heartbeat_at": rec.heartbeat_at,
            "created_at": rec.created_at,
            "updated_at": rec.updated_at,
        }

    def operation(self, row: Mapping[Any, Any]) -> OperationRecord:
        return OperationRecord(
            operation_id=row["operation_id"],
            kind=row["kind"],
            instance_id=row["instance_id"],
            binding_id=row["binding_id"],
            state=row["state"],
            description=row["description"],
            instance_usable=row["instance_usable"],
            update_repeatable=row["update_repeatable"],
            request=self._cipher.decrypt(row["request"], _field("o", row["operation_id"], "r")),
            deadline=row["deadline"],
            owner=row["owner"],
            heartbeat_at=row["heartbeat_at"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


class _TableSQL:
    """A table's statements (``?`` placeholders) and the types its rows need restored."""

    def __init__(self, table: Table) -> None:
        self.columns = [c.name for c in table.columns]
        keys = [c.name for c in table.primary_key.columns]
        self.times = [c.name for c in table.columns if isinstance(c.type, _UTCDateTime)]
        self.flags = [c.name for c in table.columns if isinstance(c.type, Boolean)]
        names = ", ".join(f'"{c}"' for c in self.columns)
        marks = ", ".join("?" for _ in self.columns)
        # Identifiers come from our own Table metadata; every value is a bound parameter.
        insert = f"INSERT INTO {table.name} ({names}) VALUES ({marks})"  # noqa: S608
        # created_at is kept from the first write: an upsert updates, it does not re-create.
        changed = ", ".join(
            f'"{c}" = excluded."{c}"' for c in self.columns if c not in keys and c != "created_at"
        )
        self.create = f"{insert} ON CONFLICT DO NOTHING"
        self.upsert = f"{insert} ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {changed}"
        self.select = f"SELECT {names} FROM {table.name}"  # noqa: S608

    def params(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(values[c] for c in self.columns)


_I = _TableSQL(_instances)
_B = _TableSQL(_bindings)
_O = _TableSQL(_operations)

# The lease: an operation may be taken if it is unowned, already the taker's, or its holder's
# heartbeat is older than the cutoff. Parameters: operation_id, "in progress", owner, cutoff.
_CLAIM_SQLITE = (
    "UPDATE broker_operations SET owner = ?, heartbeat_at = ?, updated_at = ? "
    "WHERE operation_id = ? AND state = ? "
    "AND (owner IS NULL OR owner = ? OR heartbeat_at IS NULL OR heartbeat_at < ?)"
)
_CLAIM_LOCK_POSTGRES = (
    "SELECT operation_id FROM broker_operations WHERE operation_id = ? AND state = ? "
    "AND (owner IS NULL OR owner = ? OR heartbeat_at IS NULL OR heartbeat_at < ?) "
    "FOR UPDATE SKIP LOCKED"
)
_CLAIM_TAKE_POSTGRES = (
    "UPDATE broker_operations SET owner = ?, heartbeat_at = ?, updated_at = ? "
    "WHERE operation_id = ?"
)


class SqlStore:
    """`Store` in SQL: records become rows here; a driver (`_SQLite`, `_Postgres`) runs them."""

    def __init__(self, url: URL, key: str | None = None) -> None:
        self._url = url
        self._key = key or os.environ.get(KEY_ENV) or None
        self._db: _SQLite | _Postgres
        if url.get_backend_name() == "sqlite":
            self._db = _SQLite(url)
        elif self._key is None:
            raise EncryptionKeyError(
                "a PostgreSQL broker store needs an encryption key for credentials at rest: "
                f"set {KEY_ENV} (or BrokerSettings.key); create one with "
                '`python -c "from cryptography.fernet import Fernet; '
                'print(Fernet.generate_key().decode())"` and keep it with your secrets'
            )
        else:
            self._db = _Postgres(url)
        self._codec_: _Codec | None = None

    def __repr__(self) -> str:
        return f"SqlStore({self._url.render_as_string(hide_password=True)!r})"

    @property
    def key_file(self) -> Path | None:
        """The key file next to a SQLite database, used when no key is configured."""
        path = getattr(self._db, "path", None)
        if self._key is None and path is not None:
            return Path(path).resolve().parent / KEY_FILE_NAME
        return None

    async def open(self) -> None:
        """Connect, create missing tables, record or check the schema version and the key."""
        if self._codec_ is not None:
            return
        cipher = await self._cipher()
        await self._db.open(cipher)
        self._codec_ = _Codec(cipher)

    async def close(self) -> None:
        """Release the connections (and the SQLite threads)."""
        if self._codec_ is not None:
            self._codec_ = None
            await self._db.close()

    async def _cipher(self) -> FieldCipher:
        if self._key is not None:
            return FieldCipher(self._key)
        key_file = self.key_file
        if key_file is None:
            # An in-memory SQLite database dies with the process, and its key with it.
            return FieldCipher(Fernet.generate_key().decode())
        return FieldCipher(await asyncio.to_thread(load_or_create_key, key_file))

    @property
    def _codec(self) -> _Codec:
        if self._codec_ is None:
            raise StoreError(_NOT_OPEN)
        return self._codec_

    async def _one(self, table: _TableSQL, where: str, *params: Any) -> dict[str, Any] | None:
        rows = await self._db.read(table, f"{table.select} WHERE {where}", params)
        return rows[0] if rows else None

    # -- instances ---------------------------------------------------------------------------

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        """The instance record, or None."""
        row = await self._one(_I, "instance_id = ?", instance_id)
        return None if row is None else self._codec.instance(row)

    async def put_instance(self, record: InstanceRecord) -> None:
        """Insert or replace the instance record (stamps ``updated_at``)."""
        record.updated_at = utcnow()
        await self._db.write(_I.upsert, _I.params(self._codec.instance_values(record)))

    async def create_instance(self, record: InstanceRecord) -> bool:
        """Insert the record; False (nothing written) if the id exists."""
        values = _I.params(self._codec.instance_values(record))
        return await self._db.write(_I.create, values) == 1

    async def delete_instance(self, instance_id: str) -> None:
        """Forget the instance and its bindings; its operations stay for last_operation."""
        await self._db.write_together(
            [
                ("DELETE FROM broker_bindings WHERE instance_id = ?", (instance_id,)),
                ("DELETE FROM broker_instances WHERE instance_id = ?", (instance_id,)),
            ]
        )

    # -- bindings ----------------------------------------------------------------------------

    async def get_binding(self, instance_id: str, binding_id: str) -> BindingRecord | None:
        """The binding record, or None."""
        row = await self._one(_B, "instance_id = ? AND binding_id = ?", instance_id, binding_id)
        return None if row is None else self._codec.binding(row)

    async def create_binding(self, record: BindingRecord) -> bool:
        """Insert the record; False (nothing written) if the binding exists."""
        values = _B.params(self._codec.binding_values(record))
        return await self._db.write(_B.create, values) == 1

    async def put_binding(self, record: BindingRecord) -> None:
        """Insert or replace the binding record (stamps ``updated_at``)."""
        record.updated_at = utcnow()
        await self._db.write(_B.upsert, _B.params(self._codec.binding_values(record)))

    async def delete_binding(self, instance_id: str, binding_id: str) -> None:
        """Forget the binding."""
        sql = "DELETE FROM broker_bindings WHERE instance_id = ? AND binding_id = ?"
        await self._db.write(sql, (instance_id, binding_id))

    async def list_bindings(self, instance_id: str) -> list[BindingRecord]:
        """The instance's bindings, oldest first."""
        sql = f"{_B.select} WHERE instance_id = ? ORDER BY created_at, binding_id"
        return [self._codec.binding(r) for r in await self._db.read(_B, sql, (instance_id,))]

    # -- operations --------------------------------------------------------------------------

    async def create_operation(self, record: OperationRecord) -> None:
        """Insert a new operation; StoreError if its id is taken."""
        values = _O.params(self._codec.operation_values(record))
        if await self._db.write(_O.create, values) != 1:
            raise StoreError(f"operation {record.operation_id!r} already exists")

    async def put_operation(self, record: OperationRecord) -> None:
        """Insert or replace the operation record (stamps ``updated_at``)."""
        record.updated_at = utcnow()
        await self._db.write(_O.upsert, _O.params(self._codec.operation_values(record)))

    async def get_operation(self, operation_id: str) -> OperationRecord | None:
        """The operation record, or None."""
        row = await self._one(_O, "operation_id = ?", operation_id)
        return None if row is None else self._codec.operation(row)

    async def latest_operation(
        self, instance_id: str, binding_id: str | None = None
    ) -> OperationRecord | None:
        """The newest operation on the instance (binding_id None) or on that binding."""
        newest = "ORDER BY created_at DESC LIMIT 1"
        if binding_id is None:
            row = await self._one(
                _O, f"instance_id = ? AND binding_id IS NULL {newest}", instance_id
            )
        else:
            where = f"instance_id = ? AND binding_id = ? {newest}"
            row = await self._one(_O, where, instance_id, binding_id)
        return None if row is None else self._codec.operation(row)

    async def unfinished_operations(self) -> list[OperationRecord]:
        """Every operation still in progress, oldest first."""
        sql = f"{_O.select} WHERE state = ? ORDER BY created_at"
        return [self._codec.operation(r) for r in await self._db.read(_O, sql, (_IN_PROGRESS,))]

    async def claim_operation(self, operation_id: str, owner: str, stale_after: float) -> bool:
        """Take the lease if the operation is unowned, ``owner``'s, or its holder went silent."""
        now = utcnow()
        cutoff = now - timedelta(seconds=stale_after)
        return await self._db.claim((operation_id, _IN_PROGRESS, owner, cutoff), owner, now)

    async def heartbeat(self, operation_id: str, owner: str) -> bool:
        """Renew ``owner``'s lease; False if another process took the operation over."""
        sql = "UPDATE broker_operations SET heartbeat_at = ? WHERE operation_id = ? AND owner = ?"
        return await self._db.write(sql, (utcnow(), operation_id, owner)) == 1


# -- SQLite ------------------------------------------------------------------------------------


def _sqlite_values(values: Sequence[Any]) -> list[Any]:
    # Timestamps as the text SQLAlchemy writes for a DateTime, so that its lexical order is
    # time order (the lease compares heartbeat_at in SQL); other values as they are.
    return [_sqlite_time(v) if isinstance(v, datetime) else v for v in values]


def _sqlite_time(value: datetime) -> str:
    if value.tzinfo is UTC:  # utcnow()'s: the text is its isoformat less "+00:00"
        return value.isoformat(sep=" ", timespec="microseconds")[:-6]
    utc = value.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(sep=" ", timespec="microseconds")


class _WriterLock:
    """One writer at a time across every process on a SQLite file, without SQLite's busy sleeps.

    SQLite's busy handler polls with growing sleeps (1, 2, 5 ... 100 ms) while another process
    writes; ``flock`` hands the lock over the moment it is released.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    def open(self) -> None:
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def try_acquire(self) -> bool:
        assert self._fd is not None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def acquire(self) -> None:
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)


class _SQLite:
    """SQLite (a file, or ``sqlite://`` in memory) through the stdlib driver; see the module
    docstring for why reads and uncontended writes run on the event loop."""

    def __init__(self, url: URL) -> None:
        self._url = url
        database = url.database
        self.path = Path(database) if database and database != ":memory:" else None
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._lock = _WriterLock(Path(f"{self.path}.writer-lock")) if self.path else None
        self._thread: ThreadPoolExecutor | None = None
        self._writes = 0
        self._checkpoint: asyncio.Future[None] | None = None
        # Group commit: writes submitted while the loop is busy wait here for the next batch.
        self._pending: list[_Write] = []
        self._flush_scheduled = False
        self._in_thread: asyncio.Future[None] | None = None  # a batch waiting for another process
        self._readers_waiting: list[asyncio.Future[None]] = []  # reads waiting for those writes

    async def open(self, cipher: FieldCipher) -> None:
        self._reader, self._writer = await asyncio.to_thread(self._connect, cipher)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="servicebay-store")

    def _connect(self, cipher: FieldCipher) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # SQLite would create the file 0644 (less the umask); its -wal/-shm copy that mode.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        writer = self._connection()
        try:
            # The schema goes through SQLAlchemy (the same metadata as PostgreSQL), on our
            # connection; the hot path uses prepared SQL only.
            engine = create_engine(self._url, creator=lambda: writer, poolclass=StaticPool)
            _create_schema_retrying(lambda: _with_begin(engine, _create_tables))
            _with_begin(engine, lambda conn: _check_schema(conn, cipher, "sqlite"))
            writer.isolation_level = None  # SQLAlchemy's connect hooks may have changed it
            # Checkpoints run in our thread (see _after_write), not inside a commit.
            writer.execute("PRAGMA wal_autocheckpoint=0")
            if self._lock is not None:
                self._lock.open()
            reader = writer if self.path is None else self._connection()
        except BaseException:
            writer.close()
            if self._lock is not None:
                self._lock.close()
            raise
        return reader, writer

    def _connection(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path or ":memory:",
            isolation_level=None,  # autocommit: each statement is its own transaction
            timeout=_SQLITE_BUSY_TIMEOUT_S,
            check_same_thread=False,  # the writer is used from our thread when it must wait
        )
        try:
            _wal_retrying(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        reader, writer = self._reader, self._writer
        if writer is None:
            return
        # Every write submitted so far is committed (or has failed) before the connections go.
        while self._pending or self._in_thread is not None:
            if self._in_thread is not None:
                await asyncio.shield(self._in_thread)
            else:
                self._flush()
        self._reader = self._writer = None
        if self._checkpoint is not None:
            await asyncio.shield(self._checkpoint)

        def release() -> None:
            with _busy_tolerated():
                writer.execute("PRAGMA wal_checkpoint(PASSIVE)")
            if reader is not None and reader is not writer:
                reader.close()
            writer.close()
            if self._lock is not None:
                self._lock.close()

        thread, self._thread = self._thread, None
        try:
            await asyncio.get_running_loop().run_in_executor(thread, release)
        finally:
            if thread is not None:
                thread.shutdown(wait=False)

    async def read(self, table: _TableSQL, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        if self._pending and self._in_thread is None:
            await self._written()
        # The writer's page cache survives its own commits; the reader's is dropped after each
        # commit of another connection, this process's writer included, and read again. The
        # writer is free unless a batch waits in our thread for another process.
        conn = self._writer if self._in_thread is None else self._reader
        if conn is None:
            raise StoreError(_NOT_OPEN)
        rows = conn.execute(sql, _sqlite_values(params)).fetchall()
        return [self._restore(table, row) for row in rows]

    @staticmethod
    def _restore(table: _TableSQL, row: Sequence[Any]) -> dict[str, Any]:
        values = dict(zip(table.columns, row, strict=True))
        for name in table.times:
            if values[name] is not None:
                values[name] = datetime.fromisoformat(values[name]).replace(tzinfo=UTC)
        for name in table.flags:
            if values[name] is not None:
                values[name] = bool(values[name])
        return values

    async def write(self, sql: str, params: Sequence[Any]) -> int:
        bound = _sqlite_values(params)

        def run(conn: sqlite3.Connection) -> int:
            return conn.execute(sql, bound).rowcount

        rowcount: int = await self._submit(run, single=True)
        return rowcount

    async def write_together(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        bound = [(sql, _sqlite_values(params)) for sql, params in statements]

        def run(conn: sqlite3.Connection) -> None:
            # Inside the batch's transaction: the statements commit together or not at all.
            for sql, params in bound:
                conn.execute(sql, params)

        await self._submit(run, single=False)

    async def claim(self, where: Sequence[Any], owner: str, now: datetime) -> bool:
        # Writers are serialised, so the conditional UPDATE alone is the atomic test-and-set.
        return await self.write(_CLAIM_SQLITE, (owner, now, now, *where)) == 1

    async def _submit(self, fn: Callable[[sqlite3.Connection], Any], *, single: bool) -> Any:
        """Queue a write for the next batch and wait until its batch is committed.

        The first write of a loop iteration schedules the batch; every write submitted before
        the batch runs joins it, so the requests in flight share one transaction (one commit, one
        WAL append of each page they touch) instead of paying for one each.
        """
        if self._writer is None:
            raise StoreError(_NOT_OPEN)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        self._pending.append(_Write(fn, done, single=single))
        if not self._flush_scheduled and self._in_thread is None:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        # A write once queued runs even if its caller is cancelled meanwhile (its outcome is
        # then dropped): a cancellation never leaves half a batch behind.
        return await done

    async def _written(self) -> None:
        """Wait until the writes queued so far are committed (or failed, or found waiting for
        another process: a read never waits for another process).

        So a read sees every write this process queued before it, as when each write ran at
        once: the lifecycle relies on it (a racing provision must see its twin's operation).
        """
        waiter = asyncio.get_running_loop().create_future()
        self._readers_waiting.append(waiter)
        await waiter

    def _wake_readers(self) -> None:
        waiters, self._readers_waiting = self._readers_waiting, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _flush(self) -> None:
        """Run the pending writes as one transaction: on the event loop when this process can
        take the writer lock at once, else in our thread (never waiting on the loop)."""
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        writer = self._writer
        if not batch:
            self._wake_readers()
            return
        if writer is None:
            for write in batch:
                write.fail(StoreError(_NOT_OPEN))
            self._wake_readers()
            return
        if self._lock is None or self._lock.try_acquire():
            try:
                _run_batch(writer, batch)
            except BaseException as exc:
                for write in batch:
                    write.fail(exc)
                raise
            finally:
                if self._lock is not None:
                    self._lock.release()
                self._wake_readers()
            self._after_write(len(batch))
            return
        # Another process is writing: wait for it in our thread. Writes submitted meanwhile
        # queue up and go together in the next batch, once this one is done.
        loop = asyncio.get_running_loop()
        self._in_thread = loop.run_in_executor(self._thread, self._batch_when_free, batch, writer)
        self._in_thread.add_done_callback(lambda _: self._thread_done(batch))
        self._wake_readers()

    def _batch_when_free(self, batch: list[_Write], writer: sqlite3.Connection) -> None:
        assert self._lock is not None
        self._lock.acquire()
        try:
            _run_batch(writer, batch, settle=False)
        finally:
            self._lock.release()

    def _thread_done(self, batch: list[_Write]) -> None:
        thread_batch, self._in_thread = self._in_thread, None
        error = (
            None if thread_batch is None or thread_batch.cancelled() else thread_batch.exception()
        )
        for write in batch:
            if error is not None and not write.settled:
                write.fail(error)
            write.settle()
        self._after_write(len(batch))
        if self._pending and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _after_write(self, count: int) -> None:
        before, self._writes = self._writes, self._writes + count
        if before // _CHECKPOINT_EVERY_WRITES == self._writes // _CHECKPOINT_EVERY_WRITES:
            return
        if self.path is None:
            return
        if self._checkpoint is None or self._checkpoint.done():
            self._checkpoint = asyncio.get_running_loop().run_in_executor(
                self._thread, _checkpoint, self.path
            )


class _Write:
    """One queued write: the work to run on the writer connection and where its result goes.

    The outcome is noted first (``ok``/``value``) and handed to the waiting coroutine by
    ``settle`` on the event loop, since a batch may run in our thread.
    """

    __slots__ = ("alone_ok", "done", "fn", "ok", "settled", "value")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        done: asyncio.Future[Any],
        *,
        single: bool,
    ) -> None:
        self.fn = fn
        self.alone_ok = single  # one statement: may run in autocommit when alone in its batch
        self.done = done
        self.ok = False
        self.value: Any = None
        self.settled = False

    def run(self, conn: sqlite3.Connection) -> None:
        try:
            self.value, self.ok = self.fn(conn), True
        except Exception as exc:  # handed to the caller, which re-raises it
            self.value, self.ok = exc, False

    def fail(self, error: BaseException) -> None:
        self.value, self.ok = error, False
        self.settle()

    def settle(self) -> None:
        if self.settled:
            return
        self.settled = True
        if self.done.done():
            return
        if self.ok:
            self.done.set_result(self.value)
        else:
            self.done.set_exception(self.value)


def _run_batch(conn: sqlite3.Connection, batch: Sequence[_Write], *, settle: bool = True) -> None:
    """Run ``batch`` in one transaction. If any write fails, the transaction is rolled back and
    every write runs again in a transaction of its own, so that one bad write fails alone."""
    if len(batch) == 1 and batch[0].alone_ok:
        # A lone single statement: autocommit is its own transaction (two statements fewer).
        batch[0].run(conn)
        if settle:
            batch[0].settle()
        return
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for write in batch:
                write.run(conn)
                if not write.ok:
                    raise _BatchFailed
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except (_BatchFailed, sqlite3.Error):
        for write in batch:
            _run_alone(conn, write)
    if settle:
        for write in batch:
            write.settle()


def _run_alone(conn: sqlite3.Connection, write: _Write) -> None:
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        write.value, write.ok = exc, False
        return
    write.run(conn)
    try:
        conn.execute("COMMIT" if write.ok else "ROLLBACK")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        write.value, write.ok = exc, False


class _BatchFailed(Exception):
    """A write of the batch failed: the batch is rolled back and retried write by write."""


def _checkpoint(path: Path) -> None:
    # Its own short-lived connection: the writer stays free for the event loop meanwhile.
    conn = sqlite3.connect(path, timeout=_SQLITE_BUSY_TIMEOUT_S)
    try:
        frames = 0
        with _busy_tolerated():
            # (busy, frames in the WAL since it was last started over, frames checkpointed)
            frames = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
        # The frame count, not the file's size: a WAL started over keeps its size and is
        # written again from the start.
        if frames > _WAL_RESTART_FRAMES:
            _restart_wal(conn, Path(f"{path}.writer-lock"))
    finally:
        conn.close()


def _restart_wal(conn: sqlite3.Connection, lock_path: Path) -> None:
    """Checkpoint what is left and have the next write start the WAL over, under the writer lock.

    Under steady load a PASSIVE checkpoint never catches up (writes land while it copies), and
    SQLite reuses the WAL only once it has caught up: the file would grow without end. Holding
    the writer lock (its own file description, so this process's loop finds it taken and
    queues its writes behind this job) lets the RESTART finish without making any writer wait
    on SQLite's busy handler.
    """
    lock = _WriterLock(lock_path)
    lock.open()
    try:
        lock.acquire()
        try:
            with _busy_tolerated():
                conn.execute("PRAGMA wal_checkpoint(RESTART)")
        finally:
            lock.release()
    finally:
        lock.close()


@contextlib.contextmanager
def _busy_tolerated() -> Iterator[None]:
    """Ignore "database is locked": a checkpoint another process is running will do."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise


# -- PostgreSQL --------------------------------------------------------------------------------


def _pg_value(value: Any) -> Any:
    # Columns are TIMESTAMP WITHOUT TIME ZONE holding UTC (see _UTCDateTime).
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


@functools.lru_cache(maxsize=256)
def _numbered(sql: str) -> str:
    """``?`` placeholders as asyncpg's ``$1, $2, ...`` (our SQL has no other ``?``)."""
    parts = sql.split("?")
    return "".join(f"{part}${n}" for n, part in enumerate(parts[:-1], start=1)) + parts[-1]


def _rowcount(status: str) -> int:
    # asyncpg returns the command tag, e.g. "INSERT 0 1", "UPDATE 1", "DELETE 0".
    return int(status.rsplit(" ", 1)[-1])


class _Postgres:
    """PostgreSQL through an asyncpg pool: autocommit statements, the lease in a transaction.

    The tables are created through SQLAlchemy at open; asyncpg caches each statement's plan
    per connection.
    """

    def __init__(self, url: URL) -> None:
        self._url = url
        self._pool: Any = None  # asyncpg.Pool (untyped)

    async def open(self, cipher: FieldCipher) -> None:
        engine = create_async_engine(self._url, poolclass=NullPool)
        try:

            async def create() -> None:
                async with engine.begin() as conn:
                    await conn.run_sync(_create_tables)

            await _create_schema_retrying_async(create)
            async with engine.begin() as conn:
                await conn.run_sync(lambda c: _check_schema(c, cipher, "postgresql"))
        finally:
            await engine.dispose()
        dsn = self._url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._pool = await asyncpg.create_pool(dsn, min_size=1, max_size=20)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _connection(self) -> Any:
        if self._pool is None:
            raise StoreError(_NOT_OPEN)
        return self._pool.acquire()

    async def read(self, table: _TableSQL, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        async with self._connection() as conn:
            rows = await conn.fetch(_numbered(sql), *[_pg_value(p) for p in params])
        restored = []
        for row in rows:
            values = dict(row)
            for name in table.times:
                if values[name] is not None:
                    values[name] = values[name].replace(tzinfo=UTC)
            restored.append(values)
        return restored

    async def write(self, sql: str, params: Sequence[Any]) -> int:
        async with self._connection() as conn:
            status = await conn.execute(_numbered(sql), *[_pg_value(p) for p in params])
        return _rowcount(status)

    async def write_together(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        async with self._connection() as conn, conn.transaction():
            for sql, params in statements:
                await conn.execute(_numbered(sql), *[_pg_value(p) for p in params])

    async def claim(self, where: Sequence[Any], owner: str, now: datetime) -> bool:
        # A row another process is claiming right now is skipped rather than waited for:
        # it is being taken, so this process has nothing to do with it.
        async with self._connection() as conn, conn.transaction():
            lock = _numbered(_CLAIM_LOCK_POSTGRES)
            if await conn.fetchrow(lock, *[_pg_value(p) for p in where]) is None:
                return False
            stamp = _pg_value(now)
            await conn.execute(_numbered(_CLAIM_TAKE_POSTGRES), owner, stamp, stamp, where[0])
            return True


# -- schema (both backends) --------------------------------------------------------------------


def _create_tables(conn: Connection) -> None:
    _metadata.create_all(conn)


def _with_begin(engine: Any, fn: Callable[[Connection], T]) -> T:
    with engine.begin() as conn:
        return fn(conn)


def _wal_retrying(conn: sqlite3.Connection) -> None:
    """Put the database in WAL mode, waiting while another connection converts it.

    Turning a fresh database to WAL takes an exclusive lock after a shared one; SQLite answers
    "database is locked" at once instead of calling the busy handler (waiting could deadlock
    two converters), so several processes opening a fresh file together retry here, for as
    long as the busy timeout would have waited.
    """
    deadline = time.monotonic() + _SQLITE_BUSY_TIMEOUT_S
    pause = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def _create_schema_retrying(create: Callable[[], None]) -> None:
    # Two processes opening a fresh database at once may both try CREATE TABLE; the loser
    # fails, and finds the tables there on its next attempt.
    for attempt in range(5):
        try:
            create()
            return
        except DBAPIError:
            if attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))


async def _create_schema_retrying_async(create: Callable[[], Awaitable[None]]) -> None:
    for attempt in range(5):  # as _create_schema_retrying, awaiting
        try:
            await create()
            return
        except DBAPIError:
            if attempt == 4:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))


def _check_schema(conn: Connection, cipher: FieldCipher, backend: str) -> None:
    """Record the schema version and key check on a new database; verify them on an old one."""
    current = select(_schema).where(_schema.c.id == 1)
    row: Row[Any] | None = conn.execute(current).first()
    if row is None:
        key_check = cipher.encrypt(_KEY_CHECK, _KEY_CHECK_FIELD)
        values = {"id": 1, "version": SCHEMA_VERSION, "key_check": key_check}
        if backend == "sqlite":
            from sqlalchemy.dialects import sqlite

            conn.execute(sqlite.insert(_schema).on_conflict_do_nothing(), values)
        else:
            conn.execute(postgresql.insert(_schema).on_conflict_do_nothing(), values)
        row = conn.execute(current).one()
    if row.version > SCHEMA_VERSION:
        raise StoreError(
            f"the broker database has schema version {row.version}, newer than this "
            f"servicebay understands ({SCHEMA_VERSION}); upgrade servicebay"
        )
    if cipher.decrypt(row.key_check, _KEY_CHECK_FIELD) != _KEY_CHECK:
        raise EncryptionKeyError("the broker store's key check does not match")
    if row.version < SCHEMA_VERSION:
        # Only after the key check: a store this process cannot read stays as it was.
        bump = update(_schema).where(_schema.c.id == 1, _schema.c.version < SCHEMA_VERSION)
        conn.execute(bump.values(version=SCHEMA_VERSION))
