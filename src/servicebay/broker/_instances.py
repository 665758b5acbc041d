"""Service instances: provision, update, deprovision and fetch (spec sections of the same names).

Instance records move ``provisioning → ready → updating → ready → deprovisioning → (deleted)``,
or ``provisioning → failed`` when an asynchronous provision fails (a deprovision cleans it up).
A repeated provision is compared with the instance as it is now (`_instance_fingerprint`):
the same → 200 with the recorded body (202 with the running operation), different → 409.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from servicebay import osb
from servicebay.broker._author import (
    DeprovisionDetails,
    FetchInstanceDetails,
    OperationContext,
    OperationKind,
    ProvisionDetails,
    UpdateDetails,
)
from servicebay.broker._lifecycle_base import (
    TWIN_WAITS,
    Caller,
    LifecycleBase,
    Reply,
    abandoned,
    json_body,
    plan_maintenance,
)
from servicebay.broker._operations import Job
from servicebay.broker._store import InstanceRecord
from servicebay.broker._validation import (
    check_maintenance_info,
    fingerprint,
    parse_body,
    validated_parameters,
)

__all__ = ["Instances"]


class Instances(LifecycleBase):
    """Provision, update, deprovision and fetch of service instances."""

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
            maintenance_info=plan_maintenance(plan),
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
            record.dashboard_url = self.broker.dashboard_url(instance_id, service, plan)
            if record.dashboard_url is not None:
                await self.store.put_instance(record)
            blob = {"request": resolved.to_wire(), **caller.to_blob()}
            job = self._provision_job(details)
            return await self._start(
                OperationKind.PROVISION, instance_id, None, plan, blob, job, record.dashboard_url
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
        return Reply(201, json_body(response))

    async def _provision_again(
        self,
        existing: InstanceRecord | None,
        wanted: InstanceRecord,
        waits: tuple[float, ...] = TWIN_WAITS,
    ) -> Reply | None:
        """The answer to a provision for an id already recorded; None means "run it anew"."""
        if existing is None or existing.state == "failed":
            return None
        if existing.request_fingerprint != wanted.request_fingerprint:
            raise osb.Conflict(
                f"instance {wanted.instance_id!r} already exists with different attributes"
            )
        if existing.state in ("ready", "updating"):
            return Reply(200, json_body(_instance_response(existing)))
        if existing.state == "provisioning":
            op = await self.store.latest_operation(existing.instance_id)
            if op is not None and op.kind == "provision" and op.state == "in progress":
                body = osb.ProvisionResponse(
                    dashboard_url=existing.dashboard_url, operation=op.operation_id
                )
                return Reply(202, json_body(body))
            if abandoned(existing.updated_at, self.sync_abandoned_after):
                return None
            if waits:  # the twin may be between its record and its operation or result
                await asyncio.sleep(waits[0])
                current = await self.store.get_instance(existing.instance_id)
                return await self._provision_again(current, wanted, waits[1:])
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
            record.dashboard_url = result.dashboard_url or record.dashboard_url
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
            dashboard = self.broker.dashboard_url(instance_id, service, target)
            return await self._start(
                OperationKind.UPDATE, instance_id, None, current, blob, job, dashboard
            )
        ctx = self._sync_context(OperationKind.UPDATE, instance_id)
        result = await self._timed(OperationKind.UPDATE, self.broker.update(details, ctx))
        await self._apply_update(record, request, target, result.dashboard_url, result.metadata)
        response = osb.UpdateResponse(dashboard_url=result.dashboard_url, metadata=result.metadata)
        return Reply(200, json_body(response))

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
                return Reply(202, json_body(osb.UpdateResponse(operation=op.operation_id)))
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
            record.maintenance_info = plan_maintenance(target)
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
        record = await self.store.get_instance(instance_id)
        if record is None:
            raise osb.Gone(f"instance {instance_id!r} does not exist")
        if (service_id, plan_id) != (record.service_id, record.plan_id):
            # Ids other than the record's must at least be in the catalog (400 otherwise); the
            # record's own ids are accepted even after the catalog dropped them.
            self.catalog.lookup(service_id, plan_id)
        if record.service_id != service_id:
            raise osb.BadRequest(
                f"service_id: instance {instance_id!r} belongs to service {record.service_id!r}"
            )
        service, plan = self.catalog.recorded(record.service_id, record.plan_id)
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
        return Reply(200, json_body(osb.DeprovisionResponse()))

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
            return Reply(202, json_body(osb.DeprovisionResponse(operation=op.operation_id)))
        if (
            record.state == "provisioning"
            and not running
            and abandoned(record.updated_at, self.sync_abandoned_after)
        ):
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
            parameters=self._shown(record.service_id, plan, parameters, create=True),
            maintenance_info=(
                osb.MaintenanceInfo.model_validate(record.maintenance_info)
                if record.maintenance_info
                else None
            ),
            metadata=osb.InstanceMetadata.model_validate(metadata) if metadata else None,
        )
        return Reply(200, json_body(body))


def _instance_response(record: InstanceRecord) -> osb.ProvisionResponse:
    metadata = osb.InstanceMetadata.model_validate(record.metadata) if record.metadata else None
    return osb.ProvisionResponse(dashboard_url=record.dashboard_url, metadata=metadata)


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
