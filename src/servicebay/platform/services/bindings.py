"""Bindings (for an app) and service keys (for use outside an app): one lifecycle, two kinds.

A bind is checked (instance ready and bindable, parameters against the plan's binding schema)
and queued like a provision; the worker stores the credentials the broker returns, encrypted.
Credentials leave the platform only through :func:`get_binding` and :func:`app_bindings`, and
only for the user who created the binding or an admin.
"""

from __future__ import annotations

import functools
import secrets
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from servicebay.osb import Plan, Service, redact
from servicebay.platform.services.access import require_namespace, visible_namespaces
from servicebay.platform.services.catalog import (
    as_text,
    broker_columns,
    handoff_of,
    stored_plan,
    stored_service,
)
from servicebay.platform.services.errors import BadRequest, Conflict, Unprocessable, not_found
from servicebay.platform.services.instances import (
    check_parameters,
    invalid,
    joined,
    kept_secrets,
    secret_values,
)
from servicebay.platform.services.operations import audit, enqueue
from servicebay.platform.services.records import (
    TERMINAL,
    binding_select,
    binding_view,
    id_by_name,
    instance_by_name,
    operation_view,
    with_operation,
)
from servicebay.platform.services.runtime import Actor, Platform
from servicebay.platform.store import Statement, by_id_params, tables, update_by_id, utcnow


@functools.cache
def _binding_by_name(target: bool = False) -> Statement:
    """A binding by namespace and name; with ``target``, with its broker's columns and its
    instance's parameters too."""
    b, i = tables.bindings, tables.instances
    query = binding_select().where(
        b.c.namespace == sa.bindparam("namespace"), b.c.name == sa.bindparam("name")
    )
    if target:
        query = query.add_columns(
            *broker_columns(),
            i.c.parameters.label("instance_parameters"),
            i.c.parameters_shown.label("instance_parameters_shown"),
        )
    return Statement(query)


_TAKEN = id_by_name(tables.bindings)
_INSERT_BINDING = Statement(tables.bindings.insert())
# Every operation on a binding carries the binding's instance: the instance's index narrows the
# search to that instance's few operations (binding_id has no index; a scan grew with history).
_BUSY = Statement(
    sa.select(tables.operations.c.id).where(
        tables.operations.c.instance_id == sa.bindparam("instance_id"),
        tables.operations.c.binding_id == sa.bindparam("binding_id"),
        *(tables.operations.c.state != state for state in TERMINAL),
    )
)
_OFFERING = Statement(
    sa.select(as_text(tables.services.c.definition, "service"), *broker_columns())
    .join(tables.services, tables.services.c.id == tables.plans.c.service_pk)
    .join(tables.brokers, tables.brokers.c.id == tables.services.c.broker_id)
    .where(tables.plans.c.id == sa.bindparam("plan_pk"))
)
_INSTANCE = Statement(instance_by_name())


async def _require_binding(
    conn: AsyncConnection, namespace: str, name: str, target: bool = False
) -> Any:
    row = await _binding_by_name(target).first(conn, {"namespace": namespace, "name": name})
    if row is None:
        raise not_found("binding", f"{namespace}/{name}")
    return row


async def _offering_of(conn: AsyncConnection, plan_pk: str) -> tuple[Service, Plan, Any]:
    """The service and plan of an instance's plan, and the row with its broker's columns."""
    row = await _OFFERING.first(conn, {"plan_pk": plan_pk})
    assert row is not None
    return stored_service(row["service"]), stored_plan(row["plan_definition"]), row


