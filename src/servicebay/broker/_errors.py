"""The one place where a failure becomes an HTTP response.

Everything below the error boundary — auth, version and identity checks, validation, the
lifecycle and the author's own code — signals failure by raising. The boundary is in
`BrokerGate` (`_middleware`, at the top of the stack): it catches the exception and
`rendered_error` renders it:

    osb.OSBError (and OperationFailed) -> its status, spec error body (429 with Retry-After)
    starlette HTTPException (no route)  -> 404 / 405 with an OSB error body
    anything else                       -> 500 "internal error", logged with its traceback

Per spec "Service Broker Errors", `instance_usable` MUST NOT appear in errors of operations
other than update and deprovision, and `update_repeatable` in errors other than update's; the
handlers mark the operation in the ASGI scope (`KIND_KEY`) so the renderer can drop them.
"""

from __future__ import annotations

import json
import traceback
from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.responses import Response

from servicebay import osb
from servicebay.broker._author import OperationKind

__all__ = [
    "KIND_KEY",
    "MethodNotAllowed",
    "TooManyAttempts",
    "error_response",
    "json_response",
    "log_crash",
    "rendered_error",
]

#: ASGI scope key where a handler notes which operation it serves.
KIND_KEY = "servicebay.operation"

_FLAGGED = (OperationKind.UPDATE, OperationKind.DEPROVISION)
_JSON = "application/json"

log = structlog.get_logger("servicebay.broker")


class MethodNotAllowed(osb.OSBError):
    """405: the endpoint exists but not with this HTTP method."""

    http_status = 405


class TooManyAttempts(osb.OSBError):
    """429: this address failed authentication too often; ``Retry-After`` says for how long."""

    http_status = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed authentications; retry in {retry_after} s")
        self.retry_after = retry_after


def json_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    """A JSON response from an already encoded body."""
    return Response(body, status_code=status, headers=headers, media_type=_JSON)


def rendered_error(
    error: BaseException, kind: OperationKind | None = None
) -> tuple[int, bytes, dict[str, str] | None]:
    """Any failure as the spec's error response: status, encoded body, extra headers (see the
    module docstring)."""
    if isinstance(error, HTTPException):
        error = _from_http(error)
    if not isinstance(error, osb.OSBError):
        log_crash(log, "unhandled error", error)
        error = osb.InternalError("internal error")
    elif error.http_status >= 500:
        log.error("request failed", error_type=type(error).__name__, description=error.description)
    body = error.to_response().to_wire()
    if kind not in _FLAGGED:
        body.pop("instance_usable", None)
    if kind is not OperationKind.UPDATE:
        body.pop("update_repeatable", None)
    headers = {"WWW-Authenticate": 'Basic realm="servicebay"'} if error.http_status == 401 else None
    if isinstance(error, TooManyAttempts):
        headers = {"Retry-After": str(error.retry_after)}
    return error.http_status, _dumps(body), headers


def error_response(error: BaseException, kind: OperationKind | None = None) -> Response:
    """`rendered_error` as a Starlette response (for Starlette's own 404 and 405)."""
    return json_response(*rendered_error(error, kind))


def log_crash(logger: Any, event: str, error: BaseException) -> None:
    """Log an unexpected exception with a plain traceback.

    Never `exc_info`: structlog's default console renderer prints tracebacks with every frame's
    local variables (request headers with credentials among them). The plain text traceback
    names files, lines and source only.
    """
    logger.error(
        event,
        error_type=type(error).__name__,
        traceback="".join(traceback.format_exception(error)),
    )


def _from_http(error: HTTPException) -> osb.OSBError:
    if error.status_code == 405:
        return MethodNotAllowed("method not allowed on this endpoint")
    if error.status_code == 404:
        return osb.NotFound("no such endpoint")
    failure = osb.OSBError(str(error.detail))
    failure.http_status = error.status_code
    return failure


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
