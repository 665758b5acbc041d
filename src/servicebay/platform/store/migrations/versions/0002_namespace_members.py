"""Namespace membership: ``namespaces.members`` (JSON list of user names; NULL = open to all).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``members``; existing namespaces keep no members, so they stay open as before."""
    op.add_column("namespaces", sa.Column("members", sa.JSON, nullable=True))


def downgrade() -> None:
    """Drop ``members`` (every namespace is open again)."""
    with op.batch_alter_table("namespaces") as batch:
        batch.drop_column("members")