async def bind(
    platform: Platform,
    actor: Actor,
    *,
    instance: str,
    namespace: str,
    kind: str,
    app: str | None,
    name: str | None,
    parameters: dict[str, Any],
) -> dict[str, Any]:
    """Check and queue a bind (202)."""
    if kind == "app" and not app:
        raise BadRequest("app: is required for a binding of kind 'app'")
    if kind == "key" and app:
        raise BadRequest("app: must not be given for a service key")
    name = name or (f"{instance}-{app}" if kind == "app" else f"{instance}-key-{_suffix()}")
    async with platform.db.begin() as conn:
        await require_namespace(conn, namespace, actor)
        params = {"namespace": namespace, "name": instance}
        inst = await _INSTANCE.first(conn, params)
        if inst is None:
            raise not_found("instance", f"{namespace}/{instance}")
        service, plan, broker = await _offering_of(conn, inst["plan_pk"])
        if not plan.effective_bindable(service):
            raise Unprocessable(
                f"plan {service.name}/{plan.name} is not bindable", code="not_bindable"
            )
        schema = plan.binding_create_schema()
        full, problems = check_parameters(schema, parameters, [], namespace)
        if problems:
            raise invalid(problems)
        if inst["state"] != "ready":
            raise Conflict(
                f"instance {instance!r} is {inst['state']}, not ready", code="instance_not_ready"
            )
        taken = await _TAKEN.scalar(conn, {"namespace": namespace, "name": name})
        if taken is not None:
            raise Conflict(f"binding '{namespace}/{name}' already exists", code="binding_exists")
        binding_id = str(uuid.uuid4())
        context: dict[str, Any] = {
            "platform": "servicebay",
            "namespace": namespace,
            "instance_name": instance,
        }
        body: dict[str, Any] = {
            "service_id": service.id,
            "plan_id": plan.id,
            "context": {**context, "app": app} if app else context,
            "parameters": full,
        }
        if app:
            body["bind_resource"] = {"app_guid": app}
        shown = redact(schema, full)
        request: dict[str, Any] = {"body": body}
        # The instance's sensitive values too: a broker may quote them in its answer to a bind.
        kept = kept_secrets(platform.cipher, inst["parameters"], inst["parameters_shown"])
        if sent := joined(secret_values(full, shown), kept):
            request["secret_values"] = sent
        op = await enqueue(
            conn,
            platform,
            kind="bind",
            namespace=namespace,
            user=actor.user,
            instance_id=inst["id"],
            instance_name=instance,
            binding_id=binding_id,
            binding_name=name,
            request=request,
            handoff=True,
        )
        now = utcnow()
        record: dict[str, Any] = {
            "id": binding_id,
            "namespace": namespace,
            "name": name,
            "instance_id": inst["id"],
            "kind": kind,
            "app": app,
            "state": "binding",
            "parameters": platform.cipher.seal(full),
            "parameters_shown": shown,
            "credentials": None,
            "last_operation_id": op["id"],
            "created_by": actor.user,
            "created_at": now,
            "updated_at": now,
        }
        await _INSERT_BINDING.run(conn, record)
        await audit(
            conn,
            user=actor.user,
            action=f"{'binding' if kind == 'app' else 'key'}.create",
            target=f"{namespace}/{name}",
            outcome="accepted",
            operation_id=op["id"],
            details={"instance": instance, "app": app, "parameters": shown},
        )
    platform.submit(op, handoff_of(broker, request, instance_id=inst["id"], binding_kind=kind))
    view = binding_view(
        with_operation(
            record,
            op,
            instance_name=instance,
            plan_name=inst["plan_name"],
            service_name=inst["service_name"],
            broker_name=inst["broker_name"],
        )
    )
    return {"binding": view, "operation": operation_view(op)}


def _suffix() -> str:
    return "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(6))


