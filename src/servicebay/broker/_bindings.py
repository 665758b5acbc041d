"""Service bindings: bind (and rotation), unbind and fetch (spec "Binding", "Unbinding",
"Fetching a Service Binding").

Binding records move ``binding → ready → unbinding → (deleted)``, or ``binding → failed``. The
full bind response — credentials included — is recorded (encrypted by the store) and replayed
verbatim to a retried bind and to a fetch: a retry never mints new credentials.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from servicebay import osb
from servicebay.broker._author import (
    BindDetails,
    BindResult,
    FetchBindingDetails,
    OperationContext,
    OperationKind,
    UnbindDetails,
)
from servicebay.broker._lifecycle_base import (
    TWIN_WAITS,
    Caller,
    LifecycleBase,
    Reply,
    abandoned,
    json_body,
)
from servicebay.broker._operations import Job
from servicebay.broker._store import BindingRecord, InstanceRecord, utcnow
from servicebay.broker._validation import (
    fingerprint,
    parse_body,
    validated_parameters,
)

__all__ = ["Bindings"]


class Bindings(LifecycleBase):
    """Bind, rotate, unbind and fetch service bindings."""

    # ------------------------------------------------------------------ bind

    async def bind(
        self,
        instance_id: str,
        binding_id: str,
        data: dict[str, Any],
        accepts_incomplete: bool,
        caller: Caller,
    ) -> Reply:
        """PUT /v2/service_instances/:instance_id/service_bindings/:binding_id."""
        instance = await self.store.get_instance(instance_id)
        if instance is not None and data.get("predecessor_binding_id"):
            # spec "Rotating a Service Binding": the body may carry only predecessor_binding_id.
            data = {"service_id": instance.service_id, "plan_id": instance.plan_id, **data}
        request = parse_body(osb.BindRequest, data)
        service, plan = self.catalog.lookup(request.service_id, request.plan_id)
        if instance is None:
            raise osb.NotFound(f"instance {instance_id!r} does not exist")
        _check_binding_target(instance, service, plan)
        if self.broker.requires_app(service, plan) and not request.effective_app_guid:
            raise osb.RequiresApp("this service binds applications only: app_guid is required")
        parameters = request.parameters
        if request.predecessor_binding_id is not None:
            predecessor = await self._predecessor(instance_id, request.predecessor_binding_id, plan)
            if parameters is None:  # spec: rotation spares the platform sending them again
                parameters = predecessor.parameters
        parameters = validated_parameters(plan.binding_create_schema(), parameters, defaults=True)
        is_async = self._check_async(OperationKind.BIND, plan, accepts_incomplete)
        record = BindingRecord(
            instance_id=instance_id,
            binding_id=binding_id,
            state="binding",
            request_fingerprint=_bind_fingerprint(request),
            parameters=parameters,
        )
        if not await self.store.create_binding(record):
            existing = await self.store.get_binding(instance_id, binding_id)
            replay = await self._bind_again(existing, record)
            if replay is not None:
                return replay
            await self.store.put_binding(record)  # take over a failed or abandoned attempt
        resolved = request.model_copy(update={"parameters": parameters})
        details = self._bind_details(instance, binding_id, resolved, caller)
        if is_async:
            blob = {"request": resolved.to_wire(), **caller.to_blob()}
            job = self._bind_job(details)
            return await self._start(OperationKind.BIND, instance_id, binding_id, plan, blob, job)
        ctx = self._sync_context(OperationKind.BIND, instance_id, binding_id)
        try:
            result = await self._timed(OperationKind.BIND, self.broker.bind(details, ctx))
        except BaseException:
            await self.store.delete_binding(instance_id, binding_id)
            raise
        record.state = "ready"
        record.response = _bind_response(result)
        await self.store.put_binding(record)
        return Reply(201, osb.BindResponse.model_validate(record.response).to_json())

    async def _predecessor(
        self, instance_id: str, binding_id: str, plan: osb.Plan
    ) -> BindingRecord:
        if not plan.binding_rotatable:
            raise osb.BadRequest(
                f"predecessor_binding_id: plan {plan.name!r} does not support binding rotation"
            )
        predecessor = await self.store.get_binding(instance_id, binding_id)
        if predecessor is None or predecessor.state != "ready":
            raise osb.BadRequest(
                f"predecessor_binding_id: {binding_id!r} is not a binding of instance "
                f"{instance_id!r}"
            )
        expires_at = (predecessor.response.get("metadata") or {}).get("expires_at")
        if isinstance(expires_at, str) and _expired(expires_at):
            raise osb.BadRequest(f"predecessor_binding_id: binding {binding_id!r} has expired")
        return predecessor

    async def _bind_again(
        self,
        existing: BindingRecord | None,
        wanted: BindingRecord,
        waits: tuple[float, ...] = TWIN_WAITS,
    ) -> Reply | None:
        if existing is None or existing.state == "failed":
            return None
        if existing.request_fingerprint != wanted.request_fingerprint:
            raise osb.Conflict(
                f"binding {wanted.binding_id!r} already exists with different attributes"
            )
        if existing.state == "ready":
            # The very same body, credentials included: a retried bind never mints new ones.
            return Reply(200, osb.BindResponse.model_validate(existing.response).to_json())
        if existing.state == "binding":
            op = await self.store.latest_operation(existing.instance_id, existing.binding_id)
            if op is not None and op.kind == "bind" and op.state == "in progress":
                return Reply(202, json_body(osb.BindResponse(operation=op.operation_id)))
            if abandoned(existing.updated_at, self.sync_abandoned_after):
                return None
            if waits:  # the twin may be between its record and its operation or result
                await asyncio.sleep(waits[0])
                current = await self.store.get_binding(existing.instance_id, existing.binding_id)
                return await self._bind_again(current, wanted, waits[1:])
        raise osb.ConcurrencyError(f"another operation on binding {wanted.binding_id!r} is running")

    def _bind_details(
        self, instance: InstanceRecord, binding_id: str, request: osb.BindRequest, caller: Caller
    ) -> BindDetails:
        service, plan = self.catalog.recorded(request.service_id, request.plan_id)
        return BindDetails(
            instance_id=instance.instance_id,
            binding_id=binding_id,
            service=service,
            plan=plan,
            parameters=dict(request.parameters or {}),
            context=dict(request.context or {}),
            app_guid=request.effective_app_guid,
            bind_resource=request.bind_resource,
            predecessor_binding_id=request.predecessor_binding_id,
            instance_parameters=dict(instance.parameters),
            identity=caller.identity,
            request_id=caller.request_id,
        )

    def _bind_job(self, details: BindDetails) -> Job:
        async def run(ctx: OperationContext) -> None:
            result = await self.broker.bind(details, ctx)
            record = await self.store.get_binding(details.instance_id, details.binding_id)
            if record is None:
                raise osb.InternalError("the binding record disappeared")
            record.state = "ready"
            record.response = _bind_response(result)
            await self.store.put_binding(record)

        async def fail() -> None:
            record = await self.store.get_binding(details.instance_id, details.binding_id)
            if record is not None and record.state == "binding":
                record.state = "failed"
                await self.store.put_binding(record)

        return Job(OperationKind.BIND, run, fail)

    # ------------------------------------------------------------------ unbind

    async def unbind(
        self,
        instance_id: str,
        binding_id: str,
        service_id: str,
        plan_id: str,
        accepts_incomplete: bool,
        caller: Caller,
    ) -> Reply:
        """DELETE /v2/service_instances/:instance_id/service_bindings/:binding_id."""
        # The query names the instance's service and plan (spec: MUST); trusting it spares a read
        # of the instance on the hot path. A binding only exists while its instance does.
        try:
            service, plan = self.catalog.lookup(service_id, plan_id)
        except osb.BadRequest:
            # Unless the catalog dropped the instance's plan: its bindings can still be deleted.
            instance = await self.store.get_instance(instance_id)
            ids = (instance.service_id, instance.plan_id) if instance else (service_id, plan_id)
            if instance is not None and ids != (service_id, plan_id):
                raise
            service, plan = self.catalog.recorded(service_id, plan_id)
        record = await self.store.get_binding(instance_id, binding_id)
        if record is None:
            raise osb.Gone(f"binding {binding_id!r} of instance {instance_id!r} does not exist")
        is_async = self._check_async(OperationKind.UNBIND, plan, accepts_incomplete)
        replay = await self._check_unbindable(record)
        if replay is not None:
            return replay
        details = UnbindDetails(
            instance_id=instance_id,
            binding_id=binding_id,
            service=service,
            plan=plan,
            identity=caller.identity,
            request_id=caller.request_id,
        )
        if is_async:
            record.state = "unbinding"
            await self.store.put_binding(record)
            blob = caller.to_blob()
            job = self._unbind_job(details)
            return await self._start(OperationKind.UNBIND, instance_id, binding_id, plan, blob, job)
        ctx = self._sync_context(OperationKind.UNBIND, instance_id, binding_id)
        await self._timed(OperationKind.UNBIND, self.broker.unbind(details, ctx))
        await self.store.delete_binding(instance_id, binding_id)
        return Reply(200, json_body(osb.UnbindResponse()))

    async def _check_unbindable(self, record: BindingRecord) -> Reply | None:
        if record.state in ("ready", "failed"):
            return None
        op = await self.store.latest_operation(record.instance_id, record.binding_id)
        running = op is not None and op.state == "in progress"
        if record.state == "unbinding" and running and op is not None and op.kind == "unbind":
            return Reply(202, json_body(osb.UnbindResponse(operation=op.operation_id)))
        if (
            record.state == "binding"
            and not running
            and abandoned(record.updated_at, self.sync_abandoned_after)
        ):
            return None
        raise osb.ConcurrencyError(
            f"another operation on binding {record.binding_id!r} is in progress"
        )

    def _unbind_job(self, details: UnbindDetails) -> Job:
        async def run(ctx: OperationContext) -> None:
            await self.broker.unbind(details, ctx)
            await self.store.delete_binding(details.instance_id, details.binding_id)

        async def fail() -> None:
            record = await self.store.get_binding(details.instance_id, details.binding_id)
            if record is not None and record.state == "unbinding":
                record.state = "ready"
                await self.store.put_binding(record)

        return Job(OperationKind.UNBIND, run, fail)

    async def fetch_binding(self, instance_id: str, binding_id: str) -> Reply:
        """GET /v2/service_instances/:instance_id/service_bindings/:binding_id."""
        record = await self.store.get_binding(instance_id, binding_id)
        instance = await self.store.get_instance(instance_id) if record is not None else None
        if record is None or instance is None or record.state in ("binding", "failed"):
            # spec: 404 if the binding does not exist or binding is still in progress.
            raise osb.NotFound(f"binding {binding_id!r} of instance {instance_id!r} does not exist")
        service, plan = self.catalog.recorded(instance.service_id, instance.plan_id)
        details = FetchBindingDetails(
            instance_id, binding_id, service, plan, dict(record.parameters)
        )
        ctx = self._sync_context(None, instance_id, binding_id)
        found = await self.broker.fetch_binding(details, ctx)
        body: dict[str, Any] = dict(record.response)
        parameters: Mapping[str, Any] = record.parameters
        if found is not None:
            parameters = found.parameters if found.parameters is not None else parameters
            body.update({k: v for k, v in _bind_response_fields(found).items() if v is not None})
        shown = self._shown(instance.service_id, plan, dict(parameters), create=False)
        if shown is not None:
            body["parameters"] = shown
        return Reply(200, osb.FetchBindingResponse.model_validate(body).to_json())


# ---------------------------------------------------------------------- helpers


def _check_binding_target(instance: InstanceRecord, service: osb.Service, plan: osb.Plan) -> None:
    if instance.service_id != service.id:
        raise osb.BadRequest(
            f"service_id: instance {instance.instance_id!r} belongs to service "
            f"{instance.service_id!r}"
        )
    if instance.plan_id != plan.id:
        raise osb.BadRequest(
            f"plan_id: instance {instance.instance_id!r} uses plan {instance.plan_id!r}"
        )
    if not plan.effective_bindable(service):
        raise osb.BadRequest(f"plan_id: plan {plan.name!r} is not bindable")
    if instance.state == "failed":
        raise osb.UnprocessableEntity(
            f"instance {instance.instance_id!r} failed to provision and cannot be bound"
        )
    if instance.state != "ready":
        raise osb.ConcurrencyError(
            f"instance {instance.instance_id!r} is {instance.state}; bind once it is ready"
        )


def _bind_response_fields(result: Any) -> dict[str, Any]:
    return {
        "metadata": result.metadata.to_wire() if result.metadata else None,
        "credentials": dict(result.credentials) if result.credentials is not None else None,
        "syslog_drain_url": result.syslog_drain_url,
        "route_service_url": result.route_service_url,
        "volume_mounts": [v.to_wire() for v in result.volume_mounts]
        if result.volume_mounts is not None
        else None,
        "endpoints": [e.to_wire() for e in result.endpoints]
        if result.endpoints is not None
        else None,
    }


def _bind_response(result: BindResult) -> dict[str, Any]:
    """The bind response body to record and replay (None fields left out)."""
    fields = _bind_response_fields(result)
    return osb.BindResponse.model_validate(
        {k: v for k, v in fields.items() if v is not None}
    ).to_wire()


def _expired(timestamp: str) -> bool:
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return False
    if moment.tzinfo is None:
        return False
    return moment <= utcnow()


def _bind_fingerprint(request: osb.BindRequest) -> str:
    return fingerprint(
        {
            "service_id": request.service_id,
            "plan_id": request.plan_id,
            "parameters": request.parameters or {},
            "app_guid": request.effective_app_guid,
            "bind_resource": request.bind_resource.to_wire() if request.bind_resource else None,
            "predecessor_binding_id": request.predecessor_binding_id,
        }
    )
