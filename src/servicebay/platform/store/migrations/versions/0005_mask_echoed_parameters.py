"""Mask the sensitive parameters a broker quoted back before the platform masked them.

A provision, update or bind keeps the values its redacted copy hides (``secret_values``) in
its request, and the worker masks them in the broker's words before they become the
operation's description. Operations recorded before that may still hold them in clear: the
operation's ``description``, its ``audit.details``, and a purge's ``evidence`` (the instance's
last operation); ``instances.view_json`` follows through the triggers of 0003.

Each operation's texts get the values its own request sent masked: for an update, those its
``parameters_shown`` hides; for a provision or a bind, those any schema of the plan it named
marks sensitive (the plan as stored now). A purge's evidence gets those of every operation of
its instance. Requests are encrypted: ``Database.migrate`` hands over the platform key
(``cipher``), without which a database with operations cannot be migrated.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from alembic import context, op

from servicebay.osb import Plan, redact
from servicebay.platform.broker_link import masked
from servicebay.platform.services.instances import secret_values

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_operations = sa.table(
    "operations",
    sa.column("id", sa.String),
    sa.column("kind", sa.String),
    sa.column("instance_id", sa.String),
    sa.column("request", sa.Text),
    sa.column("description", sa.Text),
    sa.column("evidence", sa.JSON),
)
_audit = sa.table(
    "audit",
    sa.column("id", sa.Integer),
    sa.column("operation_id", sa.String),
    sa.column("details", sa.JSON),
)
_plans = sa.table(
    "plans",
    sa.column("service_pk", sa.String),
    sa.column("plan_id", sa.Text),
    sa.column("definition", sa.JSON),
)
_services = sa.table("services", sa.column("id", sa.String), sa.column("service_id", sa.Text))


def _schemas(conn: sa.Connection) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Every parameter schema of each plan, by the broker's (service id, plan id)."""
    found: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    query = sa.select(_services.c.service_id, _plans.c.plan_id, _plans.c.definition).join(
        _services, _services.c.id == _plans.c.service_pk
    )
    for service_id, plan_id, definition in conn.execute(query):
        plan = Plan.model_validate(definition)
        schemas = (
            plan.instance_create_schema(),
            plan.instance_update_schema(),
            plan.binding_create_schema(),
        )
        found[(service_id, plan_id)] += [s for s in schemas if s]
    return found


def _sent(
    request: dict[str, Any], schemas: dict[tuple[str, str], list[dict[str, Any]]]
) -> set[str]:
    """The sensitive values one operation's request sent its broker."""
    values = set(request.get("secret_values") or [])
    parameters, shown = request.get("parameters"), request.get("parameters_shown")
    if isinstance(parameters, dict) and isinstance(shown, dict):  # an update
        values.update(secret_values(parameters, shown))
    body = request.get("body") or {}
    sent = body.get("parameters")
    if isinstance(sent, dict):
        for schema in schemas.get((str(body.get("service_id")), str(body.get("plan_id"))), []):
            values.update(secret_values(sent, redact(schema, sent)))
    return values


def _update(
    conn: sa.Connection, table: Any, key: Any, name: str, value: Any, secrets: set[str]
) -> None:
    hidden = masked(value, sorted(secrets, key=len, reverse=True))
    if hidden != value:
        conn.execute(sa.update(table).where(table.c.id == key).values({name: hidden}))


def _with_requests(conn: sa.Connection, table: Any, revision: str) -> tuple[list[Any], Any]:
    """The rows of ``table`` (operations) that carry a request, and the platform key that opens
    them; raises when there are such rows and the migration was not given the key."""
    rows = conn.execute(sa.select(table).where(table.c.request.is_not(None))).mappings().all()
    if not rows:
        return [], None
    cipher = context.config.attributes.get("cipher")
    if cipher is None:
        raise RuntimeError(
            f"migration {revision} masks sensitive parameters in stored operations and needs "
            "the platform key: start the platform (or a worker) to migrate this database"
        )
    return list(rows), cipher


def upgrade() -> None:
    """Mask each operation's sent sensitive values in its description, audit and evidence."""
    conn = op.get_bind()
    o = _operations
    rows, cipher = _with_requests(conn, o, revision)
    if not rows:
        return
    schemas = _schemas(conn)
    sent = {row["id"]: _sent(cipher.open(row["request"]) or {}, schemas) for row in rows}
    by_instance: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if row["instance_id"] is not None:
            by_instance[row["instance_id"]] |= sent[row["id"]]
    for row in rows:
        if own := sent[row["id"]]:
            _update(conn, o, row["id"], "description", row["description"], own)
        theirs = by_instance.get(row["instance_id"]) if row["instance_id"] else None
        if row["evidence"] is not None and theirs:
            _update(conn, o, row["id"], "evidence", row["evidence"], theirs)
    a = _audit
    for key, operation_id, details in conn.execute(
        sa.select(a.c.id, a.c.operation_id, a.c.details)
    ):
        if mine := sent.get(operation_id):
            _update(conn, a, key, "details", details, mine)


def downgrade() -> None:
    """Nothing to undo: masked text is not unmasked."""
