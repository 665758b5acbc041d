"""The sandbox broker: the reference broker for tests, demos, the benchmark and the self-test.

It provisions nothing real. Every plan behaves in a way a platform must cope with, steered by
the plans and by parameters:

- ``sync``: every operation completes in the request (201/200).
- ``async``: every operation is asynchronous (202, then ``last_operation``); it takes
  ``delay_seconds`` (default 2) and reports its progress as it goes.
- ``param``: a richer schema — ``size`` 1 to 10 (default 1), ``name``, and ``secret``
  (``writeOnly``: never shown back, never logged); unknown parameters are refused.
- ``unbindable``: ``bindable: false``; the SDK refuses binds.
- ``rotatable``: ``binding_rotatable: true``; a bind may name a ``predecessor_binding_id``.

On every plan ``fail: true`` makes the operation fail: 500 when synchronous, a ``failed``
``last_operation`` when asynchronous. Bind returns ``uri``, ``username`` and ``password``, fresh
random secrets per binding; the SDK's durable records make a retried bind answer the same ones.

Serve it: ``bay broker serve servicebay.examples.sandbox:broker --username u --password p``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from typing import Any

from servicebay.broker import (
    BindDetails,
    BindResult,
    Broker,
    DeprovisionDetails,
    OperationContext,
    OperationFailed,
    OperationKind,
    ProvisionDetails,
    ProvisionResult,
    UnbindDetails,
    UpdateDetails,
    UpdateResult,
)
from servicebay.osb import (
    Catalog,
    InputParameters,
    MaintenanceInfo,
    Plan,
    Schemas,
    Service,
    ServiceBindingSchemas,
    ServiceInstanceSchemas,
)

__all__ = ["SERVICE_ID", "SandboxBroker", "broker", "plan_id"]

SERVICE_ID = "4c3d54b6-5f0b-4a39-9d8e-6a1b2c3d4e5f"
_PLAN_IDS = {
    "sync": "4c3d54b6-0001-4a39-9d8e-6a1b2c3d4e5f",
    "async": "4c3d54b6-0002-4a39-9d8e-6a1b2c3d4e5f",
    "param": "4c3d54b6-0003-4a39-9d8e-6a1b2c3d4e5f",
    "unbindable": "4c3d54b6-0004-4a39-9d8e-6a1b2c3d4e5f",
    "rotatable": "4c3d54b6-0005-4a39-9d8e-6a1b2c3d4e5f",
}
DEFAULT_DELAY = 2.0
_DRAFT_04 = "http://json-schema.org/draft-04/schema#"
_MAINTENANCE = MaintenanceInfo(version="1.0.0", description="Sandbox release 1.0.0.")


def plan_id(name: str) -> str:
    """The fixed id of the sandbox plan called ``name``."""
    return _PLAN_IDS[name]


def _common_properties() -> dict[str, Any]:
    return {
        "size": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
        "delay_seconds": {
            "type": "number",
            "minimum": 0,
            "maximum": 30,
            "description": "How long asynchronous work takes (plan async).",
        },
        "fail": {"type": "boolean", "description": "Make the operation fail."},
    }


def _schema(*, strict: bool = False, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "$schema": _DRAFT_04,
        "type": "object",
        "properties": {**_common_properties(), **(extra or {})},
    }
    if strict:
        schema["additionalProperties"] = False
    return schema


def _schemas(instance: dict[str, Any], binding: dict[str, Any]) -> Schemas:
    return Schemas(
        service_instance=ServiceInstanceSchemas(
            create=InputParameters(parameters=instance), update=InputParameters(parameters=instance)
        ),
        service_binding=ServiceBindingSchemas(create=InputParameters(parameters=binding)),
    )


def _plan(name: str, description: str, **flags: Any) -> Plan:
    schemas = flags.pop("schemas", None) or _schemas(_schema(), _schema())
    return Plan(
        id=_PLAN_IDS[name],
        name=name,
        description=description,
        free=True,
        schemas=schemas,
        maintenance_info=_MAINTENANCE,
        **flags,
    )


_PARAM_SCHEMA = _schema(
    strict=True,
    extra={
        "name": {"type": "string", "maxLength": 63, "description": "A display name."},
        "secret": {"type": "string", "writeOnly": True, "description": "Never shown back."},
    },
)

CATALOG = Catalog(
    services=[
        Service(
            id=SERVICE_ID,
            name="sandbox",
            description="A broker that provisions nothing, for tests and demos.",
            tags=["sandbox", "testing"],
            bindable=True,
            instances_retrievable=True,
            bindings_retrievable=True,
            allow_context_updates=True,
            plan_updateable=True,
            metadata={"displayName": "Sandbox"},
            plans=[
                _plan("sync", "Every operation completes synchronously."),
                _plan(
                    "async",
                    "Every operation is asynchronous and takes a few seconds.",
                    maximum_polling_duration=120,
                ),
                _plan(
                    "param",
                    "Validated parameters, including a write-only secret.",
                    schemas=_schemas(_PARAM_SCHEMA, _schema()),
                ),
                _plan("unbindable", "Instances cannot be bound.", bindable=False),
                _plan("rotatable", "Bindings can be rotated.", binding_rotatable=True),
            ],
        )
    ]
)


class SandboxBroker(Broker):
    """Behaviour chosen by plan and parameters; see the module docstring."""

    catalog = CATALOG

    def is_async(self, operation: OperationKind, plan: Plan) -> bool:
        """Plan ``async`` runs every operation in the background."""
        return plan.name == "async"

    def dashboard_url(self, instance_id: str, service: Service, plan: Plan) -> str:
        """Known up front, so asynchronous provisions carry it in their 202 (spec MUST)."""
        return f"https://sandbox.invalid/i/{instance_id}"

    async def _work(self, what: str, parameters: Mapping[str, Any], ctx: OperationContext) -> None:
        """Simulated work: fails on ``fail``, and on async plans takes time in reported steps."""
        if ctx.is_async:
            delay = float(parameters.get("delay_seconds", DEFAULT_DELAY))
            steps = 4
            for step in range(steps):
                await ctx.progress(f"{what}: step {step + 1} of {steps}")
                await asyncio.sleep(delay / steps)
        if parameters.get("fail"):
            # OperationFailed: 500 with this description when sync, state "failed" when async.
            raise OperationFailed(f"{what} failed because the request asked for it (fail=true)")

    async def provision(self, details: ProvisionDetails, ctx: OperationContext) -> ProvisionResult:
        """Pretend to create the instance; its dashboard is a made-up URL."""
        await self._work("provisioning", details.parameters, ctx)
        return ProvisionResult(
            dashboard_url=self.dashboard_url(details.instance_id, details.service, details.plan)
        )

    async def update(self, details: UpdateDetails, ctx: OperationContext) -> UpdateResult:
        """Pretend to apply the new plan or parameters."""
        await self._work("updating", details.parameters, ctx)
        return UpdateResult()

    async def deprovision(self, details: DeprovisionDetails, ctx: OperationContext) -> None:
        """Pretend to delete the instance (async plans take their default delay)."""
        await self._work("deprovisioning", {}, ctx)

    async def bind(self, details: BindDetails, ctx: OperationContext) -> BindResult:
        """Fresh random credentials for every new binding."""
        await self._work("binding", details.parameters, ctx)
        username = f"u-{details.binding_id[:12]}"
        password = secrets.token_urlsafe(24)
        host = f"{details.instance_id}.sandbox.invalid"
        return BindResult(
            credentials={
                "uri": f"sandbox://{username}:{password}@{host}:7000/",
                "username": username,
                "password": password,
                "host": host,
                "port": 7000,
            }
        )

    async def unbind(self, details: UnbindDetails, ctx: OperationContext) -> None:
        """Pretend to revoke the binding's credentials."""
        await self._work("unbinding", {}, ctx)


broker = SandboxBroker()
