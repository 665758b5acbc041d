"""Service instances: provision (or dry-run it), update, deprovision, purge, list.

Every request is checked completely *before* anything is stored or sent: the namespace, the
plan's existence and visibility, the namespace quota, the name, and the parameters — against
the plan's schema with ``servicebay.osb``'s validator and then against the namespace's
constraints. A dry run makes the same checks. Accepted requests store the record and a queued
operation in one transaction; the worker sends it to the broker.

A provision fills in the schema's defaults; an update does not: it sends only the parameters
the user gave (the broker keeps the rest, as the SDK does) and the platform records the old
parameters with the given ones on top. Parameters are stored encrypted, and shown only
redacted: a value ``writeOnly`` / ``x-sensitive`` under any plan the instance has had stays
``***`` for good (see :func:`hide`).
"""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from servicebay.osb import (
    REDACTED,
    InvalidParameters,
    apply_defaults,
    redact,
    validate_parameters,
)
from servicebay.platform.keys import Cipher
from servicebay.platform.services.access import require_namespace, visible_namespaces
from servicebay.platform.services.catalog import (
    Offering,
    broker_columns,
    constraints_for,
    handoff_of,
    plan_of,
    resolve_offering,
)
from servicebay.platform.services.errors import Conflict, Unprocessable, not_found
from servicebay.platform.services.operations import audit, enqueue
from servicebay.platform.services.records import (
    TERMINAL,
    id_by_name,
    instance_by_name,
    instance_view,
    operation_view,
    with_operation,
)
from servicebay.platform.services.runtime import Actor, Handoff, Platform
from servicebay.platform.store import (
    Statement,
    by_id_params,
    plain_rows,
    tables,
    update_by_id,
    utcnow,
)


