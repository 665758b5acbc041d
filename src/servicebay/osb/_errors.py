"""Errors of the OSB protocol: one hierarchy, one status code each.

Every error a broker can answer, and every error a platform can receive, is one of these
classes. Each knows its HTTP status, its spec error code (the ``error`` field of the body,
see spec "Service Broker Errors") and the exit code the CLI uses for it::

    OSBError (500, exit 10)
     ├── BadRequest            400  exit 2
     │    └── InvalidParameters 400  exit 2   (.problems: list[ParameterProblem])
     ├── Unauthorized          401  exit 3
     ├── NotFound              404  exit 4
     ├── Conflict              409  exit 5
     ├── Gone                  410  exit 4
     ├── PreconditionFailed    412  exit 6
     ├── UnprocessableEntity   422  exit 7
     │    ├── AsyncRequired            "AsyncRequired"
     │    ├── ConcurrencyError         "ConcurrencyError"
     │    ├── RequiresApp              "RequiresApp"
     │    └── MaintenanceInfoConflict  "MaintenanceInfoConflict"
     └── InternalError         500  exit 10

``OSBError.to_response()`` turns an error into the wire body; ``OSBError.from_response()`` turns
a status code and body received from a broker back into the matching class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from servicebay.osb._wire import Bool, Str, WireModel

__all__ = [
    "AsyncRequired",
    "BadRequest",
    "ConcurrencyError",
    "Conflict",
    "ErrorResponse",
    "Gone",
    "InternalError",
    "InvalidParameters",
    "MaintenanceInfoConflict",
    "NotFound",
    "OSBError",
    "ParameterProblem",
    "PreconditionFailed",
    "RequiresApp",
    "Unauthorized",
    "UnprocessableEntity",
]


class ErrorResponse(WireModel):
    """Error body (spec "Service Broker Errors"); every field is optional."""

    error: Str | None = None
    description: Str | None = None
    instance_usable: Bool | None = None
    update_repeatable: Bool | None = None


class OSBError(Exception):
    """An OSB failure: carries the status code, spec error code and user-facing description."""

    http_status: int = 500
    error_code: str | None = None
    exit_code: int = 10

    def __init__(
        self,
        description: str,
        *,
        instance_usable: bool | None = None,
        update_repeatable: bool | None = None,
    ) -> None:
        super().__init__(description)
        self.description = description
        self.instance_usable = instance_usable
        self.update_repeatable = update_repeatable

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description!r})"

    def to_response(self) -> ErrorResponse:
        """Return the error body the spec defines for this failure."""
        return ErrorResponse(
            error=self.error_code,
            description=self.description or None,
            instance_usable=self.instance_usable,
            update_repeatable=self.update_repeatable,
        )

    @classmethod
    def from_response(cls, status: int, body: Any) -> OSBError:
        """Map a broker's error status and body (dict, ErrorResponse or anything) to an error.

        A 422 with a known spec error code gives the specific subclass; a status this hierarchy
        does not name gives a plain ``OSBError`` whose ``http_status`` is that status.
        """
        response = _error_body(body)
        description = response.description or f"broker answered HTTP {status}"
        kwargs: dict[str, Any] = {
            "instance_usable": response.instance_usable,
            "update_repeatable": response.update_repeatable,
        }
        if status == 422 and response.error in _BY_CODE:
            return _BY_CODE[response.error](description, **kwargs)
        klass = _BY_STATUS.get(status)
        if klass is None:
            klass = InternalError if status == 500 else OSBError
        error = klass(description, **kwargs)
        if klass is OSBError:
            error.http_status = status
            error.error_code = response.error
        return error


def _error_body(body: Any) -> ErrorResponse:
    if isinstance(body, ErrorResponse):
        return body
    if isinstance(body, dict):
        fields = {
            "error": body.get("error") if isinstance(body.get("error"), str) else None,
            "description": body.get("description")
            if isinstance(body.get("description"), str)
            else None,
            "instance_usable": body.get("instance_usable")
            if isinstance(body.get("instance_usable"), bool)
            else None,
            "update_repeatable": body.get("update_repeatable")
            if isinstance(body.get("update_repeatable"), bool)
            else None,
        }
        return ErrorResponse(**fields)
    return ErrorResponse()


class BadRequest(OSBError):
    """400: the request is malformed, misses mandatory data or carries invalid data."""

    http_status = 400
    exit_code = 2


@dataclass(frozen=True)
class ParameterProblem:
    """One violation of a plan's parameter schema: where, which rule, and a readable message."""

    path: str
    rule: str
    message: str


class InvalidParameters(BadRequest):
    """400: parameters violate the plan's JSON schema; ``problems`` lists each violation."""

    def __init__(
        self,
        description: str,
        *,
        problems: list[ParameterProblem] | None = None,
        instance_usable: bool | None = None,
        update_repeatable: bool | None = None,
    ) -> None:
        super().__init__(
            description, instance_usable=instance_usable, update_repeatable=update_repeatable
        )
        self.problems: list[ParameterProblem] = list(problems or [])


class Unauthorized(OSBError):
    """401: authentication failed (spec: Platform to Service Broker Authentication)."""

    http_status = 401
    exit_code = 3


class NotFound(OSBError):
    """404: the instance or binding does not exist (or is still being created, for fetch)."""

    http_status = 404
    exit_code = 4


class Conflict(OSBError):
    """409: a resource with the same id exists with different attributes."""

    http_status = 409
    exit_code = 5


class Gone(OSBError):
    """410: the resource to delete does not exist."""

    http_status = 410
    exit_code = 4


class PreconditionFailed(OSBError):
    """412: the X-Broker-API-Version header is missing or names an unsupported version."""

    http_status = 412
    exit_code = 6


class UnprocessableEntity(OSBError):
    """422: the request cannot be fulfilled in the resource's current state."""

    http_status = 422
    exit_code = 7


class AsyncRequired(UnprocessableEntity):
    """422 AsyncRequired: the operation needs ``accepts_incomplete=true``."""

    error_code = "AsyncRequired"


class ConcurrencyError(UnprocessableEntity):
    """422 ConcurrencyError: another operation on the same resource is in progress."""

    error_code = "ConcurrencyError"


class RequiresApp(UnprocessableEntity):
    """422 RequiresApp: the bind request lacks ``app_guid``."""

    error_code = "RequiresApp"


class MaintenanceInfoConflict(UnprocessableEntity):
    """422 MaintenanceInfoConflict: ``maintenance_info.version`` differs from the catalog's."""

    error_code = "MaintenanceInfoConflict"


class InternalError(OSBError):
    """500: the broker failed; its resources may or may not have changed."""

    http_status = 500
    exit_code = 10


_BY_CODE: dict[str | None, type[UnprocessableEntity]] = {
    klass.error_code: klass
    for klass in (AsyncRequired, ConcurrencyError, RequiresApp, MaintenanceInfoConflict)
}
_BY_STATUS: dict[int, type[OSBError]] = {
    klass.http_status: klass
    for klass in (
        BadRequest,
        Unauthorized,
        NotFound,
        Conflict,
        Gone,
        PreconditionFailed,
        UnprocessableEntity,
        InternalError,
    )
}
