"""Mask the platform's broker credentials in what was recorded before a broker's words were.

A broker that quotes the credentials the platform sent it (a login error, an echoed
``Authorization`` header) has them replaced by ``***`` before its words become an operation's
description (``broker_link._redacted``). Rows written before that masking existed may still
hold them in clear: ``operations.description``, a purge's ``operations.evidence`` (it keeps the
instance's last operation) and ``audit.details`` of finished operations. ``instances.view_json``
shows the last operation's description and is rendered again by the triggers of 0003 when that
description changes.

Every text there gets every broker's secrets masked (password, bearer token, the Basic header
value: ``BrokerEndpoint.secrets``), the longest first, as the live masking does; all brokers'
secrets rather than those of the row's broker, because an operation of a deleted instance no
longer says which broker it called. The secrets of a broker since removed, or credentials
changed since, are not known any more and cannot be masked.

The credentials are decrypted with the platform key, which ``Database.migrate`` hands over as
``cipher``; a database whose brokers have credentials cannot be migrated without it.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context, op

from servicebay.platform.broker_link import BrokerEndpoint, masked

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_brokers = sa.table("brokers", sa.column("credentials", sa.Text))
_operations = sa.table(
    "operations",
    sa.column("id", sa.String),
    sa.column("description", sa.Text),
    sa.column("evidence", sa.JSON),
)
_audit = sa.table("audit", sa.column("id", sa.Integer), sa.column("details", sa.JSON))


def _secrets(conn: sa.Connection, cipher: Any) -> list[str]:
    """Every broker's secrets, longest first (a secret inside a longer one is masked with it)."""
    sealed = conn.execute(
        sa.select(_brokers.c.credentials).where(_brokers.c.credentials.is_not(None))
    ).scalars()
    found: set[str] = set()
    for value in sealed:
        if cipher is None:
            raise RuntimeError(
                "migration 0004 masks broker credentials in stored operations and needs the "
                "platform key: start the platform (or a worker) to migrate this database"
            )
        creds = cipher.open(value) or {}
        endpoint = BrokerEndpoint(
            "", creds.get("username"), creds.get("password"), creds.get("bearer_token")
        )
        found.update(endpoint.secrets())
    return sorted(found, key=len, reverse=True)


def _mask_column(conn: sa.Connection, table: Any, name: str, secrets: list[str]) -> None:
    column = table.c[name]
    for key, value in conn.execute(sa.select(table.c.id, column).where(column.is_not(None))):
        hidden = masked(value, secrets)
        if hidden != value:
            conn.execute(sa.update(table).where(table.c.id == key).values({name: hidden}))


def upgrade() -> None:
    """Mask every broker's secrets in operation descriptions, evidence and audit details."""
    conn = op.get_bind()
    secrets = _secrets(conn, context.config.attributes.get("cipher"))
    if not secrets:
        return
    _mask_column(conn, _operations, "description", secrets)
    _mask_column(conn, _operations, "evidence", secrets)
    _mask_column(conn, _audit, "details", secrets)


def downgrade() -> None:
    """Nothing to undo: masked text is not unmasked."""
