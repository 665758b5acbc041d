"""What a successful call returns: the status, the typed body, and the request identity.

A 202 means the work goes on at the broker; poll ``last_operation`` with ``operation``.
A 200 to provision or bind means the resource already existed with identical attributes.
A 410 to deprovision or unbind means the broker no longer has the resource — which the platform
treats as deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from servicebay.osb import (
    BindResponse,
    DeprovisionResponse,
    LastOperationResponse,
    ProvisionResponse,
    UnbindResponse,
    UpdateResponse,
    WireModel,
)

__all__ = [
    "BindOutcome",
    "DeprovisionOutcome",
    "LastOperation",
    "Outcome",
    "ProvisionOutcome",
    "UnbindOutcome",
    "UpdateOutcome",
]

B = TypeVar("B", bound=WireModel)


@dataclass(frozen=True)
class Outcome(Generic[B]):
    """A call the broker accepted: HTTP status, parsed body and the request identity sent."""

    status: int
    body: B
    request_id: str

    @property
    def is_async(self) -> bool:
        """True for 202: the broker is still working; poll last_operation."""
        return self.status == 202

    @property
    def operation(self) -> str | None:
        """The broker's operation id to pass to last_operation, if it gave one."""
        value = getattr(self.body, "operation", None)
        return value if isinstance(value, str) else None

    @property
    def gone(self) -> bool:
        """True for 410 to a delete: the resource does not exist at the broker."""
        return self.status == 410


ProvisionOutcome = Outcome[ProvisionResponse]
UpdateOutcome = Outcome[UpdateResponse]
DeprovisionOutcome = Outcome[DeprovisionResponse]
BindOutcome = Outcome[BindResponse]
UnbindOutcome = Outcome[UnbindResponse]


@dataclass(frozen=True)
class LastOperation:
    """One last_operation answer: the body and the broker's Retry-After (seconds), if any."""

    response: LastOperationResponse
    retry_after: float | None
    request_id: str
    #: True when the broker answered 410 Gone while a delete was polled (spec: a success).
    gone: bool = False

    @property
    def state(self) -> str:
        """The operation state's wire value."""
        return self.response.state.value
