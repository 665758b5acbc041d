"""Brokers and what they offer: registration, catalog refresh, removal, and the marketplace.

Registering a broker fetches ``GET /v2/catalog`` at once, validates it with ``servicebay.osb``
and stores it broken out into services and plans, so names resolve with an index. Broker
credentials are stored encrypted. A refresh keeps plans that vanished from the catalog but
still have instances (marked inactive), so those instances stay manageable.
"""

from __future__ import annotations

import functools
import json
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from servicebay.osb import Catalog, Plan, Service
from servicebay.platform.broker_link import BrokerEndpoint, Verdict
from servicebay.platform.services.access import require_namespace
from servicebay.platform.services.errors import (
    BrokerFailure,
    Conflict,
    Forbidden,
    Unprocessable,
    not_found,
)
from servicebay.platform.services.operations import audit
from servicebay.platform.services.records import broker_view
from servicebay.platform.services.runtime import Actor, Handoff, Platform
from servicebay.platform.store import Statement, tables, utcnow


@dataclass(frozen=True)
class Offering:
    """A plan resolved by names: the rows and the typed catalog objects."""

    broker_id: str
    broker_name: str
    service_pk: str
    plan_pk: str
    service: Service
    plan: Plan
    broker_url: str
    broker_credentials: str | None  # encrypted, as stored


@functools.lru_cache(maxsize=512)
def service_of_json(text: str) -> Service:
    """A service definition as stored (JSON text) as a model, validated once per text."""
    return Service.model_validate_json(text)


@functools.lru_cache(maxsize=2048)
def plan_of_json(text: str) -> Plan:
    """A plan definition as stored (JSON text) as a model, validated once per text."""
    return Plan.model_validate_json(text)


def as_text(column: sa.ColumnElement[Any], name: str) -> sa.Label[Any]:
    """A JSON column read as stored: its text on SQLite (parsed through the caches above, not
    decoded into a dict first); PostgreSQL's driver still hands over a dict."""
    return sa.type_coerce(column, sa.Text).label(name)


def stored_service(value: str | dict[str, Any]) -> Service:
    """The service of an :func:`as_text` column."""
    return service_of_json(value) if isinstance(value, str) else service_of(value)


def stored_plan(value: str | dict[str, Any]) -> Plan:
    """The plan of an :func:`as_text` column."""
    return plan_of_json(value) if isinstance(value, str) else plan_of(value)


def service_of(definition: dict[str, Any]) -> Service:
    """The stored service definition as a model (validated once, then cached: the catalog
    was validated on registration, and schema meta-validation is costly)."""
    return service_of_json(json.dumps(definition, sort_keys=True))


def plan_of(definition: dict[str, Any]) -> Plan:
    """The stored plan definition as a model (cached like :func:`service_of`)."""
    return plan_of_json(json.dumps(definition, sort_keys=True))


def broker_columns() -> tuple[sa.Label[Any], ...]:
    """What the worker needs to call a plan's broker, as columns of a query that joins the
    ``plans``, ``services`` and ``brokers`` tables (read by :func:`handoff_of`)."""
    p, s, b = tables.plans, tables.services, tables.brokers
    return (
        p.c.plan_id.label("broker_plan_id"),
        s.c.service_id.label("broker_service_id"),
        as_text(p.c.definition, "plan_definition"),
        b.c.url.label("broker_url"),
        b.c.credentials.label("broker_credentials"),
    )


def handoff_of(
    row: Any, request: dict[str, Any], *, instance_id: str, binding_kind: str | None = None
) -> Handoff:
    """The worker's :class:`Handoff` from a row with the :func:`broker_columns`."""
    return Handoff(
        request=request,
        instance_id=instance_id,
        service_id=row["broker_service_id"],
        plan_id=row["broker_plan_id"],
        max_polling=stored_plan(row["plan_definition"]).maximum_polling_duration,
        broker_url=row["broker_url"],
        broker_credentials=row["broker_credentials"],
        binding_kind=binding_kind,
    )


