"""Every error the platform API can answer, and the one place they become HTTP status + code.

::

    PlatformError (status, code, message)
    ├── BadRequest          400 bad_request
    ├── Unauthorized        401 unauthorized
    ├── Forbidden           403 forbidden | plan_not_visible
    ├── NotFound            404 <thing>_not_found | not_found
    ├── MethodNotAllowed    405 method_not_allowed
    ├── Conflict            409 <thing>_exists | *_in_use | instance_has_bindings | ...
    ├── PreconditionFailed  412 precondition_failed (If-Match names an older version)
    ├── PayloadTooLarge     413 payload_too_large
    ├── Unprocessable       422 invalid_parameters (with problems) | not_bindable | ...
    └── BrokerFailure       502 broker_unreachable | broker_error

Codes are stable (the CLI maps them to exit codes); messages are for people and never carry
a secret. The API turns any of these into ``{"error": code, "message": ..., "problems"?: [...]}``
in exactly one place (``servicebay.platform.api.app``).
"""

from __future__ import annotations

from typing import Any, ClassVar


class PlatformError(Exception):
    """Base of every platform error: an HTTP status, a stable code, a readable message."""

    status: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code

    def to_body(self) -> dict[str, Any]:
        """The JSON error body."""
        return {"error": self.code, "message": self.message}


class BadRequest(PlatformError):
    """The request itself is malformed (JSON, types, fields, names, query values)."""

    status = 400
    default_code = "bad_request"


class Unauthorized(PlatformError):
    """Missing or unknown API token."""

    status = 401
    default_code = "unauthorized"


class Forbidden(PlatformError):
    """The caller may not do this here (e.g. a plan not visible in the namespace)."""

    status = 403
    default_code = "forbidden"


class NotFound(PlatformError):
    """An unknown name or id; the code names the kind of thing (``instance_not_found``)."""

    status = 404
    default_code = "not_found"


class MethodNotAllowed(PlatformError):
    """The route exists but not with this method."""

    status = 405
    default_code = "method_not_allowed"


class Conflict(PlatformError):
    """The request clashes with the current state (name taken, busy, still in use)."""

    status = 409
    default_code = "conflict"


class PreconditionFailed(PlatformError):
    """``If-Match`` names a version that is no longer current: someone changed it meanwhile."""

    status = 412
    default_code = "precondition_failed"


class PayloadTooLarge(PlatformError):
    """The request body exceeds the limit."""

    status = 413
    default_code = "payload_too_large"


class Unprocessable(PlatformError):
    """Well-formed but not acceptable (parameters, quota, bindability, catalog)."""

    status = 422
    default_code = "unprocessable"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        problems: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.problems = problems

    def to_body(self) -> dict[str, Any]:
        """The JSON error body, with ``problems`` when there are any."""
        body = super().to_body()
        if self.problems is not None:
            body["problems"] = self.problems
        return body


class BrokerFailure(PlatformError):
    """A synchronous broker call (catalog fetch) failed."""

    status = 502
    default_code = "broker_error"


def not_found(kind: str, name: str) -> NotFound:
    """``NotFound`` with code ``<kind>_not_found`` and a message naming it."""
    return NotFound(f"{kind} {name!r} not found", code=f"{kind}_not_found")
