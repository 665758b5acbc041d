"""One handler per route: parse input, call one use case, answer JSON. Nothing else.

Authentication already happened (``app.TokenAuth``); errors raised here are turned into
responses in one place (``app._error``).
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from servicebay.platform.api.models import (
    NAME_PATTERN,
    BindIn,
    BrokerIn,
    NamespaceIn,
    NamespaceSettings,
    ProvisionIn,
    PurgeIn,
    UpdateIn,
    parse_body,
)
from servicebay.platform.services import bindings, catalog, instances, namespaces, operations
from servicebay.platform.services.errors import BadRequest, Forbidden
from servicebay.platform.services.runtime import Actor, Platform


def _platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


def _actor(request: Request) -> Actor:
    actor: Actor = request.scope["servicebay.actor"]
    return actor


def _admin(request: Request) -> Actor:
    """The actor, who must be an admin: brokers and namespaces set what every user may do
    (plans, constraints, quotas), and registering a broker makes the platform call any URL."""
    actor = _actor(request)
    if not actor.admin:
        raise Forbidden(f"only an admin may change brokers and namespaces (you are {actor.user})")
    return actor


def _name(value: str, what: str) -> str:
    if not re.match(NAME_PATTERN, value):
        raise BadRequest(f"{what}: must be a lowercase name (a-z, 0-9, '-', 1-63 chars)")
    return value


def _path(request: Request, key: str = "name") -> str:
    return _name(request.path_params[key], key)


def _namespace(request: Request) -> str:
    return _name(request.query_params.get("namespace", "default"), "namespace")


def _any_namespace(request: Request) -> str:
    """A list's namespace: a name, or ``*`` for every namespace."""
    namespace = request.query_params.get("namespace", "default")
    return namespace if namespace == "*" else _name(namespace, "namespace")


def _int(request: Request, key: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{key}: must be an integer") from None
    if not low <= value <= high:
        raise BadRequest(f"{key}: must be between {low} and {high}")
    return value


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status)


def _wait(request: Request) -> float | None:
    """The ``wait`` query parameter in seconds, if given (checked before anything is done)."""
    raw = request.query_params.get("wait")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        raise BadRequest("wait: must be a number of seconds") from None
    if not 0 <= seconds <= operations.MAX_WAIT:
        raise BadRequest(f"wait: must be between 0 and {operations.MAX_WAIT:.0f} seconds")
    return seconds


async def _accepted(request: Request, view: dict[str, Any], wait: float | None) -> Response:
    """202 with the operation, or with ``?wait=``: with the operation once it has finished (or
    as it is when the wait ends); the record is shown as it was accepted."""
    if wait is not None:
        view["operation"] = await operations.wait_operation(
            _platform(request),
            _actor(request),
            view["operation"]["id"],
            wait,
            current=view["operation"],
        )
    return _json(view, 202)


# -- identity and health -----------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    """Liveness; reveals nothing."""
    return _json({"status": "ok"})


async def whoami(request: Request) -> Response:
    """The user the token belongs to."""
    actor = _actor(request)
    return _json({"user": actor.user, "admin": actor.admin})


# -- brokers ---------------------------------------------------------------------------------


async def register_broker(request: Request) -> Response:
    """Register a broker (its catalog is fetched and validated now)."""
    actor = _admin(request)
    body = parse_body(BrokerIn, await request.body())
    view = await catalog.register_broker(
        _platform(request),
        actor,
        name=body.name,
        url=body.url,
        username=body.username,
        password=body.password,
        bearer_token=body.bearer_token,
    )
    return _json(view, 201)


async def list_brokers(request: Request) -> Response:
    """Every broker."""
    return _json({"items": await catalog.list_brokers(_platform(request))})


async def get_broker(request: Request) -> Response:
    """One broker."""
    return _json(await catalog.get_broker(_platform(request), _path(request)))


async def refresh_broker(request: Request) -> Response:
    """Fetch a broker's catalog again."""
    return _json(await catalog.refresh_broker(_platform(request), _admin(request), _path(request)))


async def remove_broker(request: Request) -> Response:
    """Forget a broker."""
    await catalog.remove_broker(_platform(request), _admin(request), _path(request))
    return Response(status_code=204)


# -- namespaces ------------------------------------------------------------------------------


async def create_namespace(request: Request) -> Response:
    """Create a namespace."""
    actor = _admin(request)
    body = parse_body(NamespaceIn, await request.body())
    view = await namespaces.create_namespace(
        _platform(request),
        actor,
        name=body.name,
        description=body.description,
        visible_plans=body.visible_plans,
        constraints=body.constraints,
        max_instances=body.max_instances,
        members=body.members,
    )
    return _json(view, 201)


async def replace_namespace(request: Request) -> Response:
    """Replace a namespace's settings."""
    actor = _admin(request)
    body = parse_body(NamespaceSettings, await request.body())
    view = await namespaces.replace_namespace(
        _platform(request),
        actor,
        name=_path(request),
        description=body.description,
        visible_plans=body.visible_plans,
        constraints=body.constraints,
        max_instances=body.max_instances,
        members=body.members,
        if_match=request.headers.get("if-match"),
    )
    return JSONResponse(view, headers={"ETag": namespaces.etag(view)})


async def list_namespaces(request: Request) -> Response:
    """Every namespace."""
    return _json({"items": await namespaces.list_namespaces(_platform(request), _actor(request))})


async def get_namespace(request: Request) -> Response:
    """One namespace, with its version as ``ETag`` (send it back in ``If-Match`` on PUT)."""
    view = await namespaces.get_namespace(_platform(request), _actor(request), _path(request))
    return JSONResponse(view, headers={"ETag": namespaces.etag(view)})