def endpoint_of(platform: Platform, broker: Any) -> BrokerEndpoint:
    """The broker's endpoint with its decrypted credentials (kept in memory only)."""
    return platform.endpoint(broker["url"], broker["credentials"])


def _stored_catalog(catalog: Catalog) -> dict[str, Any]:
    """The catalog as stored: without dashboard client secrets (they are credentials)."""
    data = catalog.to_wire()
    for service in data.get("services", []):
        if isinstance(service.get("dashboard_client"), dict):
            service["dashboard_client"]["secret"] = "***"  # noqa: S105 - a redaction marker
    return data


async def fetch_catalog(platform: Platform, endpoint: BrokerEndpoint) -> Catalog:
    """Fetch and validate a broker's catalog, or raise a 502/422 naming what went wrong."""
    catalog, reply = await platform.link.catalog(endpoint)
    if catalog is not None:
        return catalog
    if reply.status is None and reply.verdict in (Verdict.RETRY, Verdict.FAILED):
        raise BrokerFailure(
            f"cannot reach the broker at {endpoint.url}: {reply.description}",
            code="broker_unreachable",
        )
    if reply.status == 200:
        raise Unprocessable(reply.description, code="invalid_catalog")
    raise BrokerFailure(f"catalog request failed: {reply.description}", code="broker_error")


async def register_broker(
    platform: Platform,
    actor: Actor,
    *,
    name: str,
    url: str,
    username: str | None,
    password: str | None,
    bearer_token: str | None,
) -> dict[str, Any]:
    """Fetch, validate and store a broker and its catalog."""
    endpoint = BrokerEndpoint(url, username, password, bearer_token)
    async with platform.db.read() as conn:
        if await _broker_row(conn, name) is not None:
            raise Conflict(f"broker {name!r} already exists", code="broker_exists")
    catalog = await fetch_catalog(platform, endpoint)
    auth = "bearer" if bearer_token else "basic" if username is not None else "none"
    creds = {"username": username, "password": password, "bearer_token": bearer_token}
    now = utcnow()
    broker_id = str(uuid.uuid4())
    async with platform.db.begin() as conn:
        if await _broker_row(conn, name) is not None:
            raise Conflict(f"broker {name!r} already exists", code="broker_exists")
        await _check_service_names(conn, catalog, broker_id)
        await conn.execute(
            tables.brokers.insert().values(
                id=broker_id,
                name=name,
                url=url,
                auth=auth,
                credentials=platform.cipher.seal(creds) if auth != "none" else None,
                catalog=_stored_catalog(catalog),
                catalog_fetched_at=now,
                created_by=actor.user,
                created_at=now,
                updated_at=now,
            )
        )
        await _sync_offerings(conn, broker_id, catalog)
        await audit(
            conn,
            user=actor.user,
            action="broker.register",
            target=name,
            outcome="succeeded",
            details={"url": url, "auth": auth},
        )
        row = await _broker_row(conn, name)
    assert row is not None
    return broker_view(row)


async def refresh_broker(platform: Platform, actor: Actor, name: str) -> dict[str, Any]:
    """Fetch the catalog again and apply it; report added, removed and updated plans."""
    async with platform.db.read() as conn:
        row = await _require_broker(conn, name)
    catalog = await fetch_catalog(platform, endpoint_of(platform, row))
    async with platform.db.begin() as conn:
        row = await _require_broker(conn, name)
        await _check_service_names(conn, catalog, row["id"])
        changes = await _sync_offerings(conn, row["id"], catalog)
        await conn.execute(
            tables.brokers.update()
            .where(tables.brokers.c.id == row["id"])
            .values(catalog=_stored_catalog(catalog), catalog_fetched_at=utcnow())
        )
        await audit(
            conn,
            user=actor.user,
            action="broker.refresh",
            target=name,
            outcome="succeeded",
            details=changes,
        )
        row = await _require_broker(conn, name)
    return {"broker": broker_view(row), "changes": changes}


