"""Hot statements (``store.Statement``): what they store and read is what SQLAlchemy stores and
reads, on SQLite (straight on the driver) and PostgreSQL (through SQLAlchemy)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from servicebay.platform.store import Database, Statement, tables, update_by_id

o = tables.operations


def _operation(**changes: Any) -> dict[str, Any]:
    at = dt.datetime(2026, 12, 1, 5, 4, 3, 210)
    row: dict[str, Any] = {column.name: None for column in o.columns}
    row.update(
        id=str(uuid.uuid4()),
        kind="provision",
        state="queued",
        namespace="default",
        phase="send",
        evidence={"nested": [1, "two", None], "flag": True},
        attempts=0,
        next_attempt_at=at,
        created_by="alice",
        created_at=at,
        updated_at=at,
    )
    row.update(changes)
    return row


async def test_statement_stores_and_reads_what_sqlalchemy_does(db_url: str) -> None:
    """A row inserted by a Statement reads back, through SQLAlchemy, exactly as one inserted
    by SQLAlchemy, and a Statement reads both exactly as SQLAlchemy does (timestamps, JSON,
    NULLs, the keys of every column)."""
    db = Database(db_url)
    await db.migrate()
    fast, usual = _operation(), _operation(evidence=None, finished_at=dt.datetime(2027, 1, 2))
    select = sa.select(o).where(o.c.id == sa.bindparam("op_id"))
    try:
        async with db.begin() as conn:
            await Statement(o.insert()).run(conn, fast)
            await conn.execute(o.insert(), usual)
        async with db.read() as conn:
            for row in (fast, usual):
                expected = (await conn.execute(select, {"op_id": row["id"]})).mappings().one()
                got = await Statement(select).first(conn, {"op_id": row["id"]})
                assert dict(expected) == row
                assert got == dict(expected)
                assert list(got or {}) == list(expected.keys())
    finally:
        await db.close()


async def test_statement_counts_the_rows_an_update_matched(db_url: str) -> None:
    """The worker's lease guard relies on the count: 1 for its own active row, 0 once the row
    is no longer active or is owned by another worker."""
    db = Database(db_url)
    await db.migrate()
    row = _operation(owner="me", state="in progress")
    guarded = update_by_id(o, ("state",), ("state", ("queued", "in progress")))
    try:
        async with db.begin() as conn:
            await Statement(o.insert()).run(conn, row)
            assert (
                await guarded.run(conn, {"_key": row["id"], "_owner": "other", "_state": "x"}) == 0
            )
            done = {"_key": row["id"], "_owner": "me", "_state": "succeeded"}
            assert await guarded.run(conn, done) == 1
            assert await guarded.run(conn, done) == 0
        async with db.read() as conn:
            assert await conn.scalar(sa.select(o.c.state).where(o.c.id == row["id"])) == "succeeded"
    finally:
        await db.close()


async def test_statement_with_an_in_list_is_refused_on_sqlite(tmp_path: Any) -> None:
    """An IN list is expanded at execution, which a statement compiled once cannot do: it is
    refused outright rather than run wrong."""
    db = Database(f"sqlite:///{tmp_path / 'p.db'}")
    await db.migrate()
    try:
        async with db.read() as conn:
            with pytest.raises(ValueError, match="plain statement"):
                await Statement(sa.select(o.c.id).where(o.c.state.in_(("a", "b")))).rows(conn)
    finally:
        await db.close()


@pytest.mark.parametrize("through_sqlalchemy", [False, True])
async def test_a_failed_transaction_stores_nothing_and_runs_its_rollback_hooks(
    db_url: str, through_sqlalchemy: bool
) -> None:
    """A transaction that raises keeps none of its writes, whether they ran as Statements only
    or also through SQLAlchemy, and calls what was registered with ``on_rollback``; the next
    transaction then commits normally, and its hooks are not called."""
    db = Database(db_url)
    await db.migrate()
    calls: list[str] = []
    lost, kept = _operation(), _operation()
    try:
        with pytest.raises(RuntimeError):
            async with db.begin() as conn:
                await Statement(o.insert()).run(conn, lost)
                if through_sqlalchemy:
                    await conn.execute(o.update().where(o.c.id == lost["id"]).values(kind="x"))
                db.on_rollback(conn, lambda: calls.append("rolled back"))
                raise RuntimeError("the use case failed")
        assert calls == ["rolled back"]
        async with db.begin() as conn:
            await Statement(o.insert()).run(conn, kept)
            db.on_rollback(conn, lambda: calls.append("not expected"))
        async with db.read() as conn:
            stored = (await conn.execute(sa.select(o.c.id))).scalars().all()
        assert stored == [kept["id"]]
        assert calls == ["rolled back"]
    finally:
        await db.close()
