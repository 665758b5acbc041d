"""The store: migrations produce exactly the tables the code describes, and run twice safely."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3
from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from servicebay.platform.store import Database, plain_rows, tables, utcnow


async def test_migrations_match_the_table_definitions(db_url: str) -> None:
    """After `alembic upgrade head` (run twice), autogenerate finds nothing to change."""
    db = Database(db_url)
    await db.migrate()
    await db.migrate()

    def diff(conn: sa.Connection) -> list[object]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, tables.metadata))

    async with db.begin() as conn:
        changes = await conn.run_sync(diff)
        namespaces = (await conn.execute(sa.select(tables.namespaces.c.name))).scalars().all()
    await db.close()
    assert changes == []
    assert namespaces == ["default"]


async def test_sqlite_writer_waits_for_another_writer_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    """Two databases on one SQLite file stand for two processes: while one holds the write
    lock, the other's transaction waits for it (in a thread) and then commits; the event
    loop keeps running meanwhile, and a checkpointed file holds both rows."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first, second = Database(url), Database(url)
    await first.migrate()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    def row(name: str) -> dict[str, object]:
        now = utcnow()
        return {"name": name, "constraints": {}, "created_at": now, "updated_at": now}

    ns = tables.namespaces
    clock = asyncio.create_task(ticker())
    try:
        async with first.begin() as conn:
            await conn.execute(ns.insert().values(**row("held")))
            waiting = asyncio.create_task(_insert(second, row("waited")))
            await asyncio.sleep(0.5)
            assert not waiting.done()  # it waits for the lock the first one holds
            assert ticks >= 10  # ...and the loop kept running
        await asyncio.wait_for(waiting, 30)
        for _ in range(250):  # past a checkpoint: commits keep working
            await _insert(second, None)
        async with second.read() as conn:
            names = set((await conn.execute(sa.select(ns.c.name))).scalars().all())
    finally:
        clock.cancel()
        await first.close()
        await second.close()
    assert {"default", "held", "waited"} <= names


async def _insert(db: Database, values: dict[str, object] | None) -> None:
    async with db.begin() as conn:
        if values is None:
            await conn.execute(sa.text("UPDATE namespaces SET description = 'x'"))
        else:
            await conn.execute(tables.namespaces.insert().values(**values))


async def test_sqlite_begin_cancelled_while_waiting_for_another_writer_leaves_nothing_open(
    tmp_path: Path,
) -> None:
    """A transaction cancelled while it waits for another process's write lock: once that
    process commits, this process writes again and so does the other (no transaction of the
    cancelled begin is left holding the lock); the cancelled block never ran."""
    path = tmp_path / "shared.db"
    db = Database(f"sqlite:///{path}")
    await db.migrate()
    async with db.begin():
        pass  # the kept writer connection is open
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process is writing
    ran = False

    async def write() -> None:
        nonlocal ran
        async with db.begin():
            ran = True

    task = asyncio.create_task(write())
    await asyncio.sleep(0.3)
    task.cancel()
    release = asyncio.get_running_loop().call_later(0.3, other.execute, "COMMIT")
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled() and not ran
    for attempt in range(2):
        async with asyncio.timeout(10), db.begin() as conn:
            await conn.execute(
                sa.insert(tables.namespaces).values(
                    name=f"after-cancel-{attempt}",
                    constraints={},
                    created_at=utcnow(),
                    updated_at=utcnow(),
                )
            )
    release.cancel()
    other.execute("BEGIN IMMEDIATE")  # would fail with "database is locked" if left held
    other.execute("ROLLBACK")
    other.close()
    await db.close()


async def test_plain_rows_read_what_sqlalchemy_reads(db_url: str) -> None:
    """The driver-level read the listing uses gives SQLAlchemy's rows for the same query, with
    an expanded IN list and a parameter that needs processing (a timestamp)."""
    db = Database(db_url)
    await db.migrate()
    n = tables.namespaces
    created = dt.datetime(2026, 1, 2, 3, 4, 5, 600)
    async with db.begin() as conn:
        await conn.execute(
            n.insert(),
            [
                {"name": name, "constraints": [], "created_at": created, "updated_at": created}
                for name in ("a", "b", "c'quote")
            ],
        )
    query = (
        sa.select(n.c.name, n.c.description)
        .where(n.c.name.in_(["a", "c'quote", "missing"]), n.c.created_at >= created)
        .order_by(n.c.name)
    )
    async with db.read() as conn:
        plain = [tuple(row) for row in await plain_rows(conn, query)]
        expected = [tuple(row) for row in (await conn.execute(query)).all()]
        later = query.where(n.c.created_at > created)
        none = await plain_rows(conn, later)
    await db.close()
    assert plain == expected == [("a", ""), ("c'quote", "")]
    assert none == []