async def remove_broker(platform: Platform, actor: Actor, name: str) -> None:
    """Forget a broker that no instance uses any more."""
    async with platform.db.begin() as conn:
        row = await _require_broker(conn, name)
        s, p, i = tables.services, tables.plans, tables.instances
        used = await conn.scalar(
            sa.select(sa.func.count())
            .select_from(i.join(p, p.c.id == i.c.plan_pk).join(s, s.c.id == p.c.service_pk))
            .where(s.c.broker_id == row["id"])
        )
        if used:
            raise Conflict(
                f"broker {name!r} still has {used} instance(s); deprovision or purge them first",
                code="broker_in_use",
            )
        service_pks = sa.select(s.c.id).where(s.c.broker_id == row["id"])
        await conn.execute(p.delete().where(p.c.service_pk.in_(service_pks)))
        await conn.execute(s.delete().where(s.c.broker_id == row["id"]))
        await conn.execute(tables.brokers.delete().where(tables.brokers.c.id == row["id"]))
        await audit(conn, user=actor.user, action="broker.remove", target=name, outcome="succeeded")


async def list_brokers(platform: Platform) -> list[dict[str, Any]]:
    """Every registered broker."""
    async with platform.db.read() as conn:
        rows = (
            (await conn.execute(sa.select(tables.brokers).order_by(tables.brokers.c.name)))
            .mappings()
            .all()
        )
    return [broker_view(r) for r in rows]


async def get_broker(platform: Platform, name: str) -> dict[str, Any]:
    """One broker, or ``broker_not_found``."""
    async with platform.db.read() as conn:
        return broker_view(await _require_broker(conn, name))


async def _broker_row(conn: AsyncConnection, name: str) -> Any:
    query = sa.select(tables.brokers).where(tables.brokers.c.name == name)
    return (await conn.execute(query)).mappings().first()


async def _require_broker(conn: AsyncConnection, name: str) -> Any:
    row = await _broker_row(conn, name)
    if row is None:
        raise not_found("broker", name)
    return row


async def _check_service_names(conn: AsyncConnection, catalog: Catalog, broker_id: str) -> None:
    """Service names are the marketplace's keys: two brokers may not offer the same name."""
    s, b = tables.services, tables.brokers
    names = [svc.name for svc in catalog.services]
    if not names:
        return
    query = (
        sa.select(s.c.name, b.c.name.label("broker"))
        .join(b, b.c.id == s.c.broker_id)
        .where(s.c.name.in_(names), s.c.broker_id != broker_id)
    )
    clash = (await conn.execute(query)).first()
    if clash is not None:
        raise Conflict(
            f"service {clash[0]!r} is already offered by broker {clash[1]!r}",
            code="service_name_conflict",
        )


async def _sync_offerings(
    conn: AsyncConnection, broker_id: str, catalog: Catalog
) -> dict[str, list[str]]:
    """Make the services/plans rows of a broker match ``catalog``; return what changed."""
    s = tables.services
    changes: dict[str, list[str]] = {"added": [], "removed": [], "updated": []}
    existing = (await conn.execute(sa.select(s).where(s.c.broker_id == broker_id))).mappings().all()
    by_id = {row["service_id"]: row for row in existing}
    seen_services: set[str] = set()
    for service in catalog.services:
        row = by_id.get(service.id)
        definition = service.to_wire()
        if row is None:
            service_pk = str(uuid.uuid4())
            await conn.execute(
                s.insert().values(
                    id=service_pk,
                    broker_id=broker_id,
                    service_id=service.id,
                    name=service.name,
                    active=True,
                    definition=definition,
                )
            )
        else:
            service_pk = row["id"]
            await conn.execute(
                s.update()
                .where(s.c.id == service_pk)
                .values(name=service.name, active=True, definition=definition)
            )
        seen_services.add(service_pk)
        await _sync_plans(conn, service_pk, service, changes)
    for row in existing:
        if row["id"] not in seen_services:
            await _retire_plans(conn, row["id"], row["name"], set(), changes)
            await conn.execute(s.update().where(s.c.id == row["id"]).values(active=False))
    return changes


