"""Mask a record's sensitive parameters in what its later operations recorded in clear.

Every operation on an instance or binding now carries the sensitive values the record keeps
(``instances.kept_secrets``), so that a broker quoting them in its answer to a deprovision, an
unbind, an orphan mitigation, or a bind or update that sent other values, has them masked.
Operations recorded before got their own request's values masked only (0005): a deprovision's
or an unbind's description may hold the instance's or binding's values in clear.

Each operation's description and ``audit.details`` now get masked the values every operation of
its instance sent (0005's ``_sent``: a provision's, an update's, and for an operation on a
binding, the binding's bind too); a purge's evidence those of the instance and its bindings.
Requests are encrypted: ``Database.migrate`` hands over the platform key (``cipher``).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import importlib
from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# 0005's reading of what a request sent, and its masking (its name is not an identifier).
_0005 = importlib.import_module(
    "servicebay.platform.store.migrations.versions.0005_mask_echoed_parameters"
)
_with_requests = _0005._with_requests
_operations = sa.table(
    "operations",
    sa.column("id", sa.String),
    sa.column("instance_id", sa.String),
    sa.column("binding_id", sa.String),
    sa.column("request", sa.Text),
    sa.column("description", sa.Text),
    sa.column("evidence", sa.JSON),
)


def _values(rows: list[Any], cipher: Any) -> dict[str, set[str]]:
    """The sensitive values each record was sent: by instance id, and by binding id."""
    schemas = _0005._schemas(op.get_bind())
    found: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        sent = _0005._sent(cipher.open(row["request"]) or {}, schemas)
        if sent and row["instance_id"] is not None:
            found[row["binding_id"] or row["instance_id"]] |= sent
    return found


def upgrade() -> None:
    """Mask every operation's target's sensitive values in its description, audit, evidence."""
    conn = op.get_bind()
    o = _operations
    rows, cipher = _with_requests(conn, o, revision)
    if not rows:
        return
    values = _values(rows, cipher)
    if not values:
        return
    everything: dict[str, set[str]] = defaultdict(set)  # an instance's and its bindings'
    target: dict[str, set[str]] = {}
    for row in rows:
        if row["instance_id"] is None:
            continue
        own = values.get(row["instance_id"], set())
        target[row["id"]] = own | values.get(row["binding_id"] or "", set())
        everything[row["instance_id"]] |= target[row["id"]]
    for row in rows:
        if hidden := target.get(row["id"]):
            _0005._update(conn, o, row["id"], "description", row["description"], hidden)
        if row["evidence"] is not None and (theirs := everything.get(row["instance_id"])):
            _0005._update(conn, o, row["id"], "evidence", row["evidence"], theirs)
    a = _0005._audit
    for key, operation_id, details in conn.execute(
        sa.select(a.c.id, a.c.operation_id, a.c.details)
    ):
        if hidden := target.get(operation_id):
            _0005._update(conn, a, key, "details", details, hidden)


def downgrade() -> None:
    """Nothing to undo: masked text is not unmasked."""
