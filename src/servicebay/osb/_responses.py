"""Bodies a broker sends back: provision, update, deprovision, bind, unbind, fetch,
last_operation (spec sections "Response" of each endpoint).

Optional fields stay ``None`` when absent so that ``to_wire()`` writes back exactly what was
meant; a 200 update answers ``{}``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from servicebay.osb._catalog import MaintenanceInfo
from servicebay.osb._wire import Bool, Id, Str, WireModel

__all__ = [
    "BindResponse",
    "BindingMetadata",
    "DeprovisionResponse",
    "Endpoint",
    "FetchBindingResponse",
    "FetchInstanceResponse",
    "InstanceMetadata",
    "LastOperationResponse",
    "OperationState",
    "ProvisionResponse",
    "UnbindResponse",
    "UpdateResponse",
    "VolumeDevice",
    "VolumeMount",
]

# spec: "operation ... MUST NOT contain more than 10,000 characters".
_MAX_OPERATION = 10_000
# spec: Endpoint.ports, "either a single port (for example "443") or a port range".
_PORT = re.compile(r"^\d{1,5}(-\d{1,5})?$")


class OperationState(StrEnum):
    """The state of an asynchronous operation as reported by ``last_operation``."""

    IN_PROGRESS = "in progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        """True for ``succeeded`` and ``failed``: the platform stops polling."""
        return self is not OperationState.IN_PROGRESS


class InstanceMetadata(WireModel):
    """Service Instance Metadata: broker-specified labels and attributes."""

    labels: dict[str, Any] | None = None
    attributes: dict[str, Any] | None = None


class ProvisionResponse(WireModel):
    """Body of 200/201/202 to ``PUT /v2/service_instances/:instance_id``."""

    dashboard_url: Str | None = None
    operation: Str | None = Field(default=None, max_length=_MAX_OPERATION)
    metadata: InstanceMetadata | None = None


class UpdateResponse(WireModel):
    """Body of 200/202 to ``PATCH /v2/service_instances/:instance_id``."""

    dashboard_url: Str | None = None
    operation: Str | None = Field(default=None, max_length=_MAX_OPERATION)
    metadata: InstanceMetadata | None = None


class DeprovisionResponse(WireModel):
    """Body of 200/202 to ``DELETE /v2/service_instances/:instance_id``."""

    operation: Str | None = Field(default=None, max_length=_MAX_OPERATION)


class FetchInstanceResponse(WireModel):
    """Body of 200 to ``GET /v2/service_instances/:instance_id``."""

    service_id: Str | None = None
    plan_id: Str | None = None
    dashboard_url: Str | None = None
    parameters: dict[str, Any] | None = None
    maintenance_info: MaintenanceInfo | None = None
    metadata: InstanceMetadata | None = None


class BindingMetadata(WireModel):
    """Binding Metadata: when the binding expires and when it should be renewed.

    Both are ISO 8601 timestamps of the form ``yyyy-mm-ddThh:mm:ss.sZ``.
    """

    expires_at: Str | None = None
    renew_before: Str | None = None

    @field_validator("expires_at", "renew_before")
    @classmethod
    def _is_iso_8601(cls, value: str | None) -> str | None:
        if value is not None:
            _timestamp(value)
        return value

    @model_validator(mode="after")
    def _renew_before_expiry(self) -> BindingMetadata:
        # spec: renew_before "MUST be before or equal to the expires_at timestamp".
        late = (
            self.expires_at is not None
            and self.renew_before is not None
            and _timestamp(self.renew_before) > _timestamp(self.expires_at)
        )
        if late:
            raise ValueError("renew_before must not be later than expires_at")
        return self

    @property
    def expires_at_datetime(self) -> datetime | None:
        """``expires_at`` as an aware datetime (UTC when the text says ``Z``)."""
        return _timestamp(self.expires_at) if self.expires_at else None

    @property
    def renew_before_datetime(self) -> datetime | None:
        """``renew_before`` as an aware datetime."""
        return _timestamp(self.renew_before) if self.renew_before else None


def _timestamp(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"must be an ISO 8601 timestamp like 2019-12-31T23:59:59.0Z ({text!r})"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class VolumeDevice(WireModel):
    """Device Object of a shared volume mount."""

    volume_id: Id
    mount_config: dict[str, Any] | None = None


class VolumeMount(WireModel):
    """Volume Mount Object: a remote storage device to mount into the app container."""

    driver: Id
    container_dir: Id
    mode: Literal["r", "rw"]
    device_type: Id
    device: VolumeDevice


class Endpoint(WireModel):
    """Endpoint Object: a network endpoint the application connects to."""

    host: Id
    ports: list[Str] = Field(min_length=1)
    protocol: Literal["tcp", "udp", "all"] | None = None

    @field_validator("ports")
    @classmethod
    def _ports_are_ports_or_ranges(cls, ports: list[str]) -> list[str]:
        for port in ports:
            if not _PORT.match(port):
                raise ValueError(
                    f"must be a port like '443' or a range like '9000-9010' ({port!r})"
                )
        return ports


class _BindingBody(WireModel):
    metadata: BindingMetadata | None = None
    credentials: dict[str, Any] | None = None
    syslog_drain_url: Str | None = None
    route_service_url: Str | None = None
    volume_mounts: list[VolumeMount] | None = None
    endpoints: list[Endpoint] | None = None


class BindResponse(_BindingBody):
    """Body of 200/201 (binding details) or 202 (``operation`` only) to a bind request."""

    operation: Str | None = Field(default=None, max_length=_MAX_OPERATION)


class FetchBindingResponse(_BindingBody):
    """Body of 200 to ``GET /v2/service_instances/:instance_id/service_bindings/:binding_id``."""

    parameters: dict[str, Any] | None = None


class UnbindResponse(WireModel):
    """Body of 200/202 to an unbind request."""

    operation: Str | None = Field(default=None, max_length=_MAX_OPERATION)


class LastOperationResponse(WireModel):
    """Body of 200 to ``GET .../last_operation`` for instances and bindings."""

    state: OperationState
    description: Str | None = None
    instance_usable: Bool | None = None
    update_repeatable: Bool | None = None
