"""The catalog: what a broker offers (spec "Catalog Management").

``GET /v2/catalog`` answers a ``Catalog`` of ``Service`` offerings, each with ``Plan``s. Plans
carry JSON schemas for their parameters, maintenance_info and polling limits. Validation here
enforces the spec's MUSTs on a catalog (non-empty ids, names and descriptions, at least one plan,
unique ids and names, semantic-version maintenance_info, valid parameter schemas) so a bad catalog
is refused where it is declared or received.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from servicebay.osb._errors import BadRequest
from servicebay.osb._metadata import PlanMetadata, ServiceMetadata, read_metadata
from servicebay.osb._parameters import check_schema
from servicebay.osb._wire import Bool, Id, Int, Str, WireModel

__all__ = [
    "Catalog",
    "DashboardClient",
    "InputParameters",
    "MaintenanceInfo",
    "Plan",
    "Schemas",
    "Service",
    "ServiceBindingSchemas",
    "ServiceInstanceSchemas",
]

# Semantic Versioning 2.0.0 (semver.org), as the spec requires for maintenance_info.version.
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)


class MaintenanceInfo(WireModel):
    """Maintenance Info: the version (semver) of what an instance of the plan runs.

    ``version`` is optional here because requests may carry an empty ``{}``; the catalog
    requires it (see ``Plan``).
    """

    version: Str | None = None
    description: Str | None = None


class DashboardClient(WireModel):
    """Dashboard Client (profile "Catalog Extensions"): the dashboard's OAuth client."""

    id: Id
    secret: Id
    redirect_uri: Str | None = None


class InputParameters(WireModel):
    """Input Parameters Schema Object: a JSON schema for the parameters."""

    parameters: dict[str, Any] | None = None

    @field_validator("parameters")
    @classmethod
    def _schema_is_valid(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            try:
                check_schema(schema)
            except BadRequest as exc:
                raise ValueError(exc.description) from None
        return schema


class ServiceInstanceSchemas(WireModel):
    """Schemas for creating and updating a service instance."""

    create: InputParameters | None = None
    update: InputParameters | None = None


class ServiceBindingSchemas(WireModel):
    """Schema for creating a service binding."""

    create: InputParameters | None = None


class Schemas(WireModel):
    """Schemas Object of a plan."""

    service_instance: ServiceInstanceSchemas | None = None
    service_binding: ServiceBindingSchemas | None = None


class Plan(WireModel):
    """Service Plan Object."""

    id: Id
    name: Id
    description: Id
    metadata: dict[str, Any] | None = None
    free: Bool | None = None
    bindable: Bool | None = None
    binding_rotatable: Bool | None = None
    plan_updateable: Bool | None = None
    schemas: Schemas | None = None
    maximum_polling_duration: Int | None = Field(default=None, ge=1)
    maintenance_info: MaintenanceInfo | None = None

    @field_validator("maintenance_info")
    @classmethod
    def _version_is_semver(cls, info: MaintenanceInfo | None) -> MaintenanceInfo | None:
        # spec: "If provided, a version string MUST be provided" and it MUST be semver 2.0.
        if info is not None:
            if info.version is None:
                raise ValueError("version is required")
            if not _SEMVER.match(info.version):
                raise ValueError(f"version must be a semantic version 2.0 ({info.version!r})")
        return info

    def effective_bindable(self, service: Service) -> bool:
        """Whether instances of this plan can be bound: the plan's flag, else the service's."""
        return self.bindable if self.bindable is not None else service.bindable

    def effective_updateable(self, service: Service) -> bool:
        """Whether the plan may be changed: the plan's flag, else the service's, else false."""
        if self.plan_updateable is not None:
            return self.plan_updateable
        return bool(service.plan_updateable)

    def display_metadata(self) -> PlanMetadata | None:
        """``metadata`` read by the profile's conventions (bullets, costs, displayName)."""
        return read_metadata(PlanMetadata, self.metadata)

    @property
    def is_free(self) -> bool:
        """Whether the plan is free; the spec's default is true."""
        return self.free is not False

    def instance_create_schema(self) -> dict[str, Any] | None:
        """The JSON schema for provision parameters, if the plan declares one."""
        si = self.schemas.service_instance if self.schemas else None
        return si.create.parameters if si and si.create else None

    def instance_update_schema(self) -> dict[str, Any] | None:
        """The JSON schema for update parameters, if the plan declares one."""
        si = self.schemas.service_instance if self.schemas else None
        return si.update.parameters if si and si.update else None

    def binding_create_schema(self) -> dict[str, Any] | None:
        """The JSON schema for bind parameters, if the plan declares one."""
        sb = self.schemas.service_binding if self.schemas else None
        return sb.create.parameters if sb and sb.create else None


class Service(WireModel):
    """Service Offering Object."""

    name: Id
    id: Id
    description: Id
    tags: list[Str] | None = None
    requires: list[Str] | None = None
    bindable: Bool
    instances_retrievable: Bool | None = None
    bindings_retrievable: Bool | None = None
    allow_context_updates: Bool | None = None
    metadata: dict[str, Any] | None = None
    dashboard_client: DashboardClient | None = None
    plan_updateable: Bool | None = None
    plans: list[Plan] = Field(min_length=1)

    @model_validator(mode="after")
    def _plans_are_unique(self) -> Service:
        _unique("plan id", [p.id for p in self.plans])
        _unique("plan name", [p.name for p in self.plans])
        return self

    def display_metadata(self) -> ServiceMetadata | None:
        """``metadata`` read by the profile's conventions (displayName, imageUrl, ...)."""
        return read_metadata(ServiceMetadata, self.metadata)

    def find_plan(self, plan_id: str) -> Plan | None:
        """The plan with this id, or None."""
        return next((p for p in self.plans if p.id == plan_id), None)

    def find_plan_by_name(self, name: str) -> Plan | None:
        """The plan with this name (names are case-sensitive), or None."""
        return next((p for p in self.plans if p.name == name), None)


class Catalog(WireModel):
    """The catalog body: every service offering of a broker (MAY be empty)."""

    services: list[Service]

    @model_validator(mode="after")
    def _ids_are_unique(self) -> Catalog:
        _unique("service id", [s.id for s in self.services])
        _unique("service name", [s.name for s in self.services])
        _unique("plan id", [p.id for s in self.services for p in s.plans])
        return self

    def find_service(self, service_id: str) -> Service | None:
        """The service offering with this id, or None."""
        return next((s for s in self.services if s.id == service_id), None)

    def find_service_by_name(self, name: str) -> Service | None:
        """The service offering with this name (case-sensitive), or None."""
        return next((s for s in self.services if s.name == name), None)


def _unique(what: str, values: list[str]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"duplicate {what} {value!r}")
        seen.add(value)
