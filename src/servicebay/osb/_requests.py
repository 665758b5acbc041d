"""Bodies a platform sends: provision, update and bind (spec "Request" of each endpoint).

Required ids (``service_id``, ``plan_id``) must be present and non-empty; optional ids, if
present, must be non-empty too. Deprovision and unbind carry no body: their ids travel in the
query string (see ``DeleteQuery``).
"""

from __future__ import annotations

from typing import Any

from servicebay.osb._catalog import MaintenanceInfo
from servicebay.osb._wire import Id, OptionalId, Str, WireModel

__all__ = [
    "BindRequest",
    "BindResource",
    "DeleteQuery",
    "PreviousValues",
    "ProvisionRequest",
    "UpdateRequest",
]


class ProvisionRequest(WireModel):
    """Body of ``PUT /v2/service_instances/:instance_id``."""

    service_id: Id
    plan_id: Id
    context: dict[str, Any] | None = None
    # Deprecated in favour of context, so tolerated when absent; non-empty when present.
    organization_guid: OptionalId = None
    space_guid: OptionalId = None
    parameters: dict[str, Any] | None = None
    maintenance_info: MaintenanceInfo | None = None


class PreviousValues(WireModel):
    """Previous Values Object: the instance as it was before the update."""

    service_id: Str | None = None
    plan_id: Str | None = None
    organization_id: Str | None = None
    space_id: Str | None = None
    maintenance_info: MaintenanceInfo | None = None


class UpdateRequest(WireModel):
    """Body of ``PATCH /v2/service_instances/:instance_id``.

    A missing ``plan_id`` means "keep the plan"; missing ``parameters`` means "keep them".
    """

    service_id: Id
    plan_id: OptionalId = None
    context: dict[str, Any] | None = None
    parameters: dict[str, Any] | None = None
    previous_values: PreviousValues | None = None
    maintenance_info: MaintenanceInfo | None = None


class BindResource(WireModel):
    """Bind Resource Object: the platform resource the binding is for.

    ``app_guid`` for credentials bindings, ``route`` for route services; the Cloud Foundry
    profile adds ``space_guid``, ``app_annotations`` and ``credential_client_id``.
    """

    app_guid: OptionalId = None
    route: OptionalId = None
    space_guid: OptionalId = None
    app_annotations: dict[str, Any] | None = None
    credential_client_id: OptionalId = None


class BindRequest(WireModel):
    """Body of ``PUT /v2/service_instances/:instance_id/service_bindings/:binding_id``.

    With ``predecessor_binding_id`` it asks for a rotation of that binding (spec "Binding
    Rotation").
    """

    service_id: Id
    plan_id: Id
    context: dict[str, Any] | None = None
    app_guid: OptionalId = None
    bind_resource: BindResource | None = None
    parameters: dict[str, Any] | None = None
    predecessor_binding_id: OptionalId = None

    @property
    def effective_app_guid(self) -> str | None:
        """The app the binding is for: ``bind_resource.app_guid``, else the deprecated field."""
        if self.bind_resource is not None and self.bind_resource.app_guid is not None:
            return self.bind_resource.app_guid
        return self.app_guid


class DeleteQuery(WireModel):
    """Query string of deprovision and unbind: both ids are REQUIRED and non-empty."""

    service_id: Id
    plan_id: Id
