"""Alembic environment of the platform store: always run programmatically by ``migrate``.

The caller hands over an open (synchronous) connection in ``config.attributes["connection"]``;
on PostgreSQL it already holds an advisory lock, so two platform processes starting at once
never run the same migration twice.
"""

from __future__ import annotations

from alembic import context

from servicebay.platform.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