async def unbind(platform: Platform, actor: Actor, *, name: str, namespace: str) -> dict[str, Any]:
    """Queue an unbind (202)."""
    async with platform.db.begin() as conn:
        await require_namespace(conn, namespace, actor)
        row = await _require_binding(conn, namespace, name, target=True)
        busy = await _BUSY.scalar(
            conn, {"instance_id": row["instance_id"], "binding_id": row["id"]}
        )
        if busy is not None:
            raise Conflict(
                f"binding {name!r} has an operation in progress", code="operation_in_progress"
            )
        request: dict[str, Any] = {"previous_state": row["state"]}
        kept = joined(
            kept_secrets(platform.cipher, row["parameters"], row["parameters_shown"]),
            kept_secrets(
                platform.cipher, row["instance_parameters"], row["instance_parameters_shown"]
            ),
        )
        if kept:
            request["secret_values"] = kept
        op = await enqueue(
            conn,
            platform,
            kind="unbind",
            namespace=namespace,
            user=actor.user,
            instance_id=row["instance_id"],
            instance_name=row["instance_name"],
            binding_id=row["id"],
            binding_name=name,
            request=request,
            handoff=True,
        )
        values = {"state": "unbinding", "last_operation_id": op["id"], "updated_at": utcnow()}
        await update_by_id(tables.bindings, tuple(values)).run(
            conn, by_id_params(row["id"], values)
        )
        await audit(
            conn,
            user=actor.user,
            action=f"{'binding' if row['kind'] == 'app' else 'key'}.delete",
            target=f"{namespace}/{name}",
            outcome="accepted",
            operation_id=op["id"],
        )
    handoff = handoff_of(row, request, instance_id=row["instance_id"], binding_kind=row["kind"])
    platform.submit(op, handoff)
    view = binding_view(with_operation(row, op, state="unbinding"))
    return {"binding": view, "operation": operation_view(op)}


def _with_credentials(platform: Platform, actor: Actor, row: Any) -> dict[str, Any]:
    view = binding_view(row)
    if actor.admin or actor.user == row["created_by"]:
        view["credentials"] = platform.cipher.open(row["credentials"]) or {}
        view["credentials_hidden"] = False
    else:
        view["credentials_hidden"] = True
    return view


async def get_binding(
    platform: Platform, actor: Actor, *, name: str, namespace: str
) -> dict[str, Any]:
    """One binding; its credentials only for its creator or an admin."""
    async with platform.db.read() as conn:
        await require_namespace(conn, namespace, actor)
        return _with_credentials(platform, actor, await _require_binding(conn, namespace, name))


async def list_bindings(
    platform: Platform,
    actor: Actor,
    *,
    namespace: str,
    instance: str | None,
    app: str | None,
    kind: str | None,
) -> list[dict[str, Any]]:
    """Bindings of a namespace, or of every one (``*``), never with credentials."""
    b = tables.bindings
    if namespace == "*":
        query = binding_select().order_by(b.c.namespace, b.c.name)
    else:
        query = binding_select().where(b.c.namespace == namespace).order_by(b.c.name)
    if instance:
        query = query.where(tables.instances.c.name == instance)
    if app:
        query = query.where(b.c.app == app)
    if kind:
        query = query.where(b.c.kind == kind)
    async with platform.db.read() as conn:
        if namespace != "*":
            await require_namespace(conn, namespace, actor)
        elif (visible := await visible_namespaces(conn, actor)) is not None:
            query = query.where(b.c.namespace.in_(visible))
        rows = (await conn.execute(query)).mappings().all()
    return [binding_view(r) for r in rows]


async def app_bindings(
    platform: Platform, actor: Actor, *, app: str, namespace: str
) -> dict[str, Any]:
    """What ``bay run`` projects for an app: its ready bindings with type, provider, credentials."""
    b = tables.bindings
    query = (
        binding_select()
        .where(b.c.namespace == namespace, b.c.app == app, b.c.state == "ready")
        .order_by(b.c.name)
    )
    async with platform.db.read() as conn:
        await require_namespace(conn, namespace, actor)
        rows = (await conn.execute(query)).mappings().all()
    items = []
    for row in rows:
        full = _with_credentials(platform, actor, row)
        item = {
            "name": row["name"],
            "instance": row["instance_name"],
            "type": row["service_name"],
            "provider": row["broker_name"],
            "service": row["service_name"],
            "plan": row["plan_name"],
            "credentials_hidden": full["credentials_hidden"],
        }
        if "credentials" in full:
            item["credentials"] = full["credentials"]
        items.append(item)
    return {"app": app, "namespace": namespace, "items": items}
