"""Initial platform schema: brokers, catalog, namespaces, instances, bindings, operations, audit.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _stamps() -> list[sa.Column[dt.datetime]]:
    return [
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    ]


def upgrade() -> None:
    """Create every table and the ``default`` namespace."""
    op.create_table(
        "brokers",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("auth", sa.String(16), nullable=False),
        sa.Column("credentials", sa.Text, nullable=True),
        sa.Column("catalog", sa.JSON, nullable=False),
        sa.Column("catalog_fetched_at", sa.DateTime, nullable=False),
        sa.Column("created_by", sa.String(63), nullable=False),
        *_stamps(),
    )
    op.create_table(
        "services",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "broker_id",
            sa.String(36),
            sa.ForeignKey("brokers.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("service_id", sa.Text, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("definition", sa.JSON, nullable=False),
        sa.UniqueConstraint("name", name="uq_services_name"),
    )
    op.create_table(
        "plans",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "service_pk",
            sa.String(36),
            sa.ForeignKey("services.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("plan_id", sa.Text, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("definition", sa.JSON, nullable=False),
        sa.UniqueConstraint("service_pk", "name", name="uq_plans_service_name"),
    )
    namespaces = op.create_table(
        "namespaces",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("visible_plans", sa.JSON, nullable=True),
        sa.Column("constraints", sa.JSON, nullable=False),
        sa.Column("max_instances", sa.Integer, nullable=True),
        *_stamps(),
    )
    op.create_table(
        "instances",
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
        *_stamps(),
        sa.UniqueConstraint("namespace", "name", name="uq_instances_namespace_name"),
    )
    op.create_table(
        "bindings",
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
        *_stamps(),
        sa.UniqueConstraint("namespace", "name", name="uq_bindings_namespace_name"),
    )
    op.create_index("ix_bindings_app", "bindings", ["namespace", "app"])
    op.create_index("ix_bindings_instance", "bindings", ["instance_id"])
    op.create_table(
        "operations",
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
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.DateTime, nullable=False),
        sa.Column("deadline", sa.DateTime, nullable=True),
        sa.Column("owner", sa.String(128), nullable=True),
        sa.Column("lease_until", sa.DateTime, nullable=True),
        sa.Column("created_by", sa.String(63), nullable=False),
        *_stamps(),
        sa.Column("finished_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_operations_due", "operations", ["state", "next_attempt_at"])
    op.create_index("ix_operations_instance", "operations", ["instance_id"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("user", sa.String(63), nullable=False),
        sa.Column("action", sa.String(63), nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("operation_id", sa.String(36), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
    )
    op.create_index("ix_audit_target", "audit", ["target"])
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    op.bulk_insert(
        namespaces,
        [
            {
                "name": "default",
                "description": "The namespace used when none is named.",
                "visible_plans": None,
                "constraints": {},
                "max_instances": None,
                "created_at": now,
                "updated_at": now,
            }
        ],
    )


def downgrade() -> None:
    """Drop every table."""
    for table in ("audit", "operations", "bindings", "instances", "namespaces", "plans"):
        op.drop_table(table)
    op.drop_table("services")
    op.drop_table("brokers")
