"""HTTP endpoints: read the request's path, query and body, hand them to the lifecycle.

Each endpoint is a few lines: shared checks (auth, version, identity) already ran in the
gate (`_middleware`), errors are rendered by its error boundary, and the decisions live in
`_lifecycle`. An endpoint takes an `OSBRequest` and answers a `Reply`, which the gate sends.
Endpoints note which operation they serve in the scope (`KIND_KEY`) so the error renderer
knows whether `instance_usable` / `update_repeatable` may appear. `/healthz` is a plain
Starlette endpoint: it is not an OSB route.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from servicebay.broker._author import OperationKind
from servicebay.broker._errors import KIND_KEY, json_response
from servicebay.broker._lifecycle import Caller, Reply
from servicebay.broker._middleware import IDENTITY_KEY, REQUEST_ID_KEY
from servicebay.broker._routing import OSBRequest
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


def _caller(request: OSBRequest, kind: OperationKind | None) -> Caller:
    scope = request.scope
    scope[KIND_KEY] = kind
    return Caller(scope.get(IDENTITY_KEY), scope.get(REQUEST_ID_KEY))


async def catalog(request: OSBRequest) -> Reply:
    """GET /v2/catalog."""
    return Reply(200, request.lifecycle.catalog.body)


async def provision(request: OSBRequest) -> Reply:
    """PUT /v2/service_instances/{instance_id}."""
    caller = _caller(request, OperationKind.PROVISION)
    instance_id = require_path_id(request, "instance_id")
    incomplete = accepts_incomplete(request)
    data = await read_json(request)
    return await request.lifecycle.provision(instance_id, data, incomplete, caller)


async def update(request: OSBRequest) -> Reply:
    """PATCH /v2/service_instances/{instance_id}."""
    caller = _caller(request, OperationKind.UPDATE)
    instance_id = require_path_id(request, "instance_id")
    incomplete = accepts_incomplete(request)
    data = await read_json(request)
    return await request.lifecycle.update(instance_id, data, incomplete, caller)


async def deprovision(request: OSBRequest) -> Reply:
    """DELETE /v2/service_instances/{instance_id}."""
    caller = _caller(request, OperationKind.DEPROVISION)
    instance_id = require_path_id(request, "instance_id")
    service_id = require_query_id(request, "service_id")
    plan_id = require_query_id(request, "plan_id")
    incomplete = accepts_incomplete(request)
    reply = await request.lifecycle.deprovision(
        instance_id, service_id, plan_id, incomplete, caller
    )
    return reply


async def fetch_instance(request: OSBRequest) -> Reply:
    """GET /v2/service_instances/{instance_id}."""
    instance_id = require_path_id(request, "instance_id")
    optional_query_id(request, "service_id")
    optional_query_id(request, "plan_id")
    return await request.lifecycle.fetch_instance(instance_id)


async def instance_last_operation(request: OSBRequest) -> Reply:
    """GET /v2/service_instances/{instance_id}/last_operation."""
    instance_id = require_path_id(request, "instance_id")
    optional_query_id(request, "service_id")
    optional_query_id(request, "plan_id")
    operation = optional_query_id(request, "operation")
    return await request.lifecycle.last_operation(instance_id, None, operation)


async def bind(request: OSBRequest) -> Reply:
    """PUT /v2/service_instances/{instance_id}/service_bindings/{binding_id}."""
    caller = _caller(request, OperationKind.BIND)
    instance_id = require_path_id(request, "instance_id")
    binding_id = require_path_id(request, "binding_id")
    incomplete = accepts_incomplete(request)
    data = await read_json(request)
    reply = await request.lifecycle.bind(instance_id, binding_id, data, incomplete, caller)
    return reply


async def unbind(request: OSBRequest) -> Reply:
    """DELETE /v2/service_instances/{instance_id}/service_bindings/{binding_id}."""
    caller = _caller(request, OperationKind.UNBIND)
    instance_id = require_path_id(request, "instance_id")
    binding_id = require_path_id(request, "binding_id")
    service_id = require_query_id(request, "service_id")
    plan_id = require_query_id(request, "plan_id")
    incomplete = accepts_incomplete(request)
    reply = await request.lifecycle.unbind(
        instance_id, binding_id, service_id, plan_id, incomplete, caller
    )
    return reply


async def fetch_binding(request: OSBRequest) -> Reply:
    """GET /v2/service_instances/{instance_id}/service_bindings/{binding_id}."""
    instance_id = require_path_id(request, "instance_id")
    binding_id = require_path_id(request, "binding_id")
    optional_query_id(request, "service_id")
    optional_query_id(request, "plan_id")
    return await request.lifecycle.fetch_binding(instance_id, binding_id)


async def binding_last_operation(request: OSBRequest) -> Reply:
    """GET /v2/service_instances/{instance_id}/service_bindings/{binding_id}/last_operation."""
    instance_id = require_path_id(request, "instance_id")
    binding_id = require_path_id(request, "binding_id")
    optional_query_id(request, "service_id")
    optional_query_id(request, "plan_id")
    operation = optional_query_id(request, "operation")
    return await request.lifecycle.last_operation(instance_id, binding_id, operation)


async def healthz(request: Request) -> Response:
    """GET /healthz: liveness, no auth, reveals nothing."""
    return json_response(200, b'{"status":"ok"}')
