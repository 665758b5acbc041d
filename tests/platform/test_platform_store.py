"""The store: migrations produce exactly the tables the code describes, and run twice safely."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from servicebay.platform.store import Database, tables


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
