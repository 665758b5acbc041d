"""The lifecycle of instances and bindings: idempotency, states, sync or async execution.

Each mutating request arrives here validated in shape (`_endpoints`) and leaves as a `Reply`.
In between, the lifecycle checks it against the catalog and the durable records, decides
between "do it", "the same again" and "something else", and runs the author's method either
inline (sync) or as a background `Job` (async, see `_operations`).

Records move through these states (spec: idempotency rules of each endpoint)::

    instance: provisioning ─► ready ─► updating ─► ready ─► deprovisioning ─► (deleted)
                   └─► failed (async provision failed; deprovision cleans it up)
    binding:  binding ─► ready ─► unbinding ─► (deleted)
                 └─► failed

Repeated requests are answered from the records: the same provision or bind again → 200 with
the same body (credentials included) or 202 with the same operation while it runs; a
different one for the same id → 409. Synchronous updates, deprovisions and unbinds keep no
transitional state: a crash in the middle leaves the record as it was, and the platform's
retry runs the (idempotent) author method again.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog

from servicebay import osb
from servicebay.broker._author import (
    BindDetails,
    BindResult,
    Broker,
    DeprovisionDetails,
    FetchBindingDetails,
    FetchInstanceDetails,
    OperationContext,
    OperationKind,
    ProvisionDetails,
    UnbindDetails,
    UpdateDetails,
)
from servicebay.broker._operations import Job, Operations, is_overdue
from servicebay.broker._store import BindingRecord, InstanceRecord, OperationRecord, Store, utcnow
from servicebay.broker._validation import (
    CatalogIndex,
    check_maintenance_info,
    fingerprint,
    parse_body,
    validated_parameters,
)

__all__ = ["Caller", "Lifecycle", "Reply"]

log = structlog.get_logger("servicebay.broker")

#: A synchronous provision or bind still "in progress" after this long was abandoned (its
#: process died mid-request; platforms give up on a request after about 60 s).
SYNC_ABANDONED_AFTER = timedelta(seconds=120)

_EMPTY = b"{}"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Reply:
    """What an endpoint answers: status, encoded JSON body and extra headers."""

    status: int
    body: bytes = _EMPTY
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent the request: the decoded originating identity and the request identity."""

    identity: osb.OriginatingIdentity | None = None
    request_id: str | None = None

    def to_blob(self) -> dict[str, Any]:
        """JSON-ready form, kept with an operation so a resumed run knows its caller."""
        return {
            "identity": self.identity.to_wire() if self.identity else None,
            "request_id": self.request_id,
        }

    @classmethod
    def from_blob(cls, blob: Mapping[str, Any]) -> Caller:
        """Inverse of `to_blob`."""
        identity = blob.get("identity")
        return cls(
            identity=osb.OriginatingIdentity.model_validate(identity) if identity else None,
            request_id=blob.get("request_id"),
        )


def _json(model: osb.WireModel) -> bytes:
    return model.to_json()


def _maintenance(plan: osb.Plan) -> dict[str, Any] | None:
    return plan.maintenance_info.to_wire() if plan.maintenance_info else None


def _abandoned(updated_at: datetime) -> bool:
    return utcnow() - updated_at > SYNC_ABANDONED_AFTER


