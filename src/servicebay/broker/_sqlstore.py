"""The `Store` on SQLAlchemy 2 Core: a SQLite file by default, PostgreSQL at scale.

Where it sits: the SDK's lifecycle calls the store on every request; `open_store` builds this class
from ``BrokerSettings.db``. Tables are created on ``open()`` along with a one-row
``broker_schema`` table holding the schema version and a key check (a token encrypted with the
store's key, so a wrong key fails at start rather than on the first binding fetch).

Several broker processes may share one database (uvicorn workers, replicas): every write is a
single atomic statement (insert-if-absent for ``create_*``, upsert for ``put_*``), and the
operation lease is taken with a conditional UPDATE on SQLite (whose writers are serialised by the
database lock) and with ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, so a running
operation is never picked up by a second process while its owner is alive.

Every store call is one coroutine for the event loop and never blocks it. PostgreSQL is reached
through asyncpg (pooled, autocommit for single statements). SQLite is driven by one thread per
store that owns its single connection: each store call is one hop to that thread, where aiosqlite
would hop for every cursor step. SQLite runs in WAL mode (readers never wait for the writer) with
``synchronous=NORMAL`` (a commit survives a process crash, which is what a killed broker needs)
and a busy timeout so concurrent writers from other processes wait for the lock instead of failing.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from cryptography.fernet import Fernet
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, Row, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.dml import Insert
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
    StoreError,
    utcnow,
)

__all__ = ["SCHEMA_VERSION", "SqlStore", "async_database_url"]

SCHEMA_VERSION = 1
_KEY_CHECK = "servicebay-broker-key-check"
_SQLITE_BUSY_TIMEOUT_MS = 30_000
T = TypeVar("T")
R = TypeVar("R")
_IN_PROGRESS = "in progress"


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


def async_database_url(url: str) -> URL:
    """``url`` with the driver this store uses (SQLite: the standard library, PG: asyncpg)."""
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


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _dumps_opt(value: Any) -> str | None:
    return None if value is None else _dumps(value)


def _loads_opt(value: str | None) -> Any:
    return None if value is None else json.loads(value)


class _Statements:
    """Every hot statement, built once per dialect; values arrive as bound parameters."""

    def __init__(self, is_sqlite: bool) -> None:
        self.create = {t.name: self._insert(t, is_sqlite).on_conflict_do_nothing() for t in _DATA}
        self.upsert = {t.name: self._upsert(t, is_sqlite) for t in _DATA}
        i, b, o = _instances.c, _bindings.c, _operations.c
        self.get_instance = select(_instances).where(i.instance_id == bindparam("k_instance"))
        self.get_binding = select(_bindings).where(
            b.instance_id == bindparam("k_instance"), b.binding_id == bindparam("k_binding")
        )
        self.list_bindings = (
            select(_bindings)
            .where(b.instance_id == bindparam("k_instance"))
            .order_by(b.created_at, b.binding_id)
        )
        self.delete_binding = delete(_bindings).where(
            b.instance_id == bindparam("k_instance"), b.binding_id == bindparam("k_binding")
        )
        self.delete_bindings = delete(_bindings).where(b.instance_id == bindparam("k_instance"))
        self.delete_instance = delete(_instances).where(i.instance_id == bindparam("k_instance"))
        self.get_operation = select(_operations).where(o.operation_id == bindparam("k_operation"))
        latest = select(_operations).order_by(o.created_at.desc()).limit(1)
        self.latest_instance_op = latest.where(
            o.instance_id == bindparam("k_instance"), o.binding_id.is_(None)
        )
        self.latest_binding_op = latest.where(
            o.instance_id == bindparam("k_instance"), o.binding_id == bindparam("k_binding")
        )
        self.unfinished = select(_operations).where(o.state == _IN_PROGRESS).order_by(o.created_at)

    @staticmethod
    def _insert(table: Table, is_sqlite: bool) -> postgresql.Insert | sqlite.Insert:
        return sqlite.insert(table) if is_sqlite else postgresql.insert(table)

    @classmethod
    def _upsert(cls, table: Table, is_sqlite: bool) -> Insert:
        stmt = cls._insert(table, is_sqlite)
        keys = [c.name for c in table.primary_key.columns]
        # created_at is kept from the first write: an upsert updates, it does not re-create.
        changed = {
            c.name: stmt.excluded[c.name]
            for c in table.columns
            if c.name not in keys and c.name != "created_at"
        }
        return stmt.on_conflict_do_update(index_elements=keys, set_=changed)


class _SQLiteThread:
    """The one thread that owns the SQLite connection; each store call is one hop to it.

    aiosqlite would hop to its thread for every cursor step (3-4 per statement), and every hop
    waits for the GIL while the event loop is busy; running a whole store call in the thread
    makes it one hop, which under load is most of a request's database time.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="servicebay-store")
        self._conn: Connection | None = None

    async def start(self) -> None:
        self._conn = await self._submit(self._engine.connect)

    async def run(self, fn: Callable[[Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StoreError("the broker store is not open (call open() first)")
        return await self._submit(lambda: fn(conn))

    async def stop(self) -> None:
        conn, self._conn = self._conn, None

        def release() -> None:
            if conn is not None:
                conn.close()
            self._engine.dispose()

        try:
            await self._submit(release)
        finally:
            self._executor.shutdown(wait=False)

    def _submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._executor, fn)


class SqlStore:
    """`Store` backed by SQLAlchemy Core: SQLite through one owned thread, PostgreSQL on asyncpg."""

    def __init__(self, url: str, key: str | None = None) -> None:
        self._url = async_database_url(url)
        self._is_sqlite = self._url.drivername.startswith("sqlite")
        database = self._url.database
        self._sqlite_path = (
            Path(database) if self._is_sqlite and database and database != ":memory:" else None
        )
        self._key = key or os.environ.get(KEY_ENV) or None
        if self._key is None and not self._is_sqlite:
            raise EncryptionKeyError(
                "a PostgreSQL broker store needs an encryption key for credentials at rest: "
                f"set {KEY_ENV} (or BrokerSettings.key); create one with "
                '`python -c "from cryptography.fernet import Fernet; '
                'print(Fernet.generate_key().decode())"` and keep it with your secrets'
            )
        self._sql = _Statements(self._is_sqlite)
        self._sqlite: _SQLiteThread | None = None
        self._pg: AsyncEngine | None = None
        self._pg_auto: AsyncEngine | None = None
        self._cipher: FieldCipher | None = None

    def __repr__(self) -> str:
        return f"SqlStore({self._url.render_as_string(hide_password=True)!r})"

    @property
    def key_file(self) -> Path | None:
        """Where the key file lives when the key comes from one (SQLite without a key)."""
        if self._key is None and self._sqlite_path is not None:
            return self._sqlite_path.resolve().parent / KEY_FILE_NAME
        return None

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, create missing tables, record or check the schema version and the key."""
        if self._sqlite is not None or self._pg is not None:
            return
        cipher = FieldCipher(await self._resolve_key())
        if self._is_sqlite:
            await self._open_sqlite(cipher)
        else:
            await self._open_postgres(cipher)
        self._cipher = cipher

    async def _open_sqlite(self, cipher: FieldCipher) -> None:
        if self._sqlite_path is not None:
            await asyncio.to_thread(self._sqlite_path.parent.mkdir, parents=True, exist_ok=True)
        engine = create_engine(
            self._url,
            poolclass=StaticPool,
            isolation_level="AUTOCOMMIT",
            connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        thread = _SQLiteThread(engine)
        try:
            await thread.start()
            await _retrying_schema_creation(lambda: thread.run(_create_tables))
            await thread.run(lambda conn: _check_schema(conn, cipher, self._is_sqlite))
        except BaseException:
            await thread.stop()
            raise
        self._sqlite = thread

    async def _open_postgres(self, cipher: FieldCipher) -> None:
        engine = create_async_engine(self._url, pool_size=10, max_overflow=20)
        try:

            async def create() -> None:
                async with engine.begin() as conn:
                    await conn.run_sync(_create_tables)

            await _retrying_schema_creation(create)
            async with engine.begin() as conn:
                await conn.run_sync(lambda c: _check_schema(c, cipher, self._is_sqlite))
        except BaseException:
            await engine.dispose()
            raise
        self._pg = engine
        # Single statements need no explicit transaction: autocommit saves a BEGIN/COMMIT pair.
        self._pg_auto = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def close(self) -> None:
        """Release the connections."""
        thread, self._sqlite = self._sqlite, None
        engine, self._pg, self._pg_auto = self._pg, None, None
        if thread is not None:
            await thread.stop()
        if engine is not None:
            await engine.dispose()

    async def _resolve_key(self) -> str:
        if self._key is not None:
            return self._key
        key_file = self.key_file
        if key_file is None:
            # An in-memory SQLite database dies with the process, and its key with it.
            return Fernet.generate_key().decode()
        return await asyncio.to_thread(load_or_create_key, key_file)

    # -- plumbing ----------------------------------------------------------------------------

    async def _call(self, fn: Callable[[Connection], T], *, atomic: bool = False) -> T:
        """Run ``fn`` on a connection: SQLite's thread, or a pooled PostgreSQL connection.

        ``atomic`` wraps it in a transaction on PostgreSQL; on SQLite ``fn`` (one statement,
        or its own BEGIN IMMEDIATE) is atomic by itself.
        """
        if self._sqlite is not None:
            return await self._sqlite.run(fn)
        engine = self._pg if atomic else self._pg_auto
        if engine is None:
            raise StoreError("the broker store is not open (call open() first)")
        async with engine.begin() if atomic else engine.connect() as conn:
            return await conn.run_sync(fn)

    @property
    def _fernet(self) -> FieldCipher:
        if self._cipher is None:
            raise StoreError("the broker store is not open (call open() first)")
        return self._cipher

    async def _write(self, stmt: Any, params: Mapping[str, Any] | None = None) -> int:
        return await self._call(lambda conn: int(conn.execute(stmt, params).rowcount))

    async def _first(
        self, stmt: Any, params: Mapping[str, Any], convert: Callable[[Row[Any]], R]
    ) -> R | None:
        def run(conn: Connection) -> R | None:
            row = conn.execute(stmt, params).first()
            return None if row is None else convert(row)

        return await self._call(run)

    async def _all(
        self, stmt: Any, params: Mapping[str, Any] | None, convert: Callable[[Row[Any]], R]
    ) -> list[R]:
        return await self._call(lambda conn: [convert(r) for r in conn.execute(stmt, params)])

    # -- instances ---------------------------------------------------------------------------

    def _instance_values(self, rec: InstanceRecord) -> dict[str, Any]:
        return {
            "instance_id": rec.instance_id,
            "service_id": rec.service_id,
            "plan_id": rec.plan_id,
            "state": rec.state,
            "request_fingerprint": rec.request_fingerprint,
            "parameters": self._fernet.encrypt(rec.parameters),
            "context": _dumps(rec.context),
            "maintenance_info": _dumps_opt(rec.maintenance_info),
            "dashboard_url": rec.dashboard_url,
            "metadata": _dumps_opt(rec.metadata),
            "created_at": rec.created_at,
            "updated_at": rec.updated_at,
        }

    def _instance(self, row: Row[Any]) -> InstanceRecord:
        return InstanceRecord(
            instance_id=row.instance_id,
            service_id=row.service_id,
            plan_id=row.plan_id,
            state=row.state,
            request_fingerprint=row.request_fingerprint,
            parameters=self._fernet.decrypt(row.parameters),
            context=json.loads(row.context),
            maintenance_info=_loads_opt(row.maintenance_info),
            dashboard_url=row.dashboard_url,
            metadata=_loads_opt(row.metadata),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        """The instance record, or None."""
        key = {"k_instance": instance_id}
        return await self._first(self._sql.get_instance, key, self._instance)

    async def put_instance(self, record: InstanceRecord) -> None:
        """Insert or replace the instance record (stamps ``updated_at``)."""
        record.updated_at = utcnow()
        await self._write(self._sql.upsert["broker_instances"], self._instance_values(record))

    async def create_instance(self, record: InstanceRecord) -> bool:
        """Insert the record; False (nothing written) if the id exists."""
        values = self._instance_values(record)
        return await self._write(self._sql.create["broker_instances"], values) == 1

    async def delete_instance(self, instance_id: str) -> None:
        """Forget the instance and its bindings; its operations stay for last_operation."""
        key = {"k_instance": instance_id}
        sqlite_tx = self._is_sqlite

        def run(conn: Connection) -> None:
            # SQLite's connection autocommits: the pair must land together or not at all.
            if sqlite_tx:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                conn.execute(self._sql.delete_bindings, key)
                conn.execute(self._sql.delete_instance, key)
            except BaseException:
                if sqlite_tx:
                    conn.exec_driver_sql("ROLLBACK")
                raise
            if sqlite_tx:
                conn.exec_driver_sql("COMMIT")

        await self._call(run, atomic=True)

    # -- bindings ----------------------------------------------------------------------------

    def _binding_values(self, rec: BindingRecord) -> dict[str, Any]:
        return {
            "instance_id": rec.instance_id,
            "binding_id": rec.binding_id,
            "state": rec.state,
            "request_fingerprint": rec.request_fingerprint,
            "parameters": self._fernet.encrypt(rec.parameters),
            "response": self._fernet.encrypt(rec.response),
            "created_at": rec.created_at,
            "updated_at": rec.updated_at,
        }

    def _binding(self, row: Row[Any]) -> BindingRecord:
        return BindingRecord(
            instance_id=row.instance_id,
            binding_id=row.binding_id,
            state=row.state,
            request_fingerprint=row.request_fingerprint,
            parameters=self._fernet.decrypt(row.parameters),
            response=self._fernet.decrypt(row.response),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    async def get_binding(self, instance_id: str, binding_id: str) -> BindingRecord | None:
        """The binding record, or None."""
        key = {"k_instance": instance_id, "k_binding": binding_id}
        return await self._first(self._sql.get_binding, key, self._binding)

    async def create_binding(self, record: BindingRecord) -> bool:
        """Insert the record; False (nothing written) if the binding exists."""
        values = self._binding_values(record)
        return await self._write(self._sql.create["broker_bindings"], values) == 1

    async def put_binding(self, record: BindingRecord) -> None:
        """Insert or replace the binding record (stamps ``updated_at``)."""
        record.updated_at = utcnow()
        await self._write(self._sql.upsert["broker_bindings"], self._binding_values(record))

    async def delete_binding(self, instance_id: str, binding_id: str) -> None:
        """Forget the binding."""
        key = {"k_instance": instance_id, "k_binding": binding_id}
        await self._write(self._sql.delete_binding, key)

    async def list_bindings(self, instance_id: str) -> list[BindingRecord]:
        """The instance's bindings, oldest first."""
        key = {"k_instance": instance_id}
        return await self._all(self._sql.list_bindings, key, self._binding)

    # -- operations --------------------------------------------------------------------------

    def _operation_values(self, rec: OperationRecord) -> dict[str, Any]:
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
            "request": self._fernet.encrypt(rec.request),
            "deadline": rec.deadline,
            "owner": rec.owner,
            "heartbeat_at": rec.heartbeat_at,
            "created_at": rec.created_at,
            "updated_at": rec.updated_at,
        }

    def _operation(self, row: Row[Any]) -> OperationRecord:
        return OperationRecord(
            operation_id=row.operation_id,
            kind=row.kind,
            instance_id=row.instance_id,
            binding_id=row.binding_id,
            state=row.state,
            description=row.description,
            instance_usable=row.instance_usable,
            update_repeatable=row.update_repeatable,
            request=self._fernet.decrypt(row.request),
            deadline=row.deadline,
            owner=row.owner,
            heartbeat_at=row.heartbeat_at,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    async def create_operation(self, record: OperationRecord) -> None:
        """Insert a new operation; StoreError if its id is taken."""
        values = self._operation_values(record)
        if await self._write(self._sql.create["broker_operations"], values) != 1:
            raise StoreError(f"operation {record.operation_id!r} already exists")

    async def put_operation(self, record: OperationRecord) -> None:
        """Insert or replace the operation record (stamps ``updated_at``)."""
        record.updated_at = utcnow()
        await self._write(self._sql.upsert["broker_operations"], self._operation_values(record))

    async def get_operation(self, operation_id: str) -> OperationRecord | None:
        """The operation record, or None."""
        key = {"k_operation": operation_id}
        return await self._first(self._sql.get_operation, key, self._operation)

    async def latest_operation(
        self, instance_id: str, binding_id: str | None = None
    ) -> OperationRecord | None:
        """The newest operation on the instance (binding_id None) or on that binding."""
        if binding_id is None:
            key = {"k_instance": instance_id}
            return await self._first(self._sql.latest_instance_op, key, self._operation)
        key = {"k_instance": instance_id, "k_binding": binding_id}
        return await self._first(self._sql.latest_binding_op, key, self._operation)

    async def unfinished_operations(self) -> list[OperationRecord]:
        """Every operation still in progress, oldest first."""
        return await self._all(self._sql.unfinished, None, self._operation)

    async def claim_operation(self, operation_id: str, owner: str, stale_after: float) -> bool:
        """Take the lease if the operation is unowned, ``owner``'s, or its holder went silent."""
        now = utcnow()
        cutoff = now - timedelta(seconds=stale_after)
        claimable = or_(
            _operations.c.owner.is_(None),
            _operations.c.owner == owner,
            _operations.c.heartbeat_at.is_(None),
            _operations.c.heartbeat_at < cutoff,
        )
        where = and_(
            _operations.c.operation_id == operation_id,
            _operations.c.state == _IN_PROGRESS,
            claimable,
        )
        take = (
            update(_operations).where(where).values(owner=owner, heartbeat_at=now, updated_at=now)
        )
        if self._is_sqlite:
            # SQLite serialises writers, so the conditional UPDATE alone is the atomic test-and-set.
            return await self._write(take) == 1
        # A row another process is claiming right now is skipped rather than waited for:
        # it is being taken, so this process has nothing to do with it.
        locked = select(_operations.c.operation_id).where(where).with_for_update(skip_locked=True)

        def run(conn: Connection) -> bool:
            if conn.execute(locked).first() is None:
                return False
            conn.execute(take)
            return True

        return await self._call(run, atomic=True)

    async def heartbeat(self, operation_id: str, owner: str) -> bool:
        """Renew ``owner``'s lease; False if another process took the operation over."""
        stmt = (
            update(_operations)
            .where(_operations.c.operation_id == operation_id, _operations.c.owner == owner)
            .values(heartbeat_at=utcnow())
        )
        return await self._write(stmt) == 1


def _create_tables(conn: Connection) -> None:
    _metadata.create_all(conn)


async def _retrying_schema_creation(create: Callable[[], Awaitable[None]]) -> None:
    # Two processes opening a fresh database at once may both try CREATE TABLE; the loser
    # fails, and finds the tables there on its next attempt.
    for attempt in range(5):
        try:
            await create()
            return
        except DBAPIError:
            if attempt == 4:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))


def _check_schema(conn: Connection, cipher: FieldCipher, is_sqlite: bool) -> None:
    """Record the schema version and key check on a new database; verify them on an old one."""
    current = select(_schema).where(_schema.c.id == 1)
    row = conn.execute(current).first()
    if row is None:
        values = {"id": 1, "version": SCHEMA_VERSION, "key_check": cipher.encrypt(_KEY_CHECK)}
        conn.execute(_Statements._insert(_schema, is_sqlite).on_conflict_do_nothing(), values)
        row = conn.execute(current).one()
    if row.version > SCHEMA_VERSION:
        raise StoreError(
            f"the broker database has schema version {row.version}, newer than this "
            f"servicebay understands ({SCHEMA_VERSION}); upgrade servicebay"
        )
    if cipher.decrypt(row.key_check) != _KEY_CHECK:
        raise EncryptionKeyError("the broker store's key check does not match")


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=NORMAL",
            f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}",
        ):
            cursor.execute(pragma)
    finally:
        cursor.close()
