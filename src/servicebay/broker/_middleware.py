"""The checks every OSB request passes once, before any handler runs (pure ASGI middleware).

In stack order (outermost first, see `create_app`):

- `RequestIdentity` — echoes `X-Broker-API-Request-Identity` on the response and binds it into
  every structlog log line of the request, background operations included (spec "Request
  Identity");
- `Authentication` — basic / bearer, 401 otherwise (on `/v2/*` and `/metrics`);
- `APIVersion` — `X-Broker-API-Version` missing, empty or unsupported → 412 naming 2.17
  (on `/v2/*`);
- `OriginatingIdentity` — decodes `X-Broker-API-Originating-Identity` for the author, 400 when
  malformed (on `/v2/*`).

They raise `osb` errors; `ErrorBoundary` (in `_errors`) renders them.
"""

from __future__ import annotations

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servicebay import osb
from servicebay.broker._auth import Authenticator

__all__ = [
    "IDENTITY_KEY",
    "REQUEST_ID_KEY",
    "APIVersion",
    "Authentication",
    "OriginatingIdentity",
    "RequestIdentity",
    "header",
]

#: ASGI scope keys where the middleware leaves what it decoded.
IDENTITY_KEY = "servicebay.identity"
REQUEST_ID_KEY = "servicebay.request_id"

_REQUEST_ID = osb.REQUEST_IDENTITY_HEADER.lower().encode()
_VERSION = osb.API_VERSION_HEADER.lower().encode()
_ORIGIN = osb.ORIGINATING_IDENTITY_HEADER.lower().encode()
_AUTHORIZATION = b"authorization"


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (`name` lower-case), decoded as latin-1."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _is_osb(scope: Scope) -> bool:
    return scope["type"] == "http" and str(scope["path"]).startswith("/v2/")


class RequestIdentity:
    """Binds the request identity into logs and echoes it on the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request with `request_id` bound in structlog's context."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = header(scope, _REQUEST_ID)
        scope[REQUEST_ID_KEY] = given
        if not given:
            await self.app(scope, receive, send)
            return
        echo = (_REQUEST_ID, given.encode("latin-1"))

        async def echoing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), echo]
            await send(message)

        tokens = structlog.contextvars.bind_contextvars(request_id=given)
        try:
            await self.app(scope, receive, echoing_send)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)


class Authentication:
    """Rejects requests to OSB endpoints and `/metrics` without valid credentials (401)."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check credentials, then pass the request on."""
        if scope["type"] == "http" and scope["path"] != "/healthz":
            self.authenticator.check(header(scope, _AUTHORIZATION))
        await self.app(scope, receive, send)


class APIVersion:
    """Rejects OSB requests whose `X-Broker-API-Version` this broker does not speak (412)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the version header, then pass the request on."""
        if _is_osb(scope):
            # The spec allows 400 for a missing header; 412 is what platforms and conformance
            # checkers expect, so every failure here is 412 naming the version to use.
            osb.check_api_version(header(scope, _VERSION))
        await self.app(scope, receive, send)


class OriginatingIdentity:
    """Decodes `X-Broker-API-Originating-Identity` into `scope[IDENTITY_KEY]` (400 if bad)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Decode the header when present, then pass the request on."""
        if _is_osb(scope):
            value = header(scope, _ORIGIN)
            scope[IDENTITY_KEY] = None if value is None else osb.OriginatingIdentity.parse(value)
        await self.app(scope, receive, send)