class Lifecycle:
    """Executes OSB operations against the author, the catalog and the store."""

    def __init__(
        self,
        broker: Broker,
        catalog: CatalogIndex,
        store: Store,
        operations: Operations,
        *,
        retry_after: int,
    ) -> None:
        self.broker = broker
        self.catalog = catalog
        self.store = store
        self.operations = operations
        self.retry_after = retry_after

    # ------------------------------------------------------------------ provision

    async def provision(
        self, instance_id: str, data: dict[str, Any], accepts_incomplete: bool, caller: Caller
    ) -> Reply:
        """PUT /v2/service_instances/:instance_id."""
        request = parse_body(osb.ProvisionRequest, data)
        service, plan = self.catalog.lookup(request.service_id, request.plan_id)
        check_maintenance_info(request.maintenance_info, plan)
        parameters = validated_parameters(
            plan.instance_create_schema(), request.parameters, defaults=True
        )
        is_async = self._check_async(OperationKind.PROVISION, plan, accepts_incomplete)
        record = InstanceRecord(
            instance_id=instance_id,
            service_id=service.id,
            plan_id=plan.id,
            state="provisioning",
            request_fingerprint=_instance_fingerprint(request, plan.id, parameters),
            parameters=parameters,
            context=dict(request.context or {}),
            maintenance_info=_maintenance(plan),
        )
        if not await self.store.create_instance(record):
            existing = await self.store.get_instance(instance_id)
            replay = await self._provision_again(existing, record)
            if replay is not None:
                return replay
            await self.store.put_instance(record)  # take over a failed or abandoned attempt
        resolved = request.model_copy(update={"parameters": parameters})
        details = self._provision_details(instance_id, resolved, caller)
        if is_async:
            blob = {"request": resolved.to_wire(), **caller.to_blob()}
            return await self._start(
                OperationKind.PROVISION, instance_id, None, plan, blob, self._provision_job(details)
            )
        ctx = self._sync_context(OperationKind.PROVISION, instance_id)
        try:
            result = await self._timed(OperationKind.PROVISION, self.broker.provision(details, ctx))
        except BaseException:
            await self.store.delete_instance(instance_id)  # spec: a failure changes nothing
            raise
        record.state = "ready"
        record.dashboard_url = result.dashboard_url
        record.metadata = result.metadata.to_wire() if result.metadata else None
        await self.store.put_instance(record)
        response = osb.ProvisionResponse(
            dashboard_url=result.dashboard_url, metadata=result.metadata
        )
        return Reply(201, _json(response))

    async def _provision_again(
        self, existing: InstanceRecord | None, wanted: InstanceRecord
    ) -> Reply | None:
        """The answer to a provision for an id already recorded; None means "run it anew"."""
        if existing is None or existing.state == "failed":
            return None
        if existing.request_fingerprint != wanted.request_fingerprint:
            raise osb.Conflict(
                f"instance {wanted.instance_id!r} already exists with different attributes"
            )
        if existing.state in ("ready", "updating"):
            return Reply(200, _json(_instance_response(existing)))
        if existing.state == "provisioning":
            op = await self.store.latest_operation(existing.instance_id)
            if op is not None and op.kind == "provision" and op.state == "in progress":
                body = osb.ProvisionResponse(
                    dashboard_url=existing.dashboard_url, operation=op.operation_id
                )
                return Reply(202, _json(body))
            if _abandoned(existing.updated_at):
                return None
            raise osb.ConcurrencyError(f"instance {wanted.instance_id!r} is being provisioned")
        raise osb.ConcurrencyError(f"instance {wanted.instance_id!r} is being deprovisioned")

    def _provision_details(
        self, instance_id: str, request: osb.ProvisionRequest, caller: Caller
    ) -> ProvisionDetails:
        service, plan = self.catalog.recorded(request.service_id, request.plan_id)
        return ProvisionDetails(
            instance_id=instance_id,
            service=service,
            plan=plan,
            parameters=dict(request.parameters or {}),
            context=dict(request.context or {}),
            maintenance_info=request.maintenance_info,
            organization_guid=request.organization_guid,
            space_guid=request.space_guid,
            identity=caller.identity,
            request_id=caller.request_id,
        )

    def _provision_job(self, details: ProvisionDetails) -> Job:
        async def run(ctx: OperationContext) -> None:
            result = await self.broker.provision(details, ctx)
            record = await self._instance_or_fail(details.instance_id)
            record.state = "ready"
            record.dashboard_url = result.dashboard_url
            record.metadata = result.metadata.to_wire() if result.metadata else None
            await self.store.put_instance(record)

        async def fail() -> None:
            record = await self.store.get_instance(details.instance_id)
            if record is not None and record.state == "provisioning":
                record.state = "failed"
                await self.store.put_instance(record)

        return Job(OperationKind.PROVISION, run, fail)

    # ------------------------------------------------------------------ update

    async def update(
        self, instance_id: str, data: dict[str, Any], accepts_incomplete: bool, caller: Caller
    ) -> Reply:
        """PATCH /v2/service_instances/:instance_id."""
        request = parse_body(osb.UpdateRequest, data)
        service = self.catalog.service(request.service_id)
        record = await self.store.get_instance(instance_id)
        if record is None:
            raise osb.NotFound(f"instance {instance_id!r} does not exist")
        if record.service_id != service.id:
            raise osb.BadRequest(
                f"service_id: instance {instance_id!r} belongs to service {record.service_id!r}"
            )
        _, current = self.catalog.recorded(record.service_id, record.plan_id)
        target = self.catalog.plan(service, request.plan_id) if request.plan_id else current
        if target.id != current.id and not current.effective_updateable(service):
            raise osb.UnprocessableEntity(
                f"plan {current.name!r} cannot be changed (plan_updateable is false)",
                update_repeatable=False,
            )
        check_maintenance_info(request.maintenance_info, target)
        if request.parameters is not None:
            validated_parameters(
                target.instance_update_schema(), request.parameters, defaults=False
            )
        is_async = self._check_async(OperationKind.UPDATE, target, accepts_incomplete)
        fp = _update_fingerprint(request, target)
        replay = await self._check_updatable(record, fp)
        if replay is not None:
            return replay
        details = self._update_details(record, request, caller)
        job = self._update_job(details, request)
        if is_async:
            record.state = "updating"
            await self.store.put_instance(record)
            blob = {"request": request.to_wire(), "fingerprint": fp, **caller.to_blob()}
            return await self._start(OperationKind.UPDATE, instance_id, None, current, blob, job)
        ctx = self._sync_context(OperationKind.UPDATE, instance_id)
        result = await self._timed(OperationKind.UPDATE, self.broker.update(details, ctx))
        await self._apply_update(record, request, target, result.dashboard_url, result.metadata)
        response = osb.UpdateResponse(dashboard_url=result.dashboard_url, metadata=result.metadata)
        return Reply(200, _json(response))

    async def _check_updatable(self, record: InstanceRecord, fp: str) -> Reply | None:
        if record.state == "ready":
            return None
        if record.state == "updating":
            op = await self.store.latest_operation(record.instance_id)
            if (
                op is not None
                and op.kind == "update"
                and op.state == "in progress"
                and op.request.get("fingerprint") == fp
            ):
                return Reply(202, _json(osb.UpdateResponse(operation=op.operation_id)))
        if record.state == "failed":
            raise osb.UnprocessableEntity(
                f"instance {record.instance_id!r} failed to provision; deprovision it"
            )
        raise osb.ConcurrencyError(
            f"another operation on instance {record.instance_id!r} is in progress"
        )

    def _update_details(
        self, record: InstanceRecord, request: osb.UpdateRequest, caller: Caller
    ) -> UpdateDetails:
        service, current = self.catalog.recorded(record.service_id, record.plan_id)
        target = service.find_plan(request.plan_id) if request.plan_id else current
        if target is None:  # the catalog changed since the operation was recorded
            raise osb.InternalError(f"plan {request.plan_id!r} is no longer in the catalog")
        return UpdateDetails(
            instance_id=record.instance_id,
            service=service,
            plan=target,
            previous_plan=current if target.id != current.id else None,
            parameters=dict(request.parameters or {}),
            previous_parameters=dict(record.parameters),
            context=dict(request.context or record.context),
            maintenance_info=request.maintenance_info,
            identity=caller.identity,
            request_id=caller.request_id,
        )

    def _update_job(self, details: UpdateDetails, request: osb.UpdateRequest) -> Job:
        async def run(ctx: OperationContext) -> None:
            result = await self.broker.update(details, ctx)
            record = await self._instance_or_fail(details.instance_id)
            await self._apply_update(
                record, request, details.plan, result.dashboard_url, result.metadata
            )

        async def fail() -> None:
            # spec: a failed update leaves the instance as it was (usable unless told otherwise).
            record = await self.store.get_instance(details.instance_id)
            if record is not None and record.state == "updating":
                record.state = "ready"
                await self.store.put_instance(record)

        return Job(OperationKind.UPDATE, run, fail)

    async def _apply_update(
        self,
        record: InstanceRecord,
        request: osb.UpdateRequest,
        target: osb.Plan,
        dashboard_url: str | None,
        metadata: osb.InstanceMetadata | None,
    ) -> None:
        plan_changed = target.id != record.plan_id
        record.plan_id = target.id
        if request.parameters is not None:
            record.parameters = {**record.parameters, **request.parameters}
        if request.context is not None:
            record.context = dict(request.context)
        if plan_changed or (request.maintenance_info and request.maintenance_info.version):
            record.maintenance_info = _maintenance(target)
        if dashboard_url is not None:  # spec: absent or null keeps the previous dashboard_url
            record.dashboard_url = dashboard_url
        if metadata is not None:
            record.metadata = metadata.to_wire()
        record.state = "ready"
        _restate(record)
        await self.store.put_instance(record)

    # ------------------------------------------------------------------ deprovision

    async def deprovision(
        self,
        instance_id: str,
        service_id: str,
        plan_id: str,
        accepts_incomplete: bool,
        caller: Caller,
    ) -> Reply:
        """DELETE /v2/service_instances/:instance_id."""
        service, _ = self.catalog.lookup(service_id, plan_id)
        record = await self.store.get_instance(instance_id)
        if record is None:
            raise osb.Gone(f"instance {instance_id!r} does not exist")
        if record.service_id != service.id:
            raise osb.BadRequest(
                f"service_id: instance {instance_id!r} belongs to service {record.service_id!r}"
            )
        _, plan = self.catalog.recorded(record.service_id, record.plan_id)
        is_async = self._check_async(OperationKind.DEPROVISION, plan, accepts_incomplete)
        replay = await self._check_deletable(record)
        if replay is not None:
            return replay
        details = DeprovisionDetails(
            instance_id=instance_id,
            service=service,
            plan=plan,
            identity=caller.identity,
            request_id=caller.request_id,
        )
        previous_state = record.state
        if is_async:
            record.state = "deprovisioning"
            await self.store.put_instance(record)
            blob = {"previous_state": previous_state, **caller.to_blob()}
            job = self._deprovision_job(details, previous_state)
            return await self._start(OperationKind.DEPROVISION, instance_id, None, plan, blob, job)
        ctx = self._sync_context(OperationKind.DEPROVISION, instance_id)
        await self._timed(OperationKind.DEPROVISION, self.broker.deprovision(details, ctx))
        await self.store.delete_instance(instance_id)
        return Reply(200, _json(osb.DeprovisionResponse()))

    async def _check_deletable(self, record: InstanceRecord) -> Reply | None:
        if record.state in ("ready", "failed"):
            return None
        op = await self.store.latest_operation(record.instance_id)
        running = op is not None and op.state == "in progress"
        if (
            record.state == "deprovisioning"
            and running
            and op is not None
            and op.kind == "deprovision"
        ):
            return Reply(202, _json(osb.DeprovisionResponse(operation=op.operation_id)))
        if record.state == "provisioning" and not running and _abandoned(record.updated_at):
            return None  # an abandoned synchronous provision: clean it up
        raise osb.ConcurrencyError(
            f"another operation on instance {record.instance_id!r} is in progress"
        )

    def _deprovision_job(self, details: DeprovisionDetails, previous_state: str) -> Job:
        async def run(ctx: OperationContext) -> None:
            await self.broker.deprovision(details, ctx)
            await self.store.delete_instance(details.instance_id)

        async def fail() -> None:
            record = await self.store.get_instance(details.instance_id)
            if record is not None and record.state == "deprovisioning":
                record.state = "failed" if previous_state == "failed" else "ready"
                await self.store.put_instance(record)

        return Job(OperationKind.DEPROVISION, run, fail)

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
        self, existing: BindingRecord | None, wanted: BindingRecord
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
                return Reply(202, _json(osb.BindResponse(operation=op.operation_id)))
            if _abandoned(existing.updated_at):
                return None
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
        service, plan = self.catalog.lookup(service_id, plan_id)
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
        return Reply(200, _json(osb.UnbindResponse()))

    async def _check_unbindable(self, record: BindingRecord) -> Reply | None:
        if record.state in ("ready", "failed"):
            return None
        op = await self.store.latest_operation(record.instance_id, record.binding_id)
        running = op is not None and op.state == "in progress"
        if record.state == "unbinding" and running and op is not None and op.kind == "unbind":
            return Reply(202, _json(osb.UnbindResponse(operation=op.operation_id)))
        if record.state == "binding" and not running and _abandoned(record.updated_at):
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

    # ------------------------------------------------------------------ fetch

    async def fetch_instance(self, instance_id: str) -> Reply:
        """GET /v2/service_instances/:instance_id."""
        record = await self.store.get_instance(instance_id)
        if record is None or record.state in ("provisioning", "failed"):
            # spec: 404 if the instance does not exist or provisioning is still in progress.
            raise osb.NotFound(f"instance {instance_id!r} does not exist")
        if record.state == "updating":
            raise osb.ConcurrencyError(f"instance {instance_id!r} is being updated")
        service, plan = self.catalog.recorded(record.service_id, record.plan_id)
        details = FetchInstanceDetails(instance_id, service, plan, dict(record.parameters))
        ctx = self._sync_context(None, instance_id)
        found = await self.broker.fetch_instance(details, ctx)
        parameters = dict(record.parameters)
        dashboard_url, metadata = record.dashboard_url, record.metadata
        if found is not None:
            if found.parameters is not None:
                parameters = dict(found.parameters)
            dashboard_url = found.dashboard_url or dashboard_url
            metadata = found.metadata.to_wire() if found.metadata else metadata
        body = osb.FetchInstanceResponse(
            service_id=record.service_id,
            plan_id=record.plan_id,
            dashboard_url=dashboard_url,
            parameters=osb.redact(plan.instance_create_schema(), parameters),
            maintenance_info=(
                osb.MaintenanceInfo.model_validate(record.maintenance_info)
                if record.maintenance_info
                else None
            ),
            metadata=osb.InstanceMetadata.model_validate(metadata) if metadata else None,
        )
        return Reply(200, _json(body))

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
        body["parameters"] = osb.redact(plan.binding_create_schema(), dict(parameters))
        return Reply(200, osb.FetchBindingResponse.model_validate(body).to_json())

    # ------------------------------------------------------------------ last operation

    async def last_operation(
        self, instance_id: str, binding_id: str | None, operation_id: str | None
    ) -> Reply:
        """GET .../last_operation for an instance (binding_id None) or a binding."""
        if operation_id is not None:
            op = await self.store.get_operation(operation_id)
            if op is None or op.instance_id != instance_id or op.binding_id != binding_id:
                op = None
        else:
            op = await self.store.latest_operation(instance_id, binding_id)
        if op is None:
            return await self._no_operation(instance_id, binding_id)
        state, description = op.state, op.description
        if state == "in progress" and is_overdue(op, utcnow() - timedelta(seconds=5)):
            # spec "Polling Interval and Duration": past the deadline the operation is failed;
            # whoever holds it records that within moments, so say so already.
            state = "failed"
            description = "the operation did not finish within the plan's maximum_polling_duration"
        flags = state == "failed" and op.kind in ("update", "deprovision")
        body = osb.LastOperationResponse(
            state=osb.OperationState(state),
            description=description or None,
            instance_usable=op.instance_usable if flags else None,
            update_repeatable=op.update_repeatable if flags and op.kind == "update" else None,
        )
        headers = {"Retry-After": str(self.retry_after)} if state == "in progress" else None
        return Reply(200, _json(body), headers)

    async def _no_operation(self, instance_id: str, binding_id: str | None) -> Reply:
        if binding_id is None:
            instance = await self.store.get_instance(instance_id)
            exists = instance is not None and instance.state != "provisioning"
        else:
            binding = await self.store.get_binding(instance_id, binding_id)
            exists = binding is not None and binding.state != "binding"
        if not exists:
            what = "instance" if binding_id is None else "binding"
            raise osb.NotFound(f"no operation known for this {what}")
        # A synchronously created resource: its last operation succeeded.
        return Reply(200, _json(osb.LastOperationResponse(state=osb.OperationState.SUCCEEDED)))

    # ------------------------------------------------------------------ resume

    async def job_for(self, op: OperationRecord) -> Job:
        """Rebuild the job of a recorded operation so it can be resumed after a restart."""
        caller = Caller.from_blob(op.request)
        kind = OperationKind(op.kind)
        if kind is OperationKind.PROVISION:
            request = osb.ProvisionRequest.model_validate(op.request["request"])
            return self._provision_job(self._provision_details(op.instance_id, request, caller))
        instance = await self._instance_or_fail(op.instance_id)
        service, plan = self.catalog.recorded(instance.service_id, instance.plan_id)
        if kind is OperationKind.UPDATE:
            update = osb.UpdateRequest.model_validate(op.request["request"])
            return self._update_job(self._update_details(instance, update, caller), update)
        if kind is OperationKind.DEPROVISION:
            details = DeprovisionDetails(
                op.instance_id, service, plan, caller.identity, caller.request_id
            )
            return self._deprovision_job(details, str(op.request.get("previous_state", "ready")))
        if op.binding_id is None:
            raise ValueError(f"{kind.value} operation {op.operation_id} names no binding")
        if kind is OperationKind.BIND:
            bind = osb.BindRequest.model_validate(op.request["request"])
            return self._bind_job(self._bind_details(instance, op.binding_id, bind, caller))
        unbind = UnbindDetails(
            op.instance_id, op.binding_id, service, plan, caller.identity, caller.request_id
        )
        return self._unbind_job(unbind)

    # ------------------------------------------------------------------ shared

    def _check_async(self, kind: OperationKind, plan: osb.Plan, accepts_incomplete: bool) -> bool:
        is_async = self.broker.is_async(kind, plan)
        if is_async and not accepts_incomplete:
            raise osb.AsyncRequired(
                f"plan {plan.name!r} runs {kind.value} asynchronously: "
                "this request requires accepts_incomplete=true"
            )
        return is_async

    async def _start(
        self,
        kind: OperationKind,
        instance_id: str,
        binding_id: str | None,
        plan: osb.Plan,
        blob: dict[str, Any],
        job: Job,
    ) -> Reply:
        op = self.operations.new_record(
            kind, instance_id, binding_id, blob, plan.maximum_polling_duration
        )
        await self.store.create_operation(op)
        self.operations.spawn(op, job)
        # The 202 body carries only the operation: for binds, credentials MUST NOT appear here.
        return Reply(202, _json(osb.UnbindResponse(operation=op.operation_id)))

    async def _timed(self, kind: OperationKind, call: Awaitable[T]) -> T:
        """Run a synchronous author call, recording its duration and outcome."""
        started, state = time.perf_counter(), "failed"
        try:
            result = await call
            state = "succeeded"
            return result
        finally:
            elapsed = time.perf_counter() - started
            self.operations.metrics.observe_operation(kind.value, "sync", state, elapsed)

    def _sync_context(
        self, kind: OperationKind | None, instance_id: str, binding_id: str | None = None
    ) -> OperationContext:
        ids: dict[str, str] = {"instance_id": instance_id}
        if binding_id is not None:
            ids["binding_id"] = binding_id
        if kind is not None:
            ids["kind"] = kind.value
        return OperationContext(operation_id=None, is_async=False, logger=log, bind=ids)

    async def _instance_or_fail(self, instance_id: str) -> InstanceRecord:
        record = await self.store.get_instance(instance_id)
        if record is None:
            raise osb.InternalError(f"the record of instance {instance_id!r} disappeared")
        return record


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


