"""The broker's durable memory: what it has provisioned, bound and is still doing.

The SDK's lifecycle (idempotency, async operations, resume after a restart) reads and writes three
kinds of record through the small async `Store` interface below; `open_store` picks the backend
from the database URL (SQLite file by default, PostgreSQL at scale, both in ``_sqlstore``).

Stored fields
-------------
``InstanceRecord`` — one row per service instance the broker has been asked to provision:

- ``instance_id``: the platform's id (path segment of ``/v2/service_instances/{id}``), primary key.
- ``service_id``, ``plan_id``: catalog ids the instance was provisioned (or last updated) with.
- ``state``: ``provisioning`` | ``ready`` | ``updating`` | ``deprovisioning`` | ``failed`` |
  ``deleted`` — where the instance is in its life, as the SDK last recorded it.
- ``request_fingerprint``: digest of the provision request, so a repeated request can be told from
  a different one for the same id (spec: identical → 200, different → 409).
- ``parameters``: the configuration parameters after defaults were applied. **Encrypted.**
- ``context``: the platform's context object (spec: profile.md), stored as sent.
- ``maintenance_info``: the plan's maintenance_info the instance runs, or None.
- ``dashboard_url``, ``metadata``: what the broker returned (metadata = labels/attributes).
- ``created_at``, ``updated_at``: UTC timestamps; the store sets ``updated_at`` on every write.

``BindingRecord`` — one row per binding, keyed by ``(instance_id, binding_id)``:

- ``state``: ``binding`` | ``ready`` | ``unbinding`` | ``failed`` | ``deleted``.
- ``request_fingerprint``: as for instances (a retried bind gets the very same response).
- ``parameters``: bind parameters after defaults. **Encrypted.**
- ``response``: the full bind response body, credentials included, replayed verbatim to a retried
  bind and to a binding fetch. **Encrypted.**
- ``created_at``, ``updated_at``.

``OperationRecord`` — one row per asynchronous operation (its id is the ``operation`` string the
platform polls with):

- ``operation_id`` (primary key), ``kind`` (an ``OperationKind`` value: provision, update,
  deprovision, bind, unbind), ``instance_id``, ``binding_id`` (None for instance operations).
- ``state``: ``in progress`` | ``succeeded`` | ``failed`` (spec: last_operation states);
  ``description``: the latest progress or failure text shown by last_operation;
  ``instance_usable``, ``update_repeatable``: the spec's flags for a failed update/deprovision.
- ``request``: whatever the worker needs to resume the operation after a restart. **Encrypted.**
- ``deadline``: when the operation must be given up (from the plan's maximum_polling_duration).
- ``owner``, ``heartbeat_at``: the lease. A broker process claims an operation before running it
  and renews ``heartbeat_at`` while it works; another process takes it over only once the
  heartbeat is older than ``stale_after`` seconds, so two processes never run one operation twice.
- ``created_at``, ``updated_at``.

**Encrypted** fields are JSON encrypted with AES-256-GCM (``_crypto``) before they reach the
database, so credentials never sit there in clear text. Record ``repr`` leaves them out, so
logging a record leaks nothing either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "BindingRecord",
    "BindingState",
    "InstanceRecord",
    "InstanceState",
    "OperationRecord",
    "OperationState",
    "Store",
    "StoreError",
    "open_store",
    "utcnow",
]

InstanceState = Literal["provisioning", "ready", "updating", "deprovisioning", "failed", "deleted"]
BindingState = Literal["binding", "ready", "unbinding", "failed", "deleted"]
OperationState = Literal["in progress", "succeeded", "failed"]


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (the only kind of time the store keeps)."""
    return datetime.now(UTC)


class StoreError(Exception):
    """The store cannot be opened or used (bad URL, wrong key, newer schema, ...)."""


@dataclass(slots=True)
class InstanceRecord:
    """A service instance as the broker recorded it (fields: see the module docstring)."""

    instance_id: str
    service_id: str
    plan_id: str
    state: InstanceState
    request_fingerprint: str
    parameters: dict[str, Any] = field(default_factory=dict, repr=False)
    context: dict[str, Any] = field(default_factory=dict)
    maintenance_info: dict[str, Any] | None = None
    dashboard_url: str | None = None
    metadata: dict[str, Any] | None = None
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)