async def _sync_plans(
    conn: AsyncConnection, service_pk: str, service: Service, changes: dict[str, list[str]]
) -> None:
    p = tables.plans
    existing = (await conn.execute(sa.select(p).where(p.c.service_pk == service_pk))).mappings()
    by_id = {row["plan_id"]: row for row in existing.all()}
    kept: set[str] = set()
    for plan in service.plans:
        row = by_id.get(plan.id)
        label = f"{service.name}/{plan.name}"
        definition = plan.to_wire()
        if row is None:
            stale = [r for r in by_id.values() if r["name"] == plan.name]
            for r in stale:  # a plan re-created under the same name with a new id
                await conn.execute(p.update().where(p.c.id == r["id"]).values(name=r["id"]))
            new_pk = str(uuid.uuid4())
            kept.add(new_pk)
            await conn.execute(
                p.insert().values(
                    id=new_pk,
                    service_pk=service_pk,
                    plan_id=plan.id,
                    name=plan.name,
                    active=True,
                    definition=definition,
                )
            )
            changes["added"].append(label)
            continue
        kept.add(row["id"])
        if row["definition"] != definition or row["name"] != plan.name or not row["active"]:
            await conn.execute(
                p.update()
                .where(p.c.id == row["id"])
                .values(name=plan.name, active=True, definition=definition)
            )
            changes["updated"].append(label)
    await _retire_plans(conn, service_pk, service.name, kept, changes)


async def _retire_plans(
    conn: AsyncConnection,
    service_pk: str,
    service_name: str,
    kept: set[str],
    changes: dict[str, list[str]],
) -> None:
    """Delete plans no longer offered, or mark them inactive while instances still use them."""
    p, i = tables.plans, tables.instances
    rows = (await conn.execute(sa.select(p).where(p.c.service_pk == service_pk))).mappings().all()
    for row in rows:
        if row["id"] in kept or not row["active"]:
            continue
        changes["removed"].append(f"{service_name}/{row['name']}")
        used = await conn.scalar(
            sa.select(sa.func.count()).select_from(i).where(i.c.plan_pk == row["id"])
        )
        if used:
            await conn.execute(p.update().where(p.c.id == row["id"]).values(active=False))
        else:
            await conn.execute(p.delete().where(p.c.id == row["id"]))


def plan_visible(namespace: Any, service: str, plan: str) -> bool:
    """Whether a namespace's ``visible_plans`` lets its users see ``service/plan``."""
    visible = namespace["visible_plans"]
    return visible is None or f"{service}/{plan}" in visible or f"{service}/*" in visible


def constraints_for(namespace: Any, service: str, plan: str) -> list[dict[str, Any]]:
    """The namespace's extra schemas for ``service/plan`` (service-wide first)."""
    found = namespace["constraints"] or {}
    return [found[key] for key in (service, f"{service}/{plan}") if key in found]


@functools.cache
def _offering_query() -> Statement:
    """The service by name, and its plan by name if it exists (built once).

    One query: the plan is an outer join, so a missing plan and a missing service are told
    apart without a second round trip.
    """
    s, p, b = tables.services, tables.plans, tables.brokers
    query = (
        sa.select(
            s.c.id,
            s.c.broker_id,
            as_text(s.c.definition, "definition"),
            b.c.name.label("broker_name"),
            b.c.url.label("broker_url"),
            b.c.credentials.label("broker_credentials"),
            p.c.id.label("plan_pk"),
            as_text(p.c.definition, "plan_definition"),
        )
        .join(b, b.c.id == s.c.broker_id)
        .outerjoin(
            p,
            sa.and_(
                p.c.service_pk == s.c.id,
                p.c.name == sa.bindparam("plan_name"),
                p.c.active.is_(True),
            ),
        )
        .where(s.c.name == sa.bindparam("service_name"), s.c.active.is_(True))
    )
    return Statement(query)


