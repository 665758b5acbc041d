"""Hot statements: built once, and on SQLite run straight on the driver.

Where it sits: the use cases and the worker run the few statements of every lifecycle step (the
namespace and offering lookups, the operation, record and audit inserts, the lease-guarded
updates) through a :class:`Statement` instead of ``AsyncConnection.execute``; everything else
uses SQLAlchemy as usual, in the same transaction.

Why: on SQLite a primary-key lookup or an insert takes SQLite 15 to 50 µs, and SQLAlchemy's async
execution around it (a greenlet switch each way, the compiled-cache lookup, an execution
context, parameter and result processing, a ``Result``) ten to thirty times as much. A
:class:`Statement` compiles its SQL once per parameter shape with the engine's own dialect and
keeps the dialect's bind and result processors (timestamps, JSON, booleans), so the values
stored and read are exactly what SQLAlchemy would store and read; each execution is then one
``sqlite3`` call on the connection of the caller's transaction, on the event loop, as
``_SQLiteCursor`` runs SQLAlchemy's statements. When SQLite is busy (another process holds the
write lock) the statement goes through SQLAlchemy after all, which waits in aiosqlite's thread.
On PostgreSQL a :class:`Statement` is executed by SQLAlchemy, unchanged.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

Row = Mapping[str, Any]
Executable = sa.Select[Any] | sa.Insert | sa.Update | sa.Delete
_REQUIRED = object()  # a slot the caller's parameters must fill


def busy(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite failed because another connection holds the lock it needs."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text


@dataclass(frozen=True)
class _Plan:
    """One statement compiled for SQLite: its SQL, where each ``?`` comes from, and how result
    columns are read back."""

    sql: str
    slots: tuple[tuple[str, Callable[[Any], Any] | None, Any], ...]
    keys: tuple[str, ...]
    readers: tuple[Callable[[Any], Any] | None, ...]

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        values = []
        for name, bind, fixed in self.slots:
            if fixed is _REQUIRED:
                value = params[name]
                values.append(value if bind is None else bind(value))
            else:
                values.append(fixed)
        return values

    def mapping(self, raw: Sequence[Any]) -> dict[str, Any]:
        return {
            key: value if read is None else read(value)
            for key, read, value in zip(self.keys, self.readers, raw, strict=True)
        }


def _compile(statement: Executable, dialect: Dialect, keys: tuple[str, ...]) -> _Plan:
    compiled: Any = statement.compile(dialect=dialect, column_keys=list(keys))
    if compiled.insert_prefetch or compiled.update_prefetch or compiled.post_compile_params:
        # Column defaults computed at execution, or IN lists expanded at execution.
        raise ValueError(f"not a plain statement, run it with SQLAlchemy: {compiled}")
    defaults = compiled.construct_params(_check=False)
    slots = []
    for name in compiled.positiontup:
        bindparam = compiled.binds[name]
        bind = bindparam.type.dialect_impl(dialect).bind_processor(dialect)
        if bindparam.required:
            slots.append((name, bind, _REQUIRED))
        else:
            value = defaults[name]
            slots.append((name, None, value if bind is None else bind(value)))
    names: tuple[str, ...] = ()
    readers: tuple[Callable[[Any], Any] | None, ...] = ()
    if isinstance(statement, sa.Select):
        columns = statement.selected_columns
        names = tuple(columns.keys())
        readers = tuple(
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns
        )
    return _Plan(compiled.string, tuple(slots), names, readers)


class Statement:
    """A Core statement built once; see the module docstring for how it runs.

    ``params`` name the statement's bind parameters (or, for an ``insert()``, the columns): an
    insert is compiled once per set of column names, like SQLAlchemy's own cache.
    """

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._plans: dict[tuple[str, ...], _Plan] = {}

    def _plan(self, dialect: Dialect, params: Mapping[str, Any]) -> _Plan:
        keys = tuple(params) if isinstance(self.statement, sa.Insert) else ()
        plan = self._plans.get(keys)
        if plan is None:
            plan = self._plans[keys] = _compile(self.statement, dialect, keys)
        return plan

    def _sqlite(self, conn: AsyncConnection) -> sqlite3.Connection | None:
        driver = conn.sync_connection.connection.driver_connection if conn.sync_connection else None
        raw = getattr(driver, "sqlite", None)
        return raw if isinstance(raw, sqlite3.Connection) else None

    async def rows(
        self, conn: AsyncConnection, params: Mapping[str, Any] | None = None
    ) -> list[Row]:
        """Every row, as mappings of the selected columns' keys."""
        params = params or {}
        raw = self._sqlite(conn)
        if raw is not None:
            plan = self._plan(conn.dialect, params)
            try:
                fetched = raw.execute(plan.sql, plan.arguments(params)).fetchall()
            except sqlite3.OperationalError as exc:
                if not busy(exc):
                    raise
            else:
                return [plan.mapping(row) for row in fetched]
        result = await conn.execute(self.statement, dict(params))
        return [dict(row) for row in result.mappings().all()]

    async def first(
        self, conn: AsyncConnection, params: Mapping[str, Any] | None = None
    ) -> Row | None:
        """The first row, or None."""
        rows = await self.rows(conn, params)
        return rows[0] if rows else None

    async def scalar(self, conn: AsyncConnection, params: Mapping[str, Any] | None = None) -> Any:
        """The first column of the first row, or None."""
        rows = await self.rows(conn, params)
        return next(iter(rows[0].values())) if rows else None

    async def run(self, conn: AsyncConnection, params: Mapping[str, Any] | None = None) -> int:
        """Execute an insert, update or delete; the number of rows it matched."""
        params = params or {}
        raw = self._sqlite(conn)
        if raw is not None:
            plan = self._plan(conn.dialect, params)
            try:
                return raw.execute(plan.sql, plan.arguments(params)).rowcount
            except sqlite3.OperationalError as exc:
                if not busy(exc):
                    raise
        result: Any = await conn.execute(self.statement, dict(params))
        return int(result.rowcount)


async def plain_rows(conn: AsyncConnection, query: sa.Select[Any]) -> list[Sequence[Any]]:
    """Every row of ``query`` as the driver returns it, without SQLAlchemy's result processing.

    For a big read of columns that need no processing (text, integers): the instance listing
    reads 10,000 rows of stored JSON text, and SQLAlchemy's rows around them took longer than
    the database's read (about 3 µs a row). The query is compiled for the connection's dialect
    on each call (IN lists expanded) and its bind parameters processed as SQLAlchemy would;
    it then runs on the driver, in the caller's transaction: ``asyncpg`` on PostgreSQL,
    ``sqlite3`` on SQLite (on the loop, as every statement there does; through SQLAlchemy
    after all if SQLite is busy).
    """
    dialect = conn.dialect
    compiled: Any = query.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    values = compiled.construct_params()
    args = []
    for name in compiled.positiontup:
        # A member of an expanded IN list is named after its list: ``namespace_1`` → ``_1_2``.
        bindparam = compiled.binds[name if name in compiled.binds else name.rpartition("_")[0]]
        bind = bindparam.type.dialect_impl(dialect).bind_processor(dialect)
        args.append(values[name] if bind is None else bind(values[name]))
    driver = (await conn.get_raw_connection()).driver_connection
    if isinstance(driver, asyncpg.Connection):
        return list(await driver.fetch(compiled.string, *args))
    raw = getattr(driver, "sqlite", None)
    if isinstance(raw, sqlite3.Connection):
        try:
            return raw.execute(compiled.string, args).fetchall()
        except sqlite3.OperationalError as exc:
            if not busy(exc):
                raise
    return list((await conn.execute(query)).tuples().all())