@dataclass(slots=True)
class BindingRecord:
    """A binding as the broker recorded it, with the response it gave (see the module docstring)."""

    instance_id: str
    binding_id: str
    state: BindingState
    request_fingerprint: str
    parameters: dict[str, Any] = field(default_factory=dict, repr=False)
    response: dict[str, Any] = field(default_factory=dict, repr=False)
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)


@dataclass(slots=True)
class OperationRecord:
    """An asynchronous operation and its lease (fields: see the module docstring)."""

    operation_id: str
    kind: str
    instance_id: str
    binding_id: str | None = None
    state: OperationState = "in progress"
    description: str | None = None
    instance_usable: bool | None = None
    update_repeatable: bool | None = None
    request: dict[str, Any] = field(default_factory=dict, repr=False)
    deadline: datetime | None = None
    owner: str | None = None
    heartbeat_at: datetime | None = None
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)


@runtime_checkable
class Store(Protocol):
    """Durable records of instances, bindings and operations. Every method is a coroutine.

    ``create_*`` are atomic insert-if-absent: when two requests for one id race, exactly one
    gets True (the idempotency guard). ``put_*`` insert or replace. Getters return None for an
    unknown id.
    """

    async def open(self) -> None:
        """Connect, create missing tables and check the schema version (idempotent)."""

    async def close(self) -> None:
        """Release connections (idempotent)."""

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        """The instance record, or None."""

    async def put_instance(self, record: InstanceRecord) -> None:
        """Insert or replace the instance record."""

    async def create_instance(self, record: InstanceRecord) -> bool:
        """Insert the record; False (and nothing written) if the id already exists."""

    async def delete_instance(self, instance_id: str) -> None:
        """Forget the instance and its bindings (its operations stay, for last_operation)."""

    async def get_binding(self, instance_id: str, binding_id: str) -> BindingRecord | None:
        """The binding record, or None."""

    async def create_binding(self, record: BindingRecord) -> bool:
        """Insert the record; False (and nothing written) if the binding already exists."""

    async def put_binding(self, record: BindingRecord) -> None:
        """Insert or replace the binding record."""

    async def delete_binding(self, instance_id: str, binding_id: str) -> None:
        """Forget the binding."""

    async def list_bindings(self, instance_id: str) -> list[BindingRecord]:
        """The instance's bindings, oldest first."""

    async def create_operation(self, record: OperationRecord) -> None:
        """Insert a new operation (its id must be new)."""

    async def put_operation(self, record: OperationRecord) -> None:
        """Insert or replace the operation record."""

    async def get_operation(self, operation_id: str) -> OperationRecord | None:
        """The operation record, or None."""

    async def latest_operation(
        self, instance_id: str, binding_id: str | None = None
    ) -> OperationRecord | None:
        """The newest operation on the instance (binding_id None) or on that binding."""

    async def unfinished_operations(self) -> list[OperationRecord]:
        """Every operation still ``in progress``, oldest first (to resume after a restart)."""

    async def claim_operation(self, operation_id: str, owner: str, stale_after: float) -> bool:
        """Take the lease on an unfinished operation.

        True if ``owner`` now holds it: it was unowned, already ``owner``'s, or its holder's
        heartbeat is older than ``stale_after`` seconds. Atomic across processes.
        """

    async def heartbeat(self, operation_id: str, owner: str) -> bool:
        """Renew ``owner``'s lease; False if ``owner`` no longer holds it."""


def open_store(url: str, key: str | None = None) -> Store:
    """The store for a database URL: ``sqlite:///path`` (a file) or ``postgresql://...``.

    ``key`` is the Fernet key (or several, comma-separated: the first encrypts, all decrypt)
    protecting the encrypted fields. Without one, ``SERVICEBAY_BROKER_KEY`` is used, else for a
    SQLite file a key file ``servicebay-broker.key`` (mode 0600) next to the database is created
    or reused; PostgreSQL requires a key. The store is returned unopened: call ``open()``.
    """
    from servicebay.broker._sqlstore import open_sql_store

    return open_sql_store(url, key)
