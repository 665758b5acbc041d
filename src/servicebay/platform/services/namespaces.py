"""Namespaces: where instances live side by side (test, staging, development...).

Each namespace says which plans its users may see (``visible_plans``; ``None`` = all), which
extra JSON-schema constraints parameters must meet on top of the plan's schema (keyed
``service`` or ``service/plan``), how many instances it may hold, and who may use it
(``members``; none listed = every user, see :mod:`servicebay.platform.services.access`).
``default`` always exists.

Settings are replaced whole, so a client edits them read-modify-write; the version it read
(``ETag``: the quoted ``updated_at``) goes back in ``If-Match``, and the replace happens only
if nobody changed the namespace in between (else 412): two concurrent edits cannot lose one.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from servicebay.osb import BadRequest as SchemaError
from servicebay.osb import check_schema
from servicebay.platform.services.access import (
    may_enter,
    require_namespace,
    visible_namespaces,
)
from servicebay.platform.services.errors import (
    BadRequest,
    Conflict,
    PreconditionFailed,
)
from servicebay.platform.services.operations import audit
from servicebay.platform.services.records import ts
from servicebay.platform.services.runtime import Actor, Platform
from servicebay.platform.store import tables, utcnow

DEFAULT = "default"
_PLAN_REF = re.compile(r"^[^/\s]+/[^/\s]+$")


def _check_settings(visible_plans: list[str] | None, constraints: dict[str, Any]) -> None:
    for entry in visible_plans or []:
        if not _PLAN_REF.match(entry):
            raise BadRequest(f"visible_plans: {entry!r} must be 'service/plan' or 'service/*'")
    for key, schema in constraints.items():
        if not re.match(r"^[^/\s]+(/[^/\s]+)?$", key):
            raise BadRequest(f"constraints: key {key!r} must be 'service' or 'service/plan'")
        try:
            check_schema(schema)
        except SchemaError as exc:
            raise BadRequest(f"constraints.{key}: {exc.description}") from None


__all__ = ["may_enter", "require_namespace", "visible_namespaces"]


async def _view(conn: AsyncConnection, row: Any) -> dict[str, Any]:
    i = tables.instances
    count = await conn.scalar(
        sa.select(sa.func.count()).select_from(i).where(i.c.namespace == row["name"])
    )
    return {
        "name": row["name"],
        "description": row["description"],
        "visible_plans": row["visible_plans"],
        "constraints": row["constraints"],
        "max_instances": row["max_instances"],
        "members": row["members"] or [],
        "instance_count": count or 0,
        "created_at": ts(row["created_at"]),
        "updated_at": ts(row["updated_at"]),
    }


def etag(view: dict[str, Any]) -> str:
    """The namespace version a client read: its ``updated_at``, quoted (an HTTP entity tag)."""
    return f'"{view["updated_at"]}"'


def _matches(if_match: str, current: str) -> bool:
    """RFC 9110 If-Match: ``*`` or a list of strong tags, one of which is the current one."""
    tags = [tag.strip() for tag in if_match.split(",")]
    return "*" in tags or current in tags


async def create_namespace(
    platform: Platform,
    actor: Actor,
    *,
    name: str,
    description: str,
    visible_plans: list[str] | None,
    constraints: dict[str, Any],
    max_instances: int | None,
    members: list[str] | None = None,
) -> dict[str, Any]:
    """Create a namespace (409 ``namespace_exists`` if taken)."""
    _check_settings(visible_plans, constraints)
    now = utcnow()
    async with platform.db.begin() as conn:
        n = tables.namespaces
        if (await conn.execute(sa.select(n.c.name).where(n.c.name == name))).first():
            raise Conflict(f"namespace {name!r} already exists", code="namespace_exists")
        await conn.execute(
            n.insert().values(
                name=name,
                description=description,
                visible_plans=visible_plans,
                constraints=constraints,
                max_instances=max_instances,
                members=sorted(set(members or [])),
                created_at=now,
                updated_at=now,
            )
        )
        await audit(
            conn, user=actor.user, action="namespace.create", target=name, outcome="succeeded"
        )
        return await _view(conn, await require_namespace(conn, name, actor))


async def replace_namespace(
    platform: Platform,
    actor: Actor,
    *,
    name: str,
    description: str,
    visible_plans: list[str] | None,
    constraints: dict[str, Any],
    max_instances: int | None,
    members: list[str] | None = None,
    if_match: str | None = None,
) -> dict[str, Any]:
    """Replace a namespace's settings (existing instances are not re-validated).

    With ``if_match``, only if the namespace is still the version the caller read (else 412).
    ``members`` left out (``None``) keeps the current members, so a settings file written before
    membership existed cannot open a members-only namespace to everyone; ``[]`` clears them.
    """
    _check_settings(visible_plans, constraints)
    async with platform.db.begin() as conn:
        row = await require_namespace(conn, name, actor)
        n = tables.namespaces
        if if_match is not None and not _matches(
            if_match, etag({"updated_at": ts(row["updated_at"])})
        ):
            raise _changed(name)
        guard = [n.c.name == name]
        if if_match is not None:
            # The version read guards the write: a concurrent replace that committed first
            # leaves no row to match (PostgreSQL re-checks the WHERE once the row lock is free).
            guard.append(n.c.updated_at == row["updated_at"])
        changed = await conn.execute(
            n.update()
            .where(*guard)
            .values(
                description=description,
                visible_plans=visible_plans,
                constraints=constraints,
                max_instances=max_instances,
                members=row["members"] if members is None else sorted(set(members)),
                updated_at=utcnow(),
            )
        )
        if changed.rowcount != 1:
            raise _changed(name)
        await audit(
            conn, user=actor.user, action="namespace.update", target=name, outcome="succeeded"
        )
        return await _view(conn, await require_namespace(conn, name, actor))


def _changed(name: str) -> PreconditionFailed:
    return PreconditionFailed(
        f"namespace {name!r} was changed by someone else since it was read; read it again and retry"
    )


async def delete_namespace(platform: Platform, actor: Actor, name: str) -> None:
    """Delete an empty namespace other than ``default``."""
    if name == DEFAULT:
        raise BadRequest("the default namespace cannot be deleted")
    async with platform.db.begin() as conn:
        view = await _view(conn, await require_namespace(conn, name, actor))
        if view["instance_count"]:
            raise Conflict(
                f"namespace {name!r} still has {view['instance_count']} instance(s)",
                code="namespace_in_use",
            )
        await conn.execute(tables.namespaces.delete().where(tables.namespaces.c.name == name))
        await audit(
            conn, user=actor.user, action="namespace.delete", target=name, outcome="succeeded"
        )


async def get_namespace(platform: Platform, actor: Actor, name: str) -> dict[str, Any]:
    """One namespace (``namespace_not_found`` if ``actor`` may not use it)."""
    async with platform.db.read() as conn:
        return await _view(conn, await require_namespace(conn, name, actor))


async def list_namespaces(platform: Platform, actor: Actor) -> list[dict[str, Any]]:
    """Every namespace ``actor`` may use."""
    n = tables.namespaces
    async with platform.db.read() as conn:
        rows = (await conn.execute(sa.select(n).order_by(n.c.name))).mappings().all()
        return [await _view(conn, r) for r in rows if may_enter(actor, r["members"])]
