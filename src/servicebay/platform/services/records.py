"""How stored rows look to API users: the JSON views of operations, instances and bindings.

Views never include encrypted columns; parameters appear only as their redacted copy. The
select helpers join an instance or binding with its plan, service, broker and last operation so
a list of 10,000 instances is one query.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from servicebay.platform.store import Statement, tables

_OP_COLUMNS = (
    "id",
    "kind",
    "state",
    "description",
    "namespace",
    "instance_name",
    "binding_name",
    "created_by",
    "created_at",
    "updated_at",
    "finished_at",
    "attempts",
    "orphan_mitigation_id",
    "parent_id",
)
TERMINAL = ("succeeded", "failed")


def ts(value: dt.datetime | None) -> str | None:
    """A stored naive-UTC timestamp as ISO 8601 with ``Z``."""
    return None if value is None else value.isoformat() + "Z"


def operation_view(row: Mapping[Any, Any], prefix: str = "") -> dict[str, Any] | None:
    """An operation row (optionally with prefixed column names) as the API's Operation."""
    if row.get(prefix + "id") is None:
        return None

    def get(name: str) -> Any:
        return row[prefix + name]

    return {
        "id": get("id"),
        "kind": get("kind"),
        "state": get("state"),
        "description": get("description"),
        "namespace": get("namespace"),
        "instance": get("instance_name"),
        "binding": get("binding_name"),
        "created_by": get("created_by"),
        "created_at": ts(get("created_at")),
        "updated_at": ts(get("updated_at")),
        "finished_at": ts(get("finished_at")),
        "attempts": get("attempts"),
        "orphan_mitigation": get("orphan_mitigation_id"),
        "parent": get("parent_id"),
    }


@functools.cache
def instance_select() -> sa.Select[Any]:
    """Instances with their plan/service/broker names and last operation (built once)."""
    i, p, s, b = tables.instances, tables.plans, tables.services, tables.brokers
    last = tables.operations.alias("lo")
    columns = [last.c[name].label("lo_" + name) for name in _OP_COLUMNS]
    return (
        sa.select(
            *(column for column in i.c if column.name != "view_json"),
            p.c.name.label("plan_name"),
            s.c.name.label("service_name"),
            b.c.name.label("broker_name"),
            *columns,
        )
        .join(p, p.c.id == i.c.plan_pk)
        .join(s, s.c.id == p.c.service_pk)
        .join(b, b.c.id == s.c.broker_id)
        .outerjoin(last, last.c.id == i.c.last_operation_id)
    )


@functools.cache
def instance_by_name() -> sa.Select[Any]:
    """:func:`instance_select` of one instance, by ``namespace`` and ``name`` bind parameters."""
    i = tables.instances
    return instance_select().where(
        i.c.namespace == sa.bindparam("namespace"), i.c.name == sa.bindparam("name")
    )


def id_by_name(table: sa.Table) -> Statement:
    """The id of ``table``'s row by ``namespace`` and ``name`` bind parameters (None: free)."""
    return Statement(
        sa.select(table.c.id).where(
            table.c.namespace == sa.bindparam("namespace"), table.c.name == sa.bindparam("name")
        )
    )


def with_operation(row: Mapping[Any, Any], op: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    """A joined row as it is after ``changes`` and with ``op`` as its last operation.

    Lets a use case answer with the view of what it just wrote, without reading it back.
    """
    return {
        **row,
        **changes,
        "last_operation_id": op["id"],
        **{"lo_" + key: op[key] for key in _OP_COLUMNS},
    }


def instance_view(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A row of :func:`instance_select` as the API's Instance."""
    return {
        "id": row["id"],
        "name": row["name"],
        "namespace": row["namespace"],
        "service": row["service_name"],
        "plan": row["plan_name"],
        "broker": row["broker_name"],
        "state": row["state"],
        "parameters": row["parameters_shown"],
        "dashboard_url": row["dashboard_url"],
        "maintenance_info": row["maintenance_info"],
        "created_by": row["created_by"],
        "created_at": ts(row["created_at"]),
        "updated_at": ts(row["updated_at"]),
        "last_operation": operation_view(row, "lo_"),
    }


@functools.cache
def binding_select() -> sa.Select[Any]:
    """Bindings with their instance, plan/service/broker names and last operation (built once)."""
    bi, i, p, s, b = (
        tables.bindings,
        tables.instances,
        tables.plans,
        tables.services,
        tables.brokers,
    )
    last = tables.operations.alias("lo")
    columns = [last.c[name].label("lo_" + name) for name in _OP_COLUMNS]
    return (
        sa.select(
            bi,
            i.c.name.label("instance_name"),
            p.c.name.label("plan_name"),
            s.c.name.label("service_name"),
            b.c.name.label("broker_name"),
            *columns,
        )
        .join(i, i.c.id == bi.c.instance_id)
        .join(p, p.c.id == i.c.plan_pk)
        .join(s, s.c.id == p.c.service_pk)
        .join(b, b.c.id == s.c.broker_id)
        .outerjoin(last, last.c.id == bi.c.last_operation_id)
    )


def binding_view(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A row of :func:`binding_select` as the API's Binding (without credentials)."""
    return {
        "id": row["id"],
        "name": row["name"],
        "namespace": row["namespace"],
        "instance": row["instance_name"],
        "service": row["service_name"],
        "plan": row["plan_name"],
        "broker": row["broker_name"],
        "kind": row["kind"],
        "app": row["app"],
        "state": row["state"],
        "parameters": row["parameters_shown"],
        "created_by": row["created_by"],
        "created_at": ts(row["created_at"]),
        "updated_at": ts(row["updated_at"]),
        "last_operation": operation_view(row, "lo_"),
    }


def broker_view(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A broker row as the API's Broker (never its credentials)."""
    catalog = row["catalog"] or {}
    return {
        "name": row["name"],
        "url": row["url"],
        "auth": row["auth"],
        "services": [s.get("name") for s in catalog.get("services", [])],
        "catalog_fetched_at": ts(row["catalog_fetched_at"]),
        "created_at": ts(row["created_at"]),
        "updated_at": ts(row["updated_at"]),
    }
