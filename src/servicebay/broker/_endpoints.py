"""HTTP endpoints: read the request's path, query and body, hand them to the lifecycle.

Each endpoint is a few lines: shared checks (auth, version, identity) already ran in the
middleware, errors are rendered by the error boundary, and the decisions live in
`_lifecycle`. Endpoints note which operation they serve in the scope (`KIND_KEY`) so the error
renderer knows whether `instance_usable` / `update_repeatable` may appear.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from servicebay.broker._author import OperationKind
from servicebay.broker._errors import KIND_KEY, json_response
from servicebay.broker._lifecycle import Caller, Lifecycle, Reply
from servicebay.broker._middleware import IDENTITY_KEY, REQUEST_ID_KEY
from servicebay.broker._validation import (
    accepts_incomplete,
    optional_query_id,
    read_json,
    require_path_id,
    require_query_id,
)

__all__ = [
    "bind",
    "binding_last_operation",
    "catalog",
    "deprovision",
    "fetch_binding",
    "fetch_instance",
    "healthz",
    "instance_last_operation",
    "provision",
    "unbind",
    "update",
]


def _lifecycle(request: Request) -> Lifecycle:
    lifecycle: Lifecycle = request.app.state.lifecycle
    return lifecycle


def _caller(request: Request, kind: OperationKind | None) -> Caller:
    request.scope[KIND_KEY] = kind
    return Caller(request.scope.get(IDENTITY_KEY), request.scope.get(REQUEST_ID_KEY))


def _respond(reply: Reply) -> Response:
    return json_response(reply.status, reply.body, dict(reply.headers) if reply.headers else None)


async def catalog(request: Request) -> Response:
    """GET /v2/catalog."""
    return json_response(200, _lifecycle(request).catalog.body)


async def provision(request: Request) -> Response:
    """PUT /v2/service_instances/{instance_id}."""
    caller = _caller(request, OperationKind.PROVISION)
    instance_id = require_path_id(request, "instance_id")
    incomplete = accepts_incomplete(request)
    data = await read_json(request)
    return _respond(await _lifecycle(request).provision(instance_id, data, incomplete, caller))


async def update(request: Request) -> Response:
    """PATCH /v2/service_instances/{instance_id}."""
    caller = _caller(request, OperationKind.UPDATE)
    instance_id = require_path_id(request, "instance_id")
    incomplete = accepts_incomplete(request)
    data = await read_json(request)
    return _respond(await _lifecycle(request).update(instance_id, data, incomplete, caller))


async def deprovision(request: Request) -> Response:
    """DELETE /v2/service_instances/{instance_id}."""
    caller = _caller(request, OperationKind.DEPROVISION)
    instance_id = require_path_id(request, "instance_id")
    service_id = require_query_id(request, "service_id")
    plan_id = require_query_id(request, "plan_id")
    incomplete = accepts_incomplete(request)
    reply = await _lifecycle(request).deprovision(
        instance_id, service_id, plan_id, incomplete, caller
    )
    return _respond(reply)


async def fetch_instance(request: Request) -> Response:
    """GET /v2/service_instances/{instance_id}."""
    instance_id = require_path_id(request, "instance_id")
    optional_query_id(request, "service_id")
    optional_query_id(request, "plan_id")
    return _respond(await _lifecycle(request).fetch_instance(instance_id))


async def instance_last_operation(request: Request) -> Response:
    """GET /v2/service_instances/{instance_id}/last_operation."""
    instance_id = require_path_id(request, "instance_id")
    optional_query_id(request, "service_id")
    optional_query_id(request, "plan_id")
    operation = optional_query_id(request, "operation")
    return _respond(await _lifecycle(request).last_operation(instance_id, None, operation))


async def bind(request: Request) -> Response:
    """PUT /v2/service_instances/{instance_id}/service_bindings/{binding_id}."""
    caller = _caller(request, OperationKind.BIND)
    instance_id = require_path_id(request, "instance_id")
    binding_id = require_path_id(request, "binding_id")
    incomplete = accepts_incomplete(request)
    data = await read_json(request)
    reply = await _lifecycle(request).bind(instance_id, binding_id, data, incomplete, caller)
    return _respond(reply)


async def unbind(request: Request) -> Response:
    """DELETE /v2/service_instances/{instance_id}/service_bindings/{binding_id}."""
    caller = _caller(request, OperationKind.UNBIND)
    instance_id = require_path_id(request, "instance_id")
    binding_id = require_path_id(request, "binding_id")
    service_id = require_query_id(request, "service_id")
    plan_id = require_query_id(request, "plan_id")
    incomplete = accepts_incomplete(request)
    reply = await _lifecycle(request).unbind(
        instance_id, binding_id, service_id, plan_id, incomplete, caller
    )
    return _respond(reply)


async def fetch_binding(request: Request) -> Response:
    """GET /v2/service_instances/{instance_id}/service_bindings/{binding_id}."""
    instance_id = require_path_id(request, "instance_id")
    binding_id = require_path_id(request, "binding_id")
    optional_query_id(request, "service_id")
    optional_query_id(request, "plan_id")
    return _respond(await _lifecycle(request).fetch_binding(instance_id, binding_id))


async def binding_last_operation(request: Request) -> Response:
    """GET /v2/service_instances/{instance_id}/service_bindings/{binding_id}/last_operation."""
    instance_id = require_path_id(request, "instance_id")
    binding_id = require_path_id(request, "binding_id")
    optional_query_id(request, "service_id")
    optional_query_id(request, "plan_id")
    operation = optional_query_id(request, "operation")
    return _respond(await _lifecycle(request).last_operation(instance_id, binding_id, operation))


async def healthz(request: Request) -> Response:
    """GET /healthz: liveness, no auth, reveals nothing."""
    return json_response(200, b'{"status":"ok"}')
