"""Who may see what: namespace membership, checked here and nowhere else.

A namespace may list ``members`` (user names). The admin may do anything anywhere. Any other
user reads and acts on instances, bindings, service keys, operations and audit entries only in
the namespaces they are a member of; a namespace that lists no members is open to every
authenticated user (``default`` out of the box). A namespace the user may not see is treated
exactly like one that does not exist: lists leave it out, and naming it answers
``namespace_not_found`` (404), so a non-member learns nothing, not even that it exists.

Every use case that touches a namespace's records starts with :func:`require_namespace`; every
list over several namespaces filters with :func:`visible_namespaces`.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from servicebay.platform.services.errors import not_found
from servicebay.platform.services.runtime import Actor
from servicebay.platform.store import Statement, tables

_NAMESPACE = Statement(
    sa.select(tables.namespaces).where(tables.namespaces.c.name == sa.bindparam("name"))
)
_MEMBERSHIPS = sa.select(tables.namespaces.c.name, tables.namespaces.c.members)


def may_enter(actor: Actor, members: list[str] | None) -> bool:
    """Whether ``actor`` may use a namespace with these members (none listed: everyone)."""
    return actor.admin or not members or actor.user in members


async def require_namespace(conn: AsyncConnection, name: str, actor: Actor) -> Any:
    """The namespace row, or ``namespace_not_found`` if it does not exist *or* ``actor`` is
    not one of its members (the two answers are the same on purpose)."""
    row = await _NAMESPACE.first(conn, {"name": name})
    if row is None or not may_enter(actor, row["members"]):
        raise not_found("namespace", name)
    return row


async def visible_namespaces(conn: AsyncConnection, actor: Actor) -> list[str] | None:
    """The names of the namespaces ``actor`` may use, or ``None`` for all (the admin)."""
    if actor.admin:
        return None
    rows = (await conn.execute(_MEMBERSHIPS)).all()
    return sorted(name for name, members in rows if may_enter(actor, members))
