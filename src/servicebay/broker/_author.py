"""The author's side of the SDK: the `Broker` class to subclass, and what flows in and out of it.

An author writes behaviour only: one async method per OSB operation, typed details in, a typed
result out. Everything around it — routing, auth, validation, idempotency, async operations,
durable records — belongs to the SDK (`create_app`). The author signals failure by raising an
`osb` error (`BadRequest`, `Conflict`, `UnprocessableEntity`, ...) or `OperationFailed`.

Author methods must be idempotent: after a crash or restart the SDK re-runs an unfinished
asynchronous operation from the start (see `Broker.resumable`), so calling `provision` twice
for the same instance id must converge on one service instance, not two.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from servicebay import osb

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

__all__ = [
    "BindDetails",
    "BindResult",
    "Broker",
    "DeprovisionDetails",
    "FetchBindingDetails",
    "FetchBindingResult",
    "FetchInstanceDetails",
    "FetchInstanceResult",
    "OperationContext",
    "OperationFailed",
    "OperationKind",
    "ProvisionDetails",
    "ProvisionResult",
    "UnbindDetails",
    "UpdateDetails",
    "UpdateResult",
]


class OperationKind(enum.StrEnum):
    """The five mutating OSB operations; `Broker.is_async` is asked about each."""

    PROVISION = "provision"
    UPDATE = "update"
    DEPROVISION = "deprovision"
    BIND = "bind"
    UNBIND = "unbind"

    @property
    def on_binding(self) -> bool:
        """True for bind and unbind: the operation belongs to a binding, not an instance."""
        return self in (OperationKind.BIND, OperationKind.UNBIND)


class OperationFailed(osb.InternalError):
    """Raised by an author method to fail the operation with a user-facing description.

    A synchronous operation answers 500 with that description; an asynchronous one ends with
    `last_operation` state `failed` and the description. `instance_usable` and
    `update_repeatable` are reported for failed updates and deprovisions only (spec "Service
    Broker Errors").
    """


# --- details: what the SDK hands the author (validated, with catalog objects resolved) ---


@dataclass(frozen=True, slots=True)
class ProvisionDetails:
    """A validated provision request: parameters have the schema's defaults applied."""

    instance_id: str
    service: osb.Service
    plan: osb.Plan
    parameters: Mapping[str, Any]
    context: Mapping[str, Any]
    maintenance_info: osb.MaintenanceInfo | None = None
    organization_guid: str | None = None
    space_guid: str | None = None
    identity: osb.OriginatingIdentity | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class UpdateDetails:
    """A validated update; `parameters` holds only what the user sent this time.

    `plan` is the target plan (the current one if unchanged); `previous_plan` is set only when
    the plan changes. `previous_parameters` are the instance's parameters from the SDK records.
    """

    instance_id: str
    service: osb.Service
    plan: osb.Plan
    previous_plan: osb.Plan | None
    parameters: Mapping[str, Any]
    previous_parameters: Mapping[str, Any]
    context: Mapping[str, Any]
    maintenance_info: osb.MaintenanceInfo | None = None
    identity: osb.OriginatingIdentity | None = None
    request_id: str | None = None

    @property
    def plan_changed(self) -> bool:
        """True when the update moves the instance to another plan."""
        return self.previous_plan is not None and self.previous_plan.id != self.plan.id


@dataclass(frozen=True, slots=True)
class DeprovisionDetails:
    """A deprovision request for an instance the SDK knows."""

    instance_id: str
    service: osb.Service
    plan: osb.Plan
    identity: osb.OriginatingIdentity | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class BindDetails:
    """A validated bind (or rotation, when `predecessor_binding_id` is set) request."""

    instance_id: str
    binding_id: str
    service: osb.Service
    plan: osb.Plan
    parameters: Mapping[str, Any]
    context: Mapping[str, Any]
    app_guid: str | None = None
    bind_resource: osb.BindResource | None = None
    predecessor_binding_id: str | None = None
    instance_parameters: Mapping[str, Any] = field(default_factory=dict)
    identity: osb.OriginatingIdentity | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class UnbindDetails:
    """An unbind request for a binding the SDK knows."""

    instance_id: str
    binding_id: str
    service: osb.Service
    plan: osb.Plan
    identity: osb.OriginatingIdentity | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class FetchInstanceDetails:
    """A fetch of a ready instance; `parameters` are the SDK's recorded ones."""

    instance_id: str
    service: osb.Service
    plan: osb.Plan
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FetchBindingDetails:
    """A fetch of a ready binding; `parameters` are the SDK's recorded ones."""

    instance_id: str
    binding_id: str
    service: osb.Service
    plan: osb.Plan
    parameters: Mapping[str, Any] = field(default_factory=dict)


# --- results: what the author hands back ---


@dataclass(frozen=True, slots=True)
class ProvisionResult:
    """Outcome of a provision: an optional dashboard and instance metadata."""

    dashboard_url: str | None = None
    metadata: osb.InstanceMetadata | None = None


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """Outcome of an update; a `None` dashboard_url keeps the previous one (spec)."""

    dashboard_url: str | None = None
    metadata: osb.InstanceMetadata | None = None


@dataclass(frozen=True, slots=True)
class BindResult:
    """Outcome of a bind: the binding's credentials and the other binding kinds."""

    credentials: Mapping[str, Any] | None = None
    syslog_drain_url: str | None = None
    route_service_url: str | None = None
    volume_mounts: list[osb.VolumeMount] | None = None
    endpoints: list[osb.Endpoint] | None = None
    metadata: osb.BindingMetadata | None = None


@dataclass(frozen=True, slots=True)
class FetchInstanceResult:
    """What the author reports for a fetched instance (overrides the SDK's records)."""

    parameters: Mapping[str, Any] | None = None
    dashboard_url: str | None = None
    metadata: osb.InstanceMetadata | None = None


@dataclass(frozen=True, slots=True)
class FetchBindingResult:
    """What the author reports for a fetched binding (overrides the SDK's records)."""

    credentials: Mapping[str, Any] | None = None
    parameters: Mapping[str, Any] | None = None
    syslog_drain_url: str | None = None
    route_service_url: str | None = None
    volume_mounts: list[osb.VolumeMount] | None = None
    endpoints: list[osb.Endpoint] | None = None
    metadata: osb.BindingMetadata | None = None


#: Where `OperationContext.progress` reports go: records the description durably.
ProgressSink = Callable[[str], Awaitable[None]]


class OperationContext:
    """Handed to every author method: which operation runs, and a way to report progress.

    `progress()` is durably recorded and shown by `last_operation` while an asynchronous
    operation runs; for a synchronous one it is only logged.
    """

    __slots__ = ("_bind", "_logger", "_report", "is_async", "operation_id")

    def __init__(
        self,
        *,
        operation_id: str | None,
        is_async: bool,
        logger: FilteringBoundLogger,
        report: ProgressSink | None = None,
        bind: Mapping[str, Any] | None = None,
    ) -> None:
        self.operation_id = operation_id
        self.is_async = is_async
        self._logger = logger
        self._bind = bind
        self._report = report

    @property
    def logger(self) -> FilteringBoundLogger:
        """A structlog logger bound to this operation's ids (never to secrets)."""
        if self._bind is not None:
            # Bound on first use: most operations never log, and binding costs on every request.
            self._logger, self._bind = self._logger.bind(**self._bind), None
        return self._logger

    async def progress(self, description: str) -> None:
        """Record a user-facing progress message, e.g. ``"creating vhost (50%)"``."""
        self.logger.info("operation progress", progress=description)
        if self._report is not None:
            await self._report(description)


class Broker:
    """Subclass me: declare `catalog`, implement the operations your service offers.

    Example::

        class Greetings(Broker):
            catalog = osb.Catalog(services=[...])

            async def provision(self, details, ctx):
                return ProvisionResult()

            async def bind(self, details, ctx):
                return BindResult(credentials={"greeting": "hello"})

    The SDK reads `catalog` once, when the app is created. Every method may raise an `osb`
    error or `OperationFailed`; anything else is reported as an internal error. Methods must be
    idempotent (see the module docstring): an interrupted asynchronous operation is re-run
    after a restart unless `resumable` is False, in which case it is reported failed.
    """

    catalog: osb.Catalog
    #: Re-run unfinished asynchronous operations after a restart (False: mark them failed).
    resumable: ClassVar[bool] = True

    def is_async(self, operation: OperationKind, plan: osb.Plan) -> bool:
        """Whether `operation` on `plan` runs in the background (needs accepts_incomplete)."""
        return False

    def requires_app(self, service: osb.Service, plan: osb.Plan) -> bool:
        """Whether binds on `plan` must name an app (422 RequiresApp otherwise)."""
        return False

    def dashboard_url(self, instance_id: str, service: osb.Service, plan: osb.Plan) -> str | None:
        """The instance's dashboard, known before asynchronous work ends (default: none).

        spec "Provisioning" / "Updating": a dashboard_url MUST come with the initial response
        even when the operation runs asynchronously, so the SDK asks here for the 202 answer.
        Synchronous operations use the result's dashboard_url instead.
        """
        return None

    async def provision(self, details: ProvisionDetails, ctx: OperationContext) -> ProvisionResult:
        """Create the service instance."""
        raise NotImplementedError(f"{type(self).__name__} does not implement provision")

    async def update(self, details: UpdateDetails, ctx: OperationContext) -> UpdateResult:
        """Change plan, parameters, context or maintenance version; by default accepts it."""
        return UpdateResult()

    async def deprovision(self, details: DeprovisionDetails, ctx: OperationContext) -> None:
        """Delete the service instance and everything it owns."""
        raise NotImplementedError(f"{type(self).__name__} does not implement deprovision")

    async def bind(self, details: BindDetails, ctx: OperationContext) -> BindResult:
        """Create a binding (usually: credentials of its own)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement bind")

    async def unbind(self, details: UnbindDetails, ctx: OperationContext) -> None:
        """Delete a binding, revoking its credentials at the source."""
        raise NotImplementedError(f"{type(self).__name__} does not implement unbind")

    async def fetch_instance(
        self, details: FetchInstanceDetails, ctx: OperationContext
    ) -> FetchInstanceResult | None:
        """Describe a ready instance; None lets the SDK answer from its records."""
        return None

    async def fetch_binding(
        self, details: FetchBindingDetails, ctx: OperationContext
    ) -> FetchBindingResult | None:
        """Describe a ready binding; None lets the SDK answer from its records."""
        return None

    async def startup(self) -> None:
        """Called once when the app starts, after the store is open."""

    async def shutdown(self) -> None:
        """Called once when the app stops, after in-flight operations were settled."""
