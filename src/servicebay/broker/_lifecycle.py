"""The lifecycle of instances and bindings: idempotency, states, sync or async execution.

Each mutating request arrives validated in shape (`_endpoints`) and leaves as a `Reply`. In
between, the lifecycle checks it against the catalog and the durable records, decides between
"do it", "the same again" and "something else", and runs the author's method either inline
(sync) or as a background `Job` (async, see `_operations`). `Lifecycle` joins the instance
operations (`_instances`) and the binding operations (`_bindings`), and adds what spans both:
`last_operation` and rebuilding the job of a recorded operation after a restart.

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

from datetime import timedelta

from servicebay import osb
from servicebay.broker._author import DeprovisionDetails, OperationKind, UnbindDetails
from servicebay.broker._bindings import Bindings
from servicebay.broker._instances import Instances
from servicebay.broker._lifecycle_base import Caller, Reply, json_body
from servicebay.broker._operations import Job, is_overdue
from servicebay.broker._store import InstanceRecord, OperationRecord, utcnow

__all__ = ["Caller", "Lifecycle", "Reply"]


class Lifecycle(Instances, Bindings):
    """Executes OSB operations against the author, the catalog and the store."""

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
            return await self._no_operation(instance_id, binding_id, operation_id)
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
        return Reply(200, json_body(body), headers)

    async def _no_operation(
        self, instance_id: str, binding_id: str | None, operation_id: str | None
    ) -> Reply:
        if binding_id is None:
            instance = await self.store.get_instance(instance_id)
            exists = instance is not None and instance.state != "provisioning"
        else:
            binding = await self.store.get_binding(instance_id, binding_id)
            exists = binding is not None and binding.state != "binding"
        what = "instance" if binding_id is None else "binding"
        if not exists:
            raise osb.NotFound(f"no operation known for this {what}")
        if operation_id is not None:
            # Operations are never forgotten, so an id we do not know was never ours.
            raise osb.BadRequest(f"operation: {operation_id!r} is not an operation of this {what}")
        # A synchronously created resource: its last operation succeeded.
        return Reply(200, json_body(osb.LastOperationResponse(state=osb.OperationState.SUCCEEDED)))

    # ------------------------------------------------------------------ resume

    async def job_for(self, op: OperationRecord) -> Job:
        """Rebuild the job of a recorded operation so it can be resumed after a restart."""
        kind = OperationKind(op.kind)
        instance = await self.store.get_instance(op.instance_id)
        if await self._done_before_crash(kind, op, instance):
            return Job(kind, _already_done, _already_done)
        caller = Caller.from_blob(op.request)
        if kind is OperationKind.PROVISION:
            request = osb.ProvisionRequest.model_validate(op.request["request"])
            return self._provision_job(self._provision_details(op.instance_id, request, caller))
        if instance is None:
            raise osb.InternalError(f"the record of instance {op.instance_id!r} disappeared")
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

    async def _done_before_crash(
        self, kind: OperationKind, op: OperationRecord, instance: InstanceRecord | None
    ) -> bool:
        """True when the records show the operation's effect: its process died after writing
        them, before marking the operation succeeded. Failures write other states ("failed",
        back to "ready"), so only unambiguous outcomes count; anything else is re-run."""
        binding = None
        if op.binding_id is not None and instance is not None:
            binding = await self.store.get_binding(op.instance_id, op.binding_id)
        if kind is OperationKind.PROVISION:
            return instance is not None and instance.state == "ready"
        if kind is OperationKind.BIND:
            return binding is not None and binding.state == "ready"
        if kind is OperationKind.DEPROVISION:
            return instance is None
        if kind is OperationKind.UNBIND:
            return binding is None
        return False


async def _already_done(*_: object) -> None:
    """The run (or failure) of an operation whose effect is already recorded."""
