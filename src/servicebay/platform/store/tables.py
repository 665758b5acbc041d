"""The platform's tables (SQLAlchemy Core), mirrored exactly by the Alembic migrations.

Stored fields, and which of them are secret:

- ``brokers``: name, URL, auth kind, ``credentials`` (encrypted JSON: username/password or bearer
  token), the last validated ``catalog`` (JSON, minus dashboard client secrets).
- ``services`` / ``plans``: the catalog broken out so names resolve with an index; ``schemas`` and
  ``maintenance_info`` are JSON. A plan removed from a catalog but still used is kept ``active=0``.
- ``namespaces``: plan visibility (``visible_plans`` JSON list or NULL = all), ``constraints``
  (JSON schemas keyed ``service`` or ``service/plan``), ``max_instances``, ``members`` (JSON list
  of user names; NULL or empty = open to every user, see ``services.access``).
- ``instances`` / ``bindings``: ``parameters`` encrypted, ``parameters_shown`` the redacted copy
  (sensitive values replaced by ``***``); binding ``credentials`` encrypted.
- ``operations``: the work queue and its history. ``request`` (encrypted) holds what a worker needs
  to send or resume, and the sensitive parameter values to mask in the broker's answers (those
  sent and those the target keeps); ``phase``/``broker_operation``/``deadline`` let any process
  resume after a crash; ``owner``/``lease_until`` make sure one worker at a time drives it.
- ``audit``: who did what (user, action, target, outcome, redacted details).
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

brokers = sa.Table(
    "brokers",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(63), nullable=False, unique=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("auth", sa.String(16), nullable=False),
    sa.Column("credentials", sa.Text, nullable=True),
    sa.Column("catalog", sa.JSON, nullable=False),
    sa.Column("catalog_fetched_at", sa.DateTime, nullable=False),
    sa.Column("created_by", sa.String(63), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)

services = sa.Table(
    "services",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column(
        "broker_id", sa.String(36), sa.ForeignKey("brokers.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("service_id", sa.Text, nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False, default=True),
    sa.Column("definition", sa.JSON, nullable=False),
    sa.UniqueConstraint("name", name="uq_services_name"),
)

plans = sa.Table(
    "plans",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column(
        "service_pk",
        sa.String(36),
        sa.ForeignKey("services.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("plan_id", sa.Text, nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False, default=True),
    sa.Column("definition", sa.JSON, nullable=False),
    sa.UniqueConstraint("service_pk", "name", name="uq_plans_service_name"),
)

namespaces = sa.Table(
    "namespaces",
    metadata,
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("visible_plans", sa.JSON, nullable=True),
    sa.Column("constraints", sa.JSON, nullable=False),
    sa.Column("max_instances", sa.Integer, nullable=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("members", sa.JSON, nullable=True),
)

instances = sa.Table(
    "instances",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("namespace", sa.String(63), sa.ForeignKey("namespaces.name"), nullable=False),
    sa.Column("name", sa.String(63), nullable=False),
    sa.Column("plan_pk", sa.String(36), sa.ForeignKey("plans.id"), nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("parameters", sa.Text, nullable=True),
    sa.Column("parameters_shown", sa.JSON, nullable=False),
    sa.Column("dashboard_url", sa.Text, nullable=True),
    sa.Column("maintenance_info", sa.JSON, nullable=True),
    sa.Column("last_operation_id", sa.String(36), nullable=True),
    sa.Column("created_by", sa.String(63), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    # The instance's API view as JSON text, kept by triggers (migration 0003); read by listings.
    sa.Column("view_json", sa.Text, nullable=True),
    sa.UniqueConstraint("namespace", "name", name="uq_instances_namespace_name"),
)
sa.Index("ix_instances_last_operation", instances.c.last_operation_id)

bindings = sa.Table(
    "bindings",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("namespace", sa.String(63), nullable=False),
    sa.Column("name", sa.String(63), nullable=False),
    sa.Column(
        "instance_id",
        sa.String(36),
        sa.ForeignKey("instances.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("app", sa.String(63), nullable=True),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("parameters", sa.Text, nullable=True),
    sa.Column("parameters_shown", sa.JSON, nullable=False),
    sa.Column("credentials", sa.Text, nullable=True),
    sa.Column("last_operation_id", sa.String(36), nullable=True),
    sa.Column("created_by", sa.String(63), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("namespace", "name", name="uq_bindings_namespace_name"),
)
sa.Index("ix_bindings_app", bindings.c.namespace, bindings.c.app)
sa.Index("ix_bindings_instance", bindings.c.instance_id)

operations = sa.Table(
    "operations",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("kind", sa.String(24), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("description", sa.Text, nullable=True),
    sa.Column("namespace", sa.String(63), nullable=False),
    sa.Column("instance_id", sa.String(36), nullable=True),
    sa.Column("instance_name", sa.String(63), nullable=True),
    sa.Column("binding_id", sa.String(36), nullable=True),
    sa.Column("binding_name", sa.String(63), nullable=True),
    sa.Column("parent_id", sa.String(36), nullable=True),
    sa.Column("orphan_mitigation_id", sa.String(36), nullable=True),
    sa.Column("phase", sa.String(16), nullable=False),
    sa.Column("broker_operation", sa.Text, nullable=True),
    sa.Column("request", sa.Text, nullable=True),
    sa.Column("evidence", sa.JSON, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.DateTime, nullable=False),
    sa.Column("deadline", sa.DateTime, nullable=True),
    sa.Column("owner", sa.String(128), nullable=True),
    sa.Column("lease_until", sa.DateTime, nullable=True),
    sa.Column("created_by", sa.String(63), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime, nullable=True),
)
sa.Index("ix_operations_due", operations.c.state, operations.c.next_attempt_at)
sa.Index("ix_operations_instance", operations.c.instance_id)

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Column("user", sa.String(63), nullable=False),
    sa.Column("action", sa.String(63), nullable=False),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("operation_id", sa.String(36), nullable=True),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("details", sa.JSON, nullable=False),
)
sa.Index("ix_audit_target", audit.c.target)
