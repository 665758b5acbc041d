"""Failures of a call to a broker, as the platform sees them.

::

    ClientError (exit 1)
     ├── BrokerError          the broker answered with an OSB error (4xx/5xx); wraps OSBError,
     │                        exit code of the wrapped error
     ├── BrokerUnreachable    no answer: connection refused, reset, DNS…        exit 11
     ├── BrokerTimeout        the broker did not answer in time                  exit 12
     ├── MalformedResponse    a success status with a body that breaks the spec  exit 13
     ├── UnexpectedStatus     a status the spec does not define for the call     exit 13
     └── PollingTimedOut      last_operation did not end within the maximum
                              polling duration (spec: the operation is failed)   exit 14

Every error carries ``mitigation`` — which resource, if any, the platform should now delete
because it cannot be sure it was not created (spec "Orphan Mitigation") — and the
``request_id`` sent as ``X-Broker-API-Request-Identity``, for tracing. Messages never contain a
response body: a malformed bind response may well hold credentials.
"""

from __future__ import annotations

from servicebay.client._orphans import OrphanMitigation
from servicebay.osb import OSBError

__all__ = [
    "BrokerError",
    "BrokerTimeout",
    "BrokerUnreachable",
    "ClientError",
    "MalformedResponse",
    "PollingTimedOut",
    "UnexpectedStatus",
]


class ClientError(Exception):
    """A call to a broker failed; see the subclasses."""

    exit_code: int = 1

    def __init__(
        self,
        message: str,
        *,
        mitigation: OrphanMitigation = OrphanMitigation.NONE,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.mitigation = mitigation
        self.request_id = request_id

    @property
    def orphan_mitigation_needed(self) -> bool:
        """True when the platform should delete the resource this call may have created."""
        return self.mitigation is not OrphanMitigation.NONE


class BrokerError(ClientError):
    """The broker refused or failed the request with an OSB error body."""

    def __init__(
        self,
        error: OSBError,
        *,
        mitigation: OrphanMitigation = OrphanMitigation.NONE,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        message = f"broker answered {error.http_status}: {error.description}"
        super().__init__(message, mitigation=mitigation, request_id=request_id)
        self.error = error
        #: Seconds the broker asked to wait (Retry-After on a 429 or 503), if it said.
        self.retry_after = retry_after
        self.status = error.http_status
        self.exit_code = error.exit_code


class BrokerUnreachable(ClientError):
    """The broker could not be reached, or the connection broke before an answer."""

    exit_code = 11


class BrokerTimeout(ClientError):
    """The broker did not answer within the client's timeout."""

    exit_code = 12


class MalformedResponse(ClientError):
    """A success status came with a body that is not what the spec defines."""

    exit_code = 13

    def __init__(
        self,
        message: str,
        *,
        status: int,
        mitigation: OrphanMitigation = OrphanMitigation.NONE,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, mitigation=mitigation, request_id=request_id)
        self.status = status


class UnexpectedStatus(ClientError):
    """The broker answered with a status the spec does not define for this call."""

    exit_code = 13

    def __init__(
        self,
        message: str,
        *,
        status: int,
        mitigation: OrphanMitigation = OrphanMitigation.NONE,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, mitigation=mitigation, request_id=request_id)
        self.status = status


class PollingTimedOut(ClientError):
    """last_operation stayed ``in progress`` past the maximum polling duration."""

    exit_code = 14
