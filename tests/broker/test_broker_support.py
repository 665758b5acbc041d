"""Shared helpers for the broker SDK tests: a test broker, its catalog, and an in-process runner.

Not a test module (it holds no tests); the other `test_broker_*` modules import from it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
from starlette.types import ASGIApp, Message

from servicebay import osb
from servicebay.broker import (
    BindDetails,
    BindResult,
    Broker,
    BrokerSettings,
    DeprovisionDetails,
    OperationContext,
    OperationFailed,
    OperationKind,
    ProvisionDetails,
    ProvisionResult,
    Store,
    UnbindDetails,
    UpdateDetails,
    UpdateResult,
    create_app,
)

USER, PASSWORD, TOKEN = "admin", "s3cret-pass", "bearer-token-123"
HEADERS = {"X-Broker-API-Version": "2.17"}
SERVICE = "svc-0001"
SYNC, ASYNC, UNBINDABLE, ROTATABLE, FIXED, SHORT = (
    "plan-sync",
    "plan-async",
    "plan-unbindable",
    "plan-rotatable",
    "plan-fixed",
    "plan-short",
)

_SCHEMA = {
    "$schema": "http://json-schema.org/draft-04/schema#",
    "type": "object",
    "properties": {
        "size": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
        "name": {"type": "string"},
        "secret": {"type": "string", "writeOnly": True},
        "fail": {"type": "boolean"},
        "gate": {"type": "boolean"},
    },
    "additionalProperties": False,
}
_SCHEMAS = {
    "service_instance": {"create": {"parameters": _SCHEMA}, "update": {"parameters": _SCHEMA}},
    "service_binding": {"create": {"parameters": _SCHEMA}},
}


def _plan(plan_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": plan_id,
        "name": plan_id.removeprefix("plan-"),
        "description": f"the {plan_id} plan",
        "schemas": _SCHEMAS,
        "maintenance_info": {"version": "1.2.0"},
        **extra,
    }


CATALOG = osb.Catalog.model_validate(
    {
        "services": [
            {
                "id": SERVICE,
                "name": "testsvc",
                "description": "a service for tests",
                "bindable": True,
                "instances_retrievable": True,
                "bindings_retrievable": True,
                "plan_updateable": True,
                "allow_context_updates": True,
                "plans": [
                    _plan(SYNC),
                    _plan(ASYNC, maximum_polling_duration=60),
                    _plan(UNBINDABLE, bindable=False),
                    _plan(ROTATABLE, binding_rotatable=True),
                    _plan(FIXED, plan_updateable=False),
                    _plan(SHORT, maximum_polling_duration=1),
                ],
            }
        ]
    }
)


class SampleBroker(Broker):
    """Records every call; `fail: true` fails, `gate: true` waits for `release()` (async)."""

    catalog = CATALOG

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.gate = asyncio.Event()
        self.identities: list[osb.OriginatingIdentity | None] = []
        self.started = self.stopped = False
        #: Operation kinds that wait for `release()` whatever their parameters say.
        self.hold: set[str] = set()

    def is_async(self, operation: OperationKind, plan: osb.Plan) -> bool:
        return plan.id in (ASYNC, SHORT)

    def release(self) -> None:
        self.gate.set()

    async def _work(self, kind: str, details: Any, ctx: OperationContext, params: Any) -> None:
        self.calls.append((kind, details))
        self.identities.append(getattr(details, "identity", None))
        if params.get("gate") or kind in self.hold:
            await ctx.progress(f"{kind}: waiting")
            await self.gate.wait()
        if params.get("fail"):
            raise OperationFailed(f"{kind} failed on purpose", instance_usable=False)

    async def provision(self, details: ProvisionDetails, ctx: OperationContext) -> ProvisionResult:
        await self._work("provision", details, ctx, details.parameters)
        return ProvisionResult(dashboard_url=f"https://dash.example/{details.instance_id}")

    async def update(self, details: UpdateDetails, ctx: OperationContext) -> UpdateResult:
        await self._work("update", details, ctx, details.parameters)
        return UpdateResult()

    async def deprovision(self, details: DeprovisionDetails, ctx: OperationContext) -> None:
        await self._work("deprovision", details, ctx, {})

    async def bind(self, details: BindDetails, ctx: OperationContext) -> BindResult:
        await self._work("bind", details, ctx, details.parameters)
        return BindResult(
            credentials={"username": details.binding_id, "password": uuid.uuid4().hex}
        )

    async def unbind(self, details: UnbindDetails, ctx: OperationContext) -> None:
        await self._work("unbind", details, ctx, {})

    async def startup(self) -> None:
        self.started = True

    async def shutdown(self) -> None:
        self.stopped = True

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.calls if k == kind)


def settings_for(db: str, **extra: Any) -> BrokerSettings:
    """Settings with basic + bearer auth on the given database URL."""
    values: dict[str, Any] = {
        "username": USER,
        "password": PASSWORD,
        "bearer_token": TOKEN,
        "db": db,
        "retry_after": 3,
        "shutdown_grace": 2.0,
    }
    values.update(extra)
    return BrokerSettings(**values)


class Lifespan:
    """Runs an ASGI app's lifespan protocol (startup on enter, shutdown on exit)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Lifespan:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self._task = asyncio.create_task(self.app(scope, self._inbox.get, self._outbox.put))
        await self._inbox.put({"type": "lifespan.startup"})
        message = await asyncio.wait_for(self._outbox.get(), 30)
        if message["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"startup failed: {message}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._inbox.put({"type": "lifespan.shutdown"})
        message = await asyncio.wait_for(self._outbox.get(), 60)
        assert self._task is not None
        await self._task
        if message["type"] != "lifespan.shutdown.complete":
            raise RuntimeError(f"shutdown failed: {message}")


@contextlib.asynccontextmanager
async def running(
    broker: Broker,
    db: str,
    *,
    store: Store | None = None,
    headers: dict[str, str] | None = None,
    **options: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    """The broker's app with its lifespan running, and a client with auth and version set."""
    settings = options.pop("settings", None) or settings_for(db)
    app = create_app(broker, settings=settings, store=store, **options)
    async with Lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://broker.test",
            auth=(USER, PASSWORD),
            headers=HEADERS if headers is None else headers,
        ) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


def provision_body(plan: str = SYNC, **parameters: Any) -> dict[str, Any]:
    """A valid provision body for the test service."""
    body: dict[str, Any] = {
        "service_id": SERVICE,
        "plan_id": plan,
        "organization_guid": "org-1",
        "space_guid": "space-1",
        "context": {"platform": "servicebay", "namespace": "dev"},
    }
    if parameters:
        body["parameters"] = parameters
    return body


def bind_body(plan: str = SYNC, **parameters: Any) -> dict[str, Any]:
    """A valid bind body for the test service."""
    body: dict[str, Any] = {
        "service_id": SERVICE,
        "plan_id": plan,
        "bind_resource": {"app_guid": "app-1"},
    }
    if parameters:
        body["parameters"] = parameters
    return body


def ids(plan: str = SYNC) -> dict[str, str]:
    """Query string of deprovision/unbind."""
    return {"service_id": SERVICE, "plan_id": plan}


def identity_header(platform: str = "servicebay", **value: Any) -> str:
    """An X-Broker-API-Originating-Identity value."""
    raw = base64.b64encode(json.dumps(value).encode()).decode()
    return f"{platform} {raw}"


async def eventually(
    check: Callable[[], Awaitable[bool]], *, within: float = 10.0, interval: float = 0.02
) -> None:
    """Poll `check` until it is true; fail after `within` seconds (never a fixed sleep)."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


async def wait_state(
    client: httpx.AsyncClient, path: str, state: str, operation: str | None = None
) -> dict[str, Any]:
    """Poll a last_operation endpoint until it reports `state`; return the body."""
    body: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal body
        params = {"operation": operation} if operation else None
        response = await client.get(path + "/last_operation", params=params)
        body = response.json()
        return response.status_code == 200 and body.get("state") == state

    await eventually(reached)
    return body