async def resolve_offering(
    conn: AsyncConnection, namespace: Any, service_name: str, plan_name: str
) -> Offering:
    """The active, visible plan ``service_name/plan_name``, or a 404/403 naming what is wrong."""
    params = {"service_name": service_name, "plan_name": plan_name}
    row = await _offering_query().first(conn, params)
    if row is None:
        raise not_found("service", service_name)
    if row["plan_pk"] is None:
        raise not_found("plan", f"{service_name}/{plan_name}")
    if not plan_visible(namespace, service_name, plan_name):
        raise Forbidden(
            f"plan {service_name}/{plan_name} is not available in namespace {namespace['name']!r}",
            code="plan_not_visible",
        )
    return Offering(
        broker_id=row["broker_id"],
        broker_name=row["broker_name"],
        service_pk=row["id"],
        plan_pk=row["plan_pk"],
        service=stored_service(row["definition"]),
        plan=stored_plan(row["plan_definition"]),
        broker_url=row["broker_url"],
        broker_credentials=row["broker_credentials"],
    )


def _plan_view(plan: Plan, service: Service, constraints: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] | None = None
    if len(constraints) == 1:
        merged = constraints[0]
    elif constraints:
        merged = {"allOf": constraints}
    return {
        "name": plan.name,
        "id": plan.id,
        "description": plan.description,
        "free": plan.is_free,
        "bindable": plan.effective_bindable(service),
        "plan_updateable": plan.effective_updateable(service),
        "binding_rotatable": bool(plan.binding_rotatable),
        "maximum_polling_duration": plan.maximum_polling_duration,
        "maintenance_info": plan.maintenance_info.to_wire() if plan.maintenance_info else None,
        "schemas": {
            "instance_create": plan.instance_create_schema(),
            "instance_update": plan.instance_update_schema(),
            "binding_create": plan.binding_create_schema(),
        },
        "constraints": merged,
        "metadata": plan.metadata or {},
    }


async def marketplace(
    platform: Platform, actor: Actor, namespace_name: str, service_name: str | None = None
) -> list[dict[str, Any]]:
    """Services with the plans visible in a namespace (and that namespace's constraints)."""
    s, p, b = tables.services, tables.plans, tables.brokers
    query = (
        sa.select(s, b.c.name.label("broker_name"))
        .join(b, b.c.id == s.c.broker_id)
        .where(s.c.active.is_(True))
        .order_by(s.c.name)
    )
    if service_name is not None:
        query = query.where(s.c.name == service_name)
    async with platform.db.read() as conn:
        namespace = await require_namespace(conn, namespace_name, actor)
        services = (await conn.execute(query)).mappings().all()
        active = (await conn.execute(sa.select(p.c.plan_id, p.c.service_pk, p.c.active))).all()
    active_ids = {(r[1], r[0]) for r in active if r[2]}
    items = []
    for row in services:
        service = service_of(row["definition"])
        plans = [
            _plan_view(plan, service, constraints_for(namespace, service.name, plan.name))
            for plan in service.plans
            if (row["id"], plan.id) in active_ids
            and plan_visible(namespace, service.name, plan.name)
        ]
        if not plans:
            continue
        items.append(
            {
                "name": service.name,
                "id": service.id,
                "broker": row["broker_name"],
                "description": service.description,
                "tags": service.tags or [],
                "bindable": service.bindable,
                "plan_updateable": bool(service.plan_updateable),
                "instances_retrievable": bool(service.instances_retrievable),
                "bindings_retrievable": bool(service.bindings_retrievable),
                "metadata": service.metadata or {},
                "plans": plans,
            }
        )
    if service_name is not None and not items:
        raise not_found("service", service_name)
    return items
