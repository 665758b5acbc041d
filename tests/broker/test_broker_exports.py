"""The public surface of servicebay.broker is pinned: changing it is a deliberate act."""

from __future__ import annotations

import servicebay.broker

EXPECTED = {
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
}


def test_public_names_are_pinned() -> None:
    """servicebay.broker.__all__ is exactly the documented API."""
    assert set(servicebay.broker.__all__) == EXPECTED


def test_every_public_name_is_importable_and_documented() -> None:
    """Each exported name exists and carries a docstring."""
    for name in servicebay.broker.__all__:
        member = getattr(servicebay.broker, name)
        assert member.__doc__, name