def _instance_response(record: InstanceRecord) -> osb.ProvisionResponse:
    metadata = osb.InstanceMetadata.model_validate(record.metadata) if record.metadata else None
    return osb.ProvisionResponse(dashboard_url=record.dashboard_url, metadata=metadata)


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


def _instance_fingerprint(
    request: osb.ProvisionRequest, plan_id: str, parameters: Mapping[str, Any]
) -> str:
    """``<origin>:<state>``: who asked (immutable ids) and what the instance is now.

    spec "Provisioning": 409 when the instance exists "with different attributes" — compared
    with the instance as it is, so an update moves the state half (`_restate`).
    """
    origin = fingerprint(
        {
            "service_id": request.service_id,
            "organization_guid": request.organization_guid,
            "space_guid": request.space_guid,
        }
    )
    return f"{origin[:32]}:{_state_fingerprint(plan_id, parameters)}"


def _state_fingerprint(plan_id: str, parameters: Mapping[str, Any]) -> str:
    return fingerprint({"plan_id": plan_id, "parameters": dict(parameters)})[:32]


def _restate(record: InstanceRecord) -> None:
    """Recompute the state half of an instance's fingerprint after an update."""
    origin = record.request_fingerprint.partition(":")[0]
    record.request_fingerprint = f"{origin}:{_state_fingerprint(record.plan_id, record.parameters)}"


def _update_fingerprint(request: osb.UpdateRequest, target: osb.Plan) -> str:
    return fingerprint(
        {
            "plan_id": target.id,
            "parameters": request.parameters,
            "context": request.context,
            "maintenance_info": request.maintenance_info.version
            if request.maintenance_info
            else None,
        }
    )


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
