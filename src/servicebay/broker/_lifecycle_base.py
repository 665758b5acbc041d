"""What every lifecycle operation shares: replies, callers, and how author calls are run.

`LifecycleBase` holds the broker, catalog, store and operations runner, and the few steps
every operation takes: the AsyncRequired check, starting a background `Job`, timing a
synchronous author call, the author's `OperationContext`. `Instances` (`_instances`) and
`Bindings` (`_bindings`) build on it; `Lifecycle` (`_lifecycle`) joins them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog

from servicebay import osb
from servicebay.broker._author import Broker, OperationContext, OperationKind
from servicebay.broker._operations import Job, Operations
from servicebay.broker._store import InstanceRecord, Store, utcnow
from servicebay.broker._validation import CatalogIndex

__all__ = [
    "SYNC_ABANDONED_AFTER",
    "Caller",
    "LifecycleBase",
    "Reply",
    "abandoned",
    "json_body",
    "plan_maintenance",
]

log = structlog.get_logger("servicebay.broker")


#: By default, a synchronous provision or bind still "in progress" after this many seconds was
#: abandoned (its process died mid-request; platforms give up on a request after about 60 s).
SYNC_ABANDONED_AFTER = 120.0

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


def json_body(model: osb.WireModel) -> bytes:
    """The encoded JSON body of a response model."""
    return model.to_json()


def plan_maintenance(plan: osb.Plan) -> dict[str, Any] | None:
    """The plan's maintenance_info as recorded for its instances."""
    return plan.maintenance_info.to_wire() if plan.maintenance_info else None


def abandoned(updated_at: datetime, after: float = SYNC_ABANDONED_AFTER) -> bool:
    """True when a synchronous provision or bind "in progress" was left by a dead process."""
    return utcnow() - updated_at > timedelta(seconds=after)


#: How long (seconds, in steps) a repeated provision or bind waits for its twin: between the
#: twin's provisional record and its operation record (or its result) there are two writes, and
#: another request, process or replica can read in between. A twin still busy after these waits
#: is a synchronous one at work: 422 ConcurrencyError, as the spec says.
TWIN_WAITS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


class LifecycleBase:
    """The broker, its catalog and records, and the steps every operation shares."""

    def __init__(
        self,
        broker: Broker,
        catalog: CatalogIndex,
        store: Store,
        operations: Operations,
        *,
        retry_after: int,
        sync_abandoned_after: float = SYNC_ABANDONED_AFTER,
    ) -> None:
        self.broker = broker
        self.sync_abandoned_after = sync_abandoned_after
        self.catalog = catalog
        self.store = store
        self.operations = operations
        self.retry_after = retry_after

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
        dashboard_url: str | None = None,
    ) -> Reply:
        op = self.operations.new_record(
            kind, instance_id, binding_id, blob, plan.maximum_polling_duration
        )
        await self.store.create_operation(op)
        self.operations.spawn(op, job)
        # The 202 body: the operation, and for instances the dashboard if known already (spec:
        # MUST come with the initial response). Never binding credentials (spec: MUST NOT).
        body = osb.ProvisionResponse(operation=op.operation_id, dashboard_url=dashboard_url)
        return Reply(202, json_body(body))

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

    def _shown(
        self, service_id: str, plan: osb.Plan, parameters: dict[str, Any], *, create: bool
    ) -> dict[str, Any] | None:
        """Parameters as a fetch may show them: sensitive values redacted by the plan's schema.

        Without the plan (dropped from the catalog) nothing says which values are sensitive,
        so none are shown (spec: brokers MAY omit parameters from a fetch).
        """
        if not self.catalog.knows(service_id, plan.id):
            return None
        if not create:
            return osb.redact(plan.binding_create_schema(), parameters)
        # An instance's parameters come from its provision and its updates: hide what either
        # schema marks sensitive.
        shown = osb.redact(plan.instance_create_schema(), parameters)
        return osb.redact(plan.instance_update_schema(), shown)

    async def _instance_or_fail(self, instance_id: str) -> InstanceRecord:
        record = await self.store.get_instance(instance_id)
        if record is None:
            raise osb.InternalError(f"the record of instance {instance_id!r} disappeared")
        return record