def check_parameters(
    schema: dict[str, Any] | None,
    parameters: dict[str, Any],
    constraints: list[dict[str, Any]],
    namespace: str,
    *,
    defaults: bool = True,
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Parameters (after defaults, unless not wanted), and every problem with them (plan schema,
    then namespace)."""
    full = apply_defaults(schema, parameters) if defaults else copy.deepcopy(parameters)
    problems: list[dict[str, str]] = []
    try:
        validate_parameters(schema, full)
    except InvalidParameters as exc:
        problems += [{"path": p.path, "rule": p.rule, "message": p.message} for p in exc.problems]
    for extra in constraints:
        try:
            validate_parameters(extra, full)
        except InvalidParameters as exc:
            problems += [
                {
                    "path": p.path,
                    "rule": p.rule,
                    "message": f"{p.message} [namespace {namespace}]",
                }
                for p in exc.problems
            ]
    return full, problems


def hide(
    parameters: dict[str, Any],
    schemas: list[dict[str, Any] | None],
    shown_before: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``parameters`` with every value sensitive under any of ``schemas`` as ``***``, and every
    value that was ``***`` in ``shown_before`` still ``***``.

    An update may move an instance to a plan whose schema does not mark a value the old plan
    marked ``writeOnly``; the value stays hidden for good, whatever plans come after.
    """
    result = copy.deepcopy(parameters)
    for schema in schemas:
        if schema:
            result = redact(schema, result)
    if shown_before:
        _keep_hidden(result, shown_before)
    return result


def secret_values(parameters: Any, shown: Any) -> list[str]:
    """The texts of the values of ``parameters`` that ``shown`` (its redacted copy) hides.

    An operation's request keeps them (encrypted, as the rest of it) so that the worker masks
    them in what the broker answers: a broker quoting a sensitive value back in an error would
    otherwise have it stored and shown in clear as the operation's description. Strings are
    taken as sent and as JSON escapes them; numbers only from four characters on (masking a
    shorter one would mask digits of status codes and counts, and hide little).
    """
    if shown == REDACTED:
        return _texts(parameters)
    if isinstance(parameters, dict) and isinstance(shown, dict):
        return [t for k, v in parameters.items() if k in shown for t in secret_values(v, shown[k])]
    if isinstance(parameters, list) and isinstance(shown, list):
        return [t for v, s in zip(parameters, shown, strict=False) for t in secret_values(v, s)]
    return []


def kept_secrets(cipher: Cipher, sealed: str | None, shown: Any) -> list[str]:
    """The texts of the sensitive values a record keeps: its stored ``parameters`` (``sealed``,
    encrypted) that its redacted copy ``shown`` hides.

    Every later operation on the record carries them in its request (encrypted) with the values
    it sends, if any: a deprovision, an unbind or an orphan mitigation sends none, yet a broker
    may quote the instance's or binding's values in its answer to it as well.
    """
    if not _hides(shown):
        return []  # nothing sensitive: spare the decryption
    return secret_values(cipher.open(sealed) or {}, shown)


def joined(*groups: list[str]) -> list[str]:
    """The texts of ``groups`` in order, each once."""
    return list(dict.fromkeys(text for group in groups for text in group))


def _hides(shown: Any) -> bool:
    if isinstance(shown, dict):
        return any(_hides(item) for item in shown.values())
    if isinstance(shown, list):
        return any(_hides(item) for item in shown)
    return bool(shown == REDACTED)


def _texts(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [t for item in value.values() for t in _texts(item)]
    if isinstance(value, list):
        return [t for item in value for t in _texts(item)]
    if isinstance(value, str):
        escaped = json.dumps(value)[1:-1]
        return [v for v in dict.fromkeys([value, escaped]) if v and v != REDACTED]
    if isinstance(value, int | float) and not isinstance(value, bool):
        text = json.dumps(value)
        return [text] if len(text) >= 4 else []
    return []


def _keep_hidden(target: dict[str, Any], shown_before: dict[str, Any]) -> None:
    for key, before in shown_before.items():
        if key not in target:
            continue
        if before == REDACTED:
            target[key] = REDACTED
        elif isinstance(before, dict) and isinstance(target[key], dict):
            _keep_hidden(target[key], before)


def invalid(problems: list[dict[str, str]]) -> Unprocessable:
    """The ``invalid_parameters`` error whose message lists every problem (each message names
    its field already: ``size: must be <= 10 (got 50)``)."""
    text = "; ".join(p["message"] for p in problems)
    return Unprocessable(text, code="invalid_parameters", problems=problems)


def _context(namespace: str, name: str) -> dict[str, Any]:
    return {"platform": "servicebay", "namespace": namespace, "instance_name": name}


_TAKEN = id_by_name(tables.instances)
_INSERT_INSTANCE = Statement(tables.instances.insert())
_OPERATION_STATE = Statement(
    sa.select(tables.operations.c.state).where(tables.operations.c.id == sa.bindparam("op_id"))
)
_BUSY_MITIGATION = Statement(
    sa.select(tables.operations.c.id).where(
        tables.operations.c.instance_id == sa.bindparam("instance_id"),
        tables.operations.c.binding_id.is_(None),
        tables.operations.c.kind == "orphan_mitigation",
        *(tables.operations.c.state != state for state in TERMINAL),
    )
)
_BINDING_COUNT = Statement(
    sa.select(sa.func.count())
    .select_from(tables.bindings)
    .where(tables.bindings.c.instance_id == sa.bindparam("instance_id"))
)
_INSTANCE = Statement(instance_by_name())
_INSTANCE_TARGET = Statement(instance_by_name().add_columns(*broker_columns()))


async def _require_instance(
    conn: AsyncConnection, namespace: str, name: str, query: Statement = _INSTANCE
) -> Any:
    row = await query.first(conn, {"namespace": namespace, "name": name})
    if row is None:
        raise not_found("instance", f"{namespace}/{name}")
    return row


def _dry_run(
    offering: Offering,
    broker_url: str,
    method: str,
    instance_id: str,
    body: dict[str, Any],
    problems: list[dict[str, str]],
    namespace: str,
) -> dict[str, Any]:
    return {
        "dry_run": True,
        "accepted": not problems,
        "problems": problems,
        "target": {
            "broker": offering.broker_name,
            "url": broker_url,
            "method": method,
            "path": f"/v2/service_instances/{instance_id}?accepts_incomplete=true",
        },
        "request": body,
        "service": offering.service.name,
        "plan": offering.plan.name,
        "namespace": namespace,
    }


async def _broker_url(conn: AsyncConnection, broker_id: str) -> str:
    b = tables.brokers
    return str(await conn.scalar(sa.select(b.c.url).where(b.c.id == broker_id)))


async def provision(
    platform: Platform,
    actor: Actor,
    *,
    service: str,
    plan: str,
    name: str,
    namespace: str,
    parameters: dict[str, Any],
    maintenance_info: dict[str, Any] | None,
    dry_run: bool,
) -> tuple[int, dict[str, Any]]:
    """Check and queue a provision (202), or describe it without doing it (dry run, 200)."""
    instance_id = str(uuid.uuid4())
    async with platform.db.begin() as conn:
        ns = await require_namespace(conn, namespace, actor)
        offering = await resolve_offering(conn, ns, service, plan)
        schema = offering.plan.instance_create_schema()
        full, problems = check_parameters(
            schema, parameters, constraints_for(ns, service, plan), namespace
        )
        if maintenance_info is None and offering.plan.maintenance_info is not None:
            maintenance_info = offering.plan.maintenance_info.to_wire()
        body: dict[str, Any] = {
            "service_id": offering.service.id,
            "plan_id": offering.plan.id,
            "context": _context(namespace, name),
            "parameters": full,
        }
        if maintenance_info is not None:
            body["maintenance_info"] = maintenance_info
        await _check_quota(conn, ns)
        taken = await _TAKEN.scalar(conn, {"namespace": namespace, "name": name})
        if taken is not None:
            raise Conflict(f"instance '{namespace}/{name}' already exists", code="instance_exists")
        if dry_run:
            shown = {**body, "parameters": redact(schema, full)}
            url = await _broker_url(conn, offering.broker_id)
            return 200, _dry_run(offering, url, "PUT", instance_id, shown, problems, namespace)
        if problems:
            raise invalid(problems)
        now = utcnow()
        shown_params = redact(schema, full)
        request: dict[str, Any] = {"body": body}
        if sent := secret_values(full, shown_params):
            request["secret_values"] = sent
        op = await enqueue(
            conn,
            platform,
            kind="provision",
            namespace=namespace,
            user=actor.user,
            instance_id=instance_id,
            instance_name=name,
            request=request,
            handoff=True,
        )
        record: dict[str, Any] = {
            "id": instance_id,
            "namespace": namespace,
            "name": name,
            "plan_pk": offering.plan_pk,
            "state": "provisioning",
            "parameters": platform.cipher.seal(full),
            "parameters_shown": shown_params,
            "dashboard_url": None,
            "maintenance_info": maintenance_info,
            "last_operation_id": op["id"],
            "created_by": actor.user,
            "created_at": now,
            "updated_at": now,
        }
        await _INSERT_INSTANCE.run(conn, record)
        await audit(
            conn,
            user=actor.user,
            action="instance.provision",
            target=f"{namespace}/{name}",
            outcome="accepted",
            operation_id=op["id"],
            details={"service": service, "plan": plan, "parameters": shown_params},
        )
    platform.submit(
        op,
        Handoff(
            request=request,
            instance_id=instance_id,
            service_id=offering.service.id,
            plan_id=offering.plan.id,
            max_polling=offering.plan.maximum_polling_duration,
            broker_url=offering.broker_url,
            broker_credentials=offering.broker_credentials,
        ),
    )
    view = instance_view(
        with_operation(
            record, op, plan_name=plan, service_name=service, broker_name=offering.broker_name
        )
    )
    return 202, {"instance": view, "operation": operation_view(op)}


async def _check_quota(conn: AsyncConnection, ns: Any) -> None:
    if ns["max_instances"] is None:
        return
    i = tables.instances
    count = await conn.scalar(
        sa.select(sa.func.count()).select_from(i).where(i.c.namespace == ns["name"])
    )
    if (count or 0) >= ns["max_instances"]:
        raise Unprocessable(
            f"namespace {ns['name']!r} allows at most {ns['max_instances']} instance(s)",
            code="quota_exceeded",
        )


async def _check_idle(conn: AsyncConnection, operation_id: str | None, what: str) -> None:
    if operation_id is None:
        return
    state = await _OPERATION_STATE.scalar(conn, {"op_id": operation_id})
    if state is not None and state not in TERMINAL:
        raise Conflict(f"{what} has an operation in progress", code="operation_in_progress")


async def _busy_orphan_mitigation(conn: AsyncConnection, instance_id: str) -> bool:
    found = await _BUSY_MITIGATION.scalar(conn, {"instance_id": instance_id})
    return found is not None


async def update(
    platform: Platform,
    actor: Actor,
    *,
    name: str,
    namespace: str,
    plan: str | None,
    parameters: dict[str, Any] | None,
    maintenance_info: dict[str, Any] | None,
    dry_run: bool,
) -> tuple[int, dict[str, Any]]:
    """Check and queue an update of plan and/or parameters (202), or dry-run it (200)."""
    async with platform.db.begin() as conn:
        ns = await require_namespace(conn, namespace, actor)
        row = await _require_instance(conn, namespace, name)
        target_plan = plan or row["plan_name"]
        offering = await resolve_offering(conn, ns, row["service_name"], target_plan)
        changing = plan is not None and plan != row["plan_name"]
        if changing and not offering.plan.effective_updateable(offering.service):
            raise Unprocessable(
                f"service {offering.service.name!r} does not allow changing the plan",
                code="not_updateable",
            )
        if changing and not offering.plan.effective_bindable(offering.service):
            await _check_unbound(conn, row["id"], name, target_plan)
        schema = offering.plan.instance_update_schema()
        checked: dict[str, Any] = {}
        problems: list[dict[str, str]] = []
        if parameters is not None:
            # spec: update sends only what the user gives; the broker keeps the rest.
            checked, problems = check_parameters(
                schema,
                parameters,
                constraints_for(ns, offering.service.name, target_plan),
                namespace,
                defaults=False,
            )
        old_params = platform.cipher.open(row["parameters"]) or {}
        p = tables.plans
        old_plan = (
            (
                await conn.execute(
                    sa.select(p.c.plan_id, p.c.definition).where(p.c.id == row["plan_pk"])
                )
            )
            .mappings()
            .one()
        )
        old = plan_of(old_plan["definition"])
        sensitive = [
            offering.plan.instance_create_schema(),
            schema,
            old.instance_create_schema(),
            old.instance_update_schema(),
        ]
        before = row["parameters_shown"]
        body: dict[str, Any] = {
            "service_id": offering.service.id,
            "context": _context(namespace, name),
            "previous_values": {"service_id": offering.service.id, "plan_id": old_plan["plan_id"]},
        }
        if plan is not None:
            body["plan_id"] = offering.plan.id
        if parameters is not None:
            body["parameters"] = checked
        if maintenance_info is not None:
            body["maintenance_info"] = maintenance_info
        await _check_idle(conn, row["last_operation_id"], f"instance {name!r}")
        if dry_run:
            shown = dict(body)
            if "parameters" in body:
                shown["parameters"] = hide(checked, sensitive, before)
            url = await _broker_url(conn, offering.broker_id)
            return 200, _dry_run(offering, url, "PATCH", row["id"], shown, problems, namespace)
        if problems:
            raise invalid(problems)
        merged = {**old_params, **checked}
        merged_shown = hide(merged, sensitive, before)
        request = {
            "body": body,
            "plan_pk": offering.plan_pk,
            "parameters": merged,
            "parameters_shown": merged_shown,
            "maintenance_info": maintenance_info,
            "previous_state": row["state"],
        }
        # A value the update replaces may still be quoted back: the old ones are masked too.
        if sent := joined(secret_values(merged, merged_shown), secret_values(old_params, before)):
            request["secret_values"] = sent
        op = await enqueue(
            conn,
            platform,
            kind="update",
            namespace=namespace,
            user=actor.user,
            instance_id=row["id"],
            instance_name=name,
            request=request,
            handoff=True,
        )
        await _set_instance(conn, row["id"], state="updating", last_operation_id=op["id"])
        await audit(
            conn,
            user=actor.user,
            action="instance.update",
            target=f"{namespace}/{name}",
            outcome="accepted",
            operation_id=op["id"],
            details={"plan": target_plan, "parameters": hide(checked, sensitive, before)},
        )
    platform.submit(op)
    view = instance_view(with_operation(row, op, state="updating"))
    return 202, {"instance": view, "operation": operation_view(op)}


async def _check_unbound(conn: AsyncConnection, instance_id: str, name: str, plan: str) -> None:
    count = await _BINDING_COUNT.scalar(conn, {"instance_id": instance_id})
    if count:
        raise Conflict(
            f"plan {plan!r} is not bindable and instance {name!r} still has {count} "
            "binding(s) or key(s); unbind them first",
            code="instance_has_bindings",
        )


async def deprovision(
    platform: Platform, actor: Actor, *, name: str, namespace: str
) -> dict[str, Any]:
    """Queue a deprovision; refused while bindings exist or another operation runs."""
    async with platform.db.begin() as conn:
        await require_namespace(conn, namespace, actor)
        row = await _require_instance(conn, namespace, name, _INSTANCE_TARGET)
        await _check_idle(conn, row["last_operation_id"], f"instance {name!r}")
        if await _busy_orphan_mitigation(conn, row["id"]):
            raise Conflict(
                f"instance {name!r} is under orphan mitigation", code="operation_in_progress"
            )
        count = await _BINDING_COUNT.scalar(conn, {"instance_id": row["id"]})
        if count:
            raise Conflict(
                f"instance {name!r} still has {count} binding(s) or key(s); unbind them first",
                code="instance_has_bindings",
            )
        request: dict[str, Any] = {"previous_state": row["state"]}
        if kept := kept_secrets(platform.cipher, row["parameters"], row["parameters_shown"]):
            request["secret_values"] = kept
        op = await enqueue(
            conn,
            platform,
            kind="deprovision",
            namespace=namespace,
            user=actor.user,
            instance_id=row["id"],
            instance_name=name,
            request=request,
            handoff=True,
        )
        await _set_instance(conn, row["id"], state="deprovisioning", last_operation_id=op["id"])
        await audit(
            conn,
            user=actor.user,
            action="instance.deprovision",
            target=f"{namespace}/{name}",
            outcome="accepted",
            operation_id=op["id"],
        )
    platform.submit(op, handoff_of(row, request, instance_id=row["id"]))
    view = instance_view(with_operation(row, op, state="deprovisioning"))
    return {"instance": view, "operation": operation_view(op)}


async def purge(platform: Platform, actor: Actor, *, name: str, namespace: str) -> dict[str, Any]:
    """Remove an instance and its bindings from the platform only, keeping the evidence.

    The broker is not called: this is for records the broker can no longer answer for. The
    removed records (redacted) are kept in a ``purge`` operation of the history; unfinished
    operations of the instance are ended as failed so no worker acts on them afterwards.
    """
    async with platform.db.begin() as conn:
        await require_namespace(conn, namespace, actor)
        row = await _require_instance(conn, namespace, name)
        b, o = tables.bindings, tables.operations
        bindings = (
            (await conn.execute(sa.select(b).where(b.c.instance_id == row["id"]))).mappings().all()
        )
        now = utcnow()
        await conn.execute(
            o.update()
            .where(o.c.instance_id == row["id"], o.c.state.not_in(TERMINAL))
            .values(
                state="failed",
                description="ended by purge",
                owner=None,
                lease_until=None,
                finished_at=now,
                updated_at=now,
            )
        )
        evidence = {
            "instance": instance_view(row),
            "bindings": [
                {
                    "id": x["id"],
                    "name": x["name"],
                    "kind": x["kind"],
                    "app": x["app"],
                    "state": x["state"],
                }
                for x in bindings
            ],
        }
        op = await enqueue(
            conn,
            platform,
            kind="purge",
            namespace=namespace,
            user=actor.user,
            instance_id=row["id"],
            instance_name=name,
            request={},
            description=f"purged from the platform ({len(bindings)} binding(s)); broker not called",
            state="succeeded",
        )
        await conn.execute(o.update().where(o.c.id == op["id"]).values(evidence=evidence))
        await conn.execute(b.delete().where(b.c.instance_id == row["id"]))
        await conn.execute(tables.instances.delete().where(tables.instances.c.id == row["id"]))
        await audit(
            conn,
            user=actor.user,
            action="instance.purge",
            target=f"{namespace}/{name}",
            outcome="succeeded",
            operation_id=op["id"],
            details={"bindings": [x["name"] for x in bindings]},
        )
    return {
        "purged": evidence["instance"],
        "bindings": [x["name"] for x in bindings],
        "operation": operation_view(op),
    }


async def _set_instance(conn: AsyncConnection, instance_id: str, **values: Any) -> None:
    values["updated_at"] = utcnow()
    await update_by_id(tables.instances, tuple(values)).run(conn, by_id_params(instance_id, values))


async def get_instance(
    platform: Platform, actor: Actor, *, name: str, namespace: str
) -> dict[str, Any]:
    """One instance with its last operation."""
    async with platform.db.read() as conn:
        await require_namespace(conn, namespace, actor)
        return instance_view(await _require_instance(conn, namespace, name))


async def list_instances(
    platform: Platform,
    actor: Actor,
    *,
    namespace: str,
    service: str | None,
    limit: int,
    after: str | None,
) -> str:
    """A page of instances sorted by (namespace,) name, as the JSON text of ``{"items": [...],
    "next": ...}``; ``next`` continues after the last. Each item is the view the instance keeps
    rendered in its row (``view_json``, kept by the database's triggers), so a page of 10,000 is
    stored text joined, never Python objects."""
    i = tables.instances
    query = sa.select(i.c.namespace, i.c.name, i.c.view_json)
    if namespace == "*":
        query = query.order_by(i.c.namespace, i.c.name)
        if after:
            ns_after, _, name_after = after.partition("/")
            query = query.where(
                sa.or_(
                    i.c.namespace > ns_after,
                    sa.and_(i.c.namespace == ns_after, i.c.name > name_after),
                )
            )
    else:
        query = query.where(i.c.namespace == namespace).order_by(i.c.name)
        if after:
            query = query.where(i.c.name > after)
    if service:
        query = query.where(
            i.c.plan_pk.in_(
                sa.select(tables.plans.c.id)
                .join(tables.services, tables.services.c.id == tables.plans.c.service_pk)
                .where(tables.services.c.name == service)
            )
        )
    async with platform.db.read() as conn:
        if namespace != "*":
            await require_namespace(conn, namespace, actor)
        elif (visible := await visible_namespaces(conn, actor)) is not None:
            query = query.where(i.c.namespace.in_(visible))
        rows = await plain_rows(conn, query.limit(limit + 1))
    following = None
    if len(rows) > limit:
        last_namespace, last_name, _ = rows[limit - 1]
        following = f"{last_namespace}/{last_name}" if namespace == "*" else last_name
    items = ",".join(row[2] for row in rows[:limit])
    return f'{{"items":[{items}],"next":{json.dumps(following)}}}'