async def delete_namespace(request: Request) -> Response:
    """Delete an empty namespace."""
    await namespaces.delete_namespace(_platform(request), _admin(request), _path(request))
    return Response(status_code=204)


# -- marketplace -----------------------------------------------------------------------------


async def marketplace(request: Request) -> Response:
    """Services and the plans visible in a namespace."""
    items = await catalog.marketplace(_platform(request), _actor(request), _namespace(request))
    return _json({"items": items})


async def marketplace_service(request: Request) -> Response:
    """One service of the marketplace."""
    service = request.path_params["service"]
    items = await catalog.marketplace(
        _platform(request), _actor(request), _namespace(request), service
    )
    return _json(items[0])


# -- instances -------------------------------------------------------------------------------


async def provision(request: Request) -> Response:
    """Provision (or dry-run) an instance."""
    body = parse_body(ProvisionIn, await request.body())
    wait = _wait(request)
    status, view = await instances.provision(
        _platform(request),
        _actor(request),
        service=body.service,
        plan=body.plan,
        name=body.name,
        namespace=body.namespace,
        parameters=body.parameters,
        maintenance_info=body.maintenance_info,
        dry_run=body.dry_run,
    )
    return _json(view, status) if status != 202 else await _accepted(request, view, wait)


async def list_instances(request: Request) -> Response:
    """A page of instances."""
    page = await instances.list_instances(
        _platform(request),
        _actor(request),
        namespace=_any_namespace(request),
        service=request.query_params.get("service") or None,
        limit=_int(request, "limit", 500, 1, 10000),
        after=request.query_params.get("after") or None,
    )
    return Response(page, media_type="application/json")


async def get_instance(request: Request) -> Response:
    """One instance."""
    view = await instances.get_instance(
        _platform(request), _actor(request), name=_path(request), namespace=_namespace(request)
    )
    return _json(view)


async def update_instance(request: Request) -> Response:
    """Update (or dry-run an update of) an instance."""
    body = parse_body(UpdateIn, await request.body())
    wait = _wait(request)
    status, view = await instances.update(
        _platform(request),
        _actor(request),
        name=_path(request),
        namespace=_namespace(request),
        plan=body.plan,
        parameters=body.parameters,
        maintenance_info=body.maintenance_info,
        dry_run=body.dry_run,
    )
    return _json(view, status) if status != 202 else await _accepted(request, view, wait)


async def deprovision(request: Request) -> Response:
    """Deprovision an instance."""
    wait = _wait(request)
    view = await instances.deprovision(
        _platform(request), _actor(request), name=_path(request), namespace=_namespace(request)
    )
    return await _accepted(request, view, wait)


async def purge(request: Request) -> Response:
    """Remove an instance from the platform only."""
    parse_body(PurgeIn, await request.body(), optional=True)
    view = await instances.purge(
        _platform(request), _actor(request), name=_path(request), namespace=_namespace(request)
    )
    return _json(view)


# -- bindings --------------------------------------------------------------------------------


async def bind(request: Request) -> Response:
    """Create a binding or service key."""
    body = parse_body(BindIn, await request.body())
    wait = _wait(request)
    view = await bindings.bind(
        _platform(request),
        _actor(request),
        instance=body.instance,
        namespace=body.namespace,
        kind=body.kind,
        app=body.app,
        name=body.name,
        parameters=body.parameters,
    )
    return await _accepted(request, view, wait)


async def list_bindings(request: Request) -> Response:
    """Bindings of a namespace."""
    kind = request.query_params.get("kind") or None
    if kind not in (None, "app", "key"):
        raise BadRequest("kind: must be 'app' or 'key'")
    items = await bindings.list_bindings(
        _platform(request),
        _actor(request),
        namespace=_any_namespace(request),
        instance=request.query_params.get("instance") or None,
        app=request.query_params.get("app") or None,
        kind=kind,
    )
    return _json({"items": items})


async def get_binding(request: Request) -> Response:
    """One binding (credentials for its creator or an admin)."""
    view = await bindings.get_binding(
        _platform(request), _actor(request), name=_path(request), namespace=_namespace(request)
    )
    return _json(view)


async def unbind(request: Request) -> Response:
    """Delete a binding or service key."""
    wait = _wait(request)
    view = await bindings.unbind(
        _platform(request), _actor(request), name=_path(request), namespace=_namespace(request)
    )
    return await _accepted(request, view, wait)


async def app_bindings(request: Request) -> Response:
    """An app's ready bindings with credentials (for ``bay run``)."""
    view = await bindings.app_bindings(
        _platform(request),
        _actor(request),
        app=_path(request, "app"),
        namespace=_namespace(request),
    )
    return _json(view)


# -- operations and audit --------------------------------------------------------------------


async def list_operations(request: Request) -> Response:
    """Operations newest first."""
    namespace = request.query_params.get("namespace") or "*"
    if namespace != "*":
        _name(namespace, "namespace")
    items = await operations.list_operations(
        _platform(request),
        _actor(request),
        namespace=None if namespace == "*" else namespace,
        instance=request.query_params.get("instance") or None,
        limit=_int(request, "limit", 100, 1, 1000),
    )
    return _json({"items": items})


async def get_operation(request: Request) -> Response:
    """One operation, optionally waiting for it to finish."""
    wait = _wait(request)
    op_id = request.path_params["id"]
    if wait is None:
        return _json(await operations.get_operation(_platform(request), _actor(request), op_id))
    return _json(await operations.wait_operation(_platform(request), _actor(request), op_id, wait))


async def list_audit(request: Request) -> Response:
    """The audit trail, newest first."""
    items = await operations.list_audit(
        _platform(request),
        _actor(request),
        target=request.query_params.get("target") or None,
        limit=_int(request, "limit", 100, 1, 1000),
    )
    return _json({"items": items})
