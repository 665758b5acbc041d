"""The route table of ``/api/v1`` and the OpenAPI 3.1 document built from it.

``ROUTES`` is the single list of (method, path, handler name, summary, request model, success
status); the app registers exactly these, so the document cannot drift from the code.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel

from servicebay.platform.api.models import (
    BindIn,
    BrokerIn,
    NamespaceIn,
    NamespaceSettings,
    ProvisionIn,
    UpdateIn,
)

Route = tuple[str, str, str, str, type[BaseModel] | None, int]

ROUTES: list[Route] = [
    ("GET", "/healthz", "healthz", "Liveness (no auth)", None, 200),
    ("GET", "/whoami", "whoami", "The user behind the token", None, 200),
    ("POST", "/brokers", "register_broker", "Register a broker", BrokerIn, 201),
    ("GET", "/brokers", "list_brokers", "List brokers", None, 200),
    ("GET", "/brokers/{name}", "get_broker", "Show a broker", None, 200),
    ("POST", "/brokers/{name}/refresh", "refresh_broker", "Fetch the catalog again", None, 200),
    ("DELETE", "/brokers/{name}", "remove_broker", "Remove an unused broker", None, 204),
    ("POST", "/namespaces", "create_namespace", "Create a namespace", NamespaceIn, 201),
    ("GET", "/namespaces", "list_namespaces", "List namespaces", None, 200),
    ("GET", "/namespaces/{name}", "get_namespace", "Show a namespace", None, 200),
    ("PUT", "/namespaces/{name}", "replace_namespace", "Replace settings", NamespaceSettings, 200),
    ("DELETE", "/namespaces/{name}", "delete_namespace", "Delete an empty namespace", None, 204),
    ("GET", "/marketplace", "marketplace", "Services and visible plans", None, 200),
    ("GET", "/marketplace/{service}", "marketplace_service", "One service", None, 200),
    ("POST", "/instances", "provision", "Provision or dry-run", ProvisionIn, 202),
    ("GET", "/instances", "list_instances", "List instances (paged)", None, 200),
    ("GET", "/instances/{name}", "get_instance", "Show an instance", None, 200),
    ("PATCH", "/instances/{name}", "update_instance", "Update or dry-run", UpdateIn, 202),
    ("DELETE", "/instances/{name}", "deprovision", "Deprovision an instance", None, 202),
    ("POST", "/instances/{name}/purge", "purge", "Remove from the platform only", None, 200),
    ("POST", "/bindings", "bind", "Create a binding or service key", BindIn, 202),
    ("GET", "/bindings", "list_bindings", "List bindings", None, 200),
    ("GET", "/bindings/{name}", "get_binding", "Show a binding", None, 200),
    ("DELETE", "/bindings/{name}", "unbind", "Delete a binding or key", None, 202),
    ("GET", "/apps/{app}/bindings", "app_bindings", "An app's credentials", None, 200),
    ("GET", "/operations", "list_operations", "List operations", None, 200),
    ("GET", "/operations/{id}", "get_operation", "Show (and wait for) an operation", None, 200),
    ("GET", "/audit", "list_audit", "The audit trail", None, 200),
]

# Routes that accept ``?wait=SECONDS``: answer once the operation has finished (at most 60 s).
WAITING = {"provision", "update_instance", "deprovision", "bind", "unbind", "get_operation"}
_WAIT: dict[str, Any] = {
    "name": "wait",
    "in": "query",
    "required": False,
    "description": "answer once the operation has finished, or after this many seconds",
    "schema": {"type": "number", "minimum": 0, "maximum": 60},
}

_ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "stable code, e.g. instance_not_found"},
        "message": {"type": "string"},
        "problems": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "rule": {"type": "string"},
                    "message": {"type": "string"},
                },
            },
        },
    },
}


def _operation(
    method: str, path: str, handler: str, summary: str, model: type[BaseModel] | None, status: int
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        str(status): {"description": "success"}
        if status == 204
        else {
            "description": "success",
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        "default": {
            "description": "error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        },
    }
    if handler in ("provision", "update_instance"):
        responses["200"] = {"description": "dry run (dry_run: true)"}
    op: dict[str, Any] = {"operationId": handler, "summary": summary, "responses": responses}
    params = [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
        for n in ("name", "service", "app", "id")
        if "{" + n + "}" in path
    ]
    if handler in WAITING:
        params.append(_WAIT)
    if params:
        op["parameters"] = params
    if model is not None:
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    if path != "/healthz":
        op["security"] = [{"token": []}]
    return op


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of ``/api/v1``."""
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {"Error": _ERROR}
    for method, path, handler, summary, model, status in ROUTES:
        paths.setdefault(f"/api/v1{path}", {})[method.lower()] = _operation(
            method, path, handler, summary, model, status
        )
        if model is not None:
            schemas[model.__name__] = model.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
    paths["/api/v1/openapi.json"] = {
        "get": {"operationId": "openapi", "summary": "This document", "responses": {"200": {}}}
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "servicebay platform API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        },
    }
