"""Operations (the work queue and its history) and the audit trail.

Use cases create an operation with :func:`enqueue` inside their own transaction, so a request
either stores its record *and* its operation or neither; the worker picks it up from there.
Every change is also written to the audit trail with the acting user (the same user the broker
sees as originating identity).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from servicebay.platform.services.access import visible_namespaces
from servicebay.platform.services.errors import BadRequest, not_found
from servicebay.platform.services.records import TERMINAL, operation_view, ts
from servicebay.platform.services.runtime import QUEUED, Actor, Platform
from servicebay.platform.store import Statement, tables, utcnow

MAX_WAIT = 60.0
_INSERT_OPERATION = Statement(tables.operations.insert())
_INSERT_AUDIT = Statement(tables.audit.insert())
_OPERATION = Statement(
    sa.select(tables.operations).where(tables.operations.c.id == sa.bindparam("op_id"))
)


async def enqueue(
    conn: AsyncConnection,
    platform: Platform,
    *,
    kind: str,
    namespace: str,
    user: str,
    instance_id: str | None,
    instance_name: str | None,
    request: dict[str, Any],
    binding_id: str | None = None,
    binding_name: str | None = None,
    parent_id: str | None = None,
    description: str | None = None,
    state: str = "queued",
    handoff: bool = False,
) -> dict[str, Any]:
    """Insert a queued operation (its ``request`` encrypted) and return its row as a dict.

    With ``handoff``, the operation is leased to the in-process worker when it has a free slot
    (as a claim would), and the caller passes the row to ``platform.submit`` after committing.
    """
    now = utcnow()
    row: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "kind": kind,
        "state": state,
        "description": description or "waiting for a worker",
        "namespace": namespace,
        "instance_id": instance_id,
        "instance_name": instance_name,
        "binding_id": binding_id,
        "binding_name": binding_name,
        "parent_id": parent_id,
        "orphan_mitigation_id": None,
        "phase": "send",
        "broker_operation": None,
        "request": platform.cipher.seal(request),
        "evidence": None,
        "attempts": 0,
        "next_attempt_at": now,
        "deadline": None,
        "owner": None,
        "lease_until": None,
        "created_by": user,
        "created_at": now,
        "updated_at": now,
        "finished_at": now if state in TERMINAL else None,
    }
    if handoff and state == "queued":
        taken = platform.lease_for_local(row["id"])
        if taken is not None:
            row.update(owner=taken[0], lease_until=taken[1], state="in progress", attempts=1)
            # No submit() follows a transaction that fails: give the slot back on rollback,
            # or the worker keeps it reserved (and claims less) until the lease would end.
            platform.db.on_rollback(conn, partial(platform.release_local, row["id"]))
    await _INSERT_OPERATION.run(conn, row)
    if row["state"] == "queued":
        await platform.db.notify(conn, QUEUED)  # on commit, other processes' workers wake
    return row


async def audit(
    conn: AsyncConnection,
    *,
    user: str,
    action: str,
    target: str,
    outcome: str,
    operation_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append one audit entry (``details`` must already be redacted)."""
    await _INSERT_AUDIT.run(
        conn,
        {
            "at": utcnow(),
            "user": user,
            "action": action,
            "target": target,
            "operation_id": operation_id,
            "outcome": outcome,
            "details": details or {},
        },
    )


async def get_operation(platform: Platform, actor: Actor, operation_id: str) -> dict[str, Any]:
    """One operation, or ``operation_not_found`` (also when it is in a namespace ``actor`` may
    not use)."""
    async with platform.db.read() as conn:
        row = await _OPERATION.first(conn, {"op_id": operation_id})
        if row is not None and not actor.admin:
            visible = await visible_namespaces(conn, actor)
            if visible is not None and row["namespace"] not in visible:
                row = None
    view = operation_view(row) if row is not None else None
    if view is None:
        raise not_found("operation", operation_id)
    if row is not None and row["evidence"] is not None:
        view["evidence"] = row["evidence"]  # what a purge removed (redacted)
    return view


async def wait_operation(
    platform: Platform,
    actor: Actor,
    operation_id: str,
    seconds: float,
    *,
    current: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The operation once terminal, or as it is after ``seconds`` (at most 60).

    ``current`` is its view as the caller just committed it, to start from without a read
    (the watch is registered before this first yields, so no wake-up is missed).
    """
    if not 0 <= seconds <= MAX_WAIT:
        raise BadRequest(f"wait must be between 0 and {MAX_WAIT:.0f} seconds")
    deadline = time.monotonic() + seconds
    # This process's worker wakes us at once, with the result it committed; the timeout only
    # covers operations driven by another process, so it can start slow and stay cheap.
    delay = 0.25
    watch = platform.watch(operation_id)
    try:
        while True:
            watch.clear()
            view = current or await get_operation(platform, actor, operation_id)
            current = None
            if view["state"] in TERMINAL or time.monotonic() >= deadline:
                return view
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(delay, max(0.0, deadline - time.monotonic()))):
                    await watch.event.wait()
            if watch.view is not None and watch.view["state"] in TERMINAL:
                return watch.view
            delay = min(delay * 2, 1.0)
    finally:
        platform.unwatch(operation_id, watch)


async def list_operations(
    platform: Platform, actor: Actor, *, namespace: str | None, instance: str | None, limit: int
) -> list[dict[str, Any]]:
    """Operations newest first, optionally of one namespace and instance name; only of the
    namespaces ``actor`` may use."""
    o = tables.operations
    query = sa.select(o).order_by(o.c.created_at.desc(), o.c.id).limit(limit)
    if namespace:
        query = query.where(o.c.namespace == namespace)
    if instance:
        query = query.where(o.c.instance_name == instance)
    async with platform.db.read() as conn:
        if (visible := await visible_namespaces(conn, actor)) is not None:
            query = query.where(o.c.namespace.in_(visible))
        rows = (await conn.execute(query)).mappings().all()
    return [v for v in (operation_view(r) for r in rows) if v is not None]


async def list_audit(
    platform: Platform, actor: Actor, *, target: str | None, limit: int
) -> list[dict[str, Any]]:
    """Audit entries newest first. A user who is not the admin sees only the entries of the
    namespaces they may use (targets ``namespace`` and ``namespace/...``) and broker entries
    (brokers are the same for everyone)."""
    a = tables.audit
    query = sa.select(a).order_by(a.c.id.desc()).limit(limit)
    if target:
        query = query.where(a.c.target == target)
    async with platform.db.read() as conn:
        if (visible := await visible_namespaces(conn, actor)) is not None:
            query = query.where(
                sa.or_(
                    a.c.action.startswith("broker.", autoescape=True),
                    a.c.target.in_(visible),
                    *(a.c.target.startswith(f"{n}/", autoescape=True) for n in visible),
                )
            )
        rows = (await conn.execute(query)).mappings().all()
    return [
        {
            "id": r["id"],
            "at": ts(r["at"]),
            "user": r["user"],
            "action": r["action"],
            "target": r["target"],
            "operation": r["operation_id"],
            "outcome": r["outcome"],
            "details": r["details"],
        }
        for r in rows
    ]


def deadline_after(seconds: float) -> dt.datetime:
    """A stored deadline ``seconds`` from now."""
    return utcnow() + dt.timedelta(seconds=seconds)
