"""The one place where a failure becomes an HTTP response.

Everything below the error boundary — auth, version and identity checks, validation, the
lifecycle and the author's own code — signals failure by raising. `ErrorBoundary` (an ASGI
middleware near the top of the stack) catches it and `error_response` renders it:

    osb.OSBError (and OperationFailed) -> its status, spec error body
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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servicebay import osb
from servicebay.broker._author import OperationKind

__all__ = [
    "KIND_KEY",
    "ErrorBoundary",
    "MethodNotAllowed",
    "error_response",
    "json_response",
    "log_crash",
]

#: ASGI scope key where a handler notes which operation it serves.
KIND_KEY = "servicebay.operation"

_FLAGGED = (OperationKind.UPDATE, OperationKind.DEPROVISION)
_JSON = "application/json"

log = structlog.get_logger("servicebay.broker")


class MethodNotAllowed(osb.OSBError):
    """405: the endpoint exists but not with this HTTP method."""

    http_status = 405


def json_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    """A JSON response from an already encoded body."""
    return Response(body, status_code=status, headers=headers, media_type=_JSON)


def error_response(error: BaseException, kind: OperationKind | None = None) -> Response:
    """Render any failure as the spec's error response (see the module docstring)."""
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
    return json_response(error.http_status, _dumps(body), headers)


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


class ErrorBoundary:
    """ASGI middleware: every exception raised below it becomes one spec error response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app; render a failure unless the response had already started."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            if started:
                raise
            response = error_response(error, scope.get(KIND_KEY))
            await response(scope, receive, send)
