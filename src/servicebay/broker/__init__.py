"""servicebay.broker — write an Open Service Broker in one small class.

Subclass `Broker`, declare its `catalog`, implement the operations as async methods, and
`create_app(broker)` gives an ASGI app that implements the OSB v2.17 broker side: routing,
basic/bearer auth, the version header, originating identity, validation against the catalog
and the plans' JSON schemas, idempotency from durable records, asynchronous operations with
`last_operation` that survive a restart, instance and binding fetch, binding rotation,
Prometheus metrics and a health check. `bay broker serve MODULE:ATTR` serves it.

Author methods must be idempotent: an interrupted asynchronous operation is re-run after a
restart (or reported failed when `Broker.resumable` is False).
"""

from servicebay.broker._app import create_app
from servicebay.broker._author import (
    BindDetails,
    BindResult,
    Broker,
    DeprovisionDetails,
    FetchBindingDetails,
    FetchBindingResult,
    FetchInstanceDetails,
    FetchInstanceResult,
    OperationContext,
    OperationFailed,
    OperationKind,
    ProvisionDetails,
    ProvisionResult,
    UnbindDetails,
    UpdateDetails,
    UpdateResult,
)
from servicebay.broker._settings import BrokerSettings, SettingsError
from servicebay.broker._store import (
    BindingRecord,
    InstanceRecord,
    OperationRecord,
    Store,
    StoreError,
    open_store,
)

__all__ = [
    "BindDetails",
    "BindResult",
    "BindingRecord",
    "Broker",
    "BrokerSettings",
    "DeprovisionDetails",
    "FetchBindingDetails",
    "FetchBindingResult",
    "FetchInstanceDetails",
    "FetchInstanceResult",
    "InstanceRecord",
    "OperationContext",
    "OperationFailed",
    "OperationKind",
    "OperationRecord",
    "ProvisionDetails",
    "ProvisionResult",
    "SettingsError",
    "Store",
    "StoreError",
    "UnbindDetails",
    "UpdateDetails",
    "UpdateResult",
    "create_app",
    "open_store",
]
