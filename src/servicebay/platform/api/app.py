"""The platform's HTTP surface: one route table, one middleware list, one error mapping.

``create_app`` builds the ASGI app. Its lifespan opens the platform (migrations first), starts
the in-process worker unless disabled, and on shutdown stops the worker and closes the pools.
Auth runs once, in :class:`TokenAuth`, for every ``/api/v1`` route except health and the
OpenAPI document (an address sending wrong tokens too often gets 429 for a while); errors
become ``{"error", "message"}`` only in :func:`_error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from sqlalchemy.exc import IntegrityError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from servicebay.auth_throttle import AuthThrottle
from servicebay.platform.api import handlers as h
from servicebay.platform.api.openapi import ROUTES, openapi_document
from servicebay.platform.services.errors import (
    Conflict,
    MethodNotAllowed,
    NotFound,
    PlatformError,
)
from servicebay.platform.services.runtime import Platform
from servicebay.platform.settings import PlatformSettings
from servicebay.platform.web import WEB_DIR, SecurityHeaders, index
from servicebay.platform.worker import Worker

log = logging.getLogger("servicebay.platform.api")

PUBLIC = {"/api/v1/healthz", "/api/v1/openapi.json"}


class TokenAuth:
    """Requires ``Authorization: Bearer <token>`` on every ``/api/v1`` route but the public ones.

    An address that sent ``throttle.failures`` wrong tokens within ``throttle.window`` seconds is
    answered 429 with ``Retry-After`` for a window, its token unchecked (``AuthThrottle``).
    """

    def __init__(self, app: ASGIApp, throttle: AuthThrottle) -> None:
        self.app = app
        self.throttle = throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/api/") or path in PUBLIC:
            await self.app(scope, receive, send)
            return
        address = self.throttle.address(scope)
        wait = self.throttle.retry_after(address)
        if wait is not None:
            await _too_many_attempts(wait)(scope, receive, send)
            return
        platform: Platform = scope["app"].state.platform
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        actor = platform.authenticate(token) if scheme.lower() == "bearer" else None
        if actor is None:
            if token and self.throttle.failed(address):
                log.warning(
                    "authentication throttled: %s sent %d wrong tokens within %g s "
                    "(%d attempts refused unchecked so far)",
                    address,
                    self.throttle.failures,
                    self.throttle.window,
                    self.throttle.throttled,
                )
            response = JSONResponse(
                {"error": "unauthorized", "message": "a valid API token is required"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        scope["servicebay.actor"] = actor
        await self.app(scope, receive, send)


def _too_many_attempts(wait: int) -> Response:
    return JSONResponse(
        {
            "error": "too_many_attempts",
            "message": f"too many failed authentications from this address; retry in {wait} s",
        },
        status_code=429,
        headers={"Retry-After": str(wait)},
    )


async def _error(request: Request, exc: Exception) -> Response:
    """The one place an exception becomes an error response."""
    if isinstance(exc, HTTPException):
        mapped: PlatformError = (
            MethodNotAllowed("method not allowed")
            if exc.status_code == 405
            else NotFound(f"no such route: {request.url.path}")
        )
        return JSONResponse(mapped.to_body(), status_code=mapped.status)
    if isinstance(exc, PlatformError):
        return JSONResponse(exc.to_body(), status_code=exc.status)
    if isinstance(exc, IntegrityError):
        # Two requests raced for the same name; the loser gets what a sequential one would.
        conflict = Conflict("a record with that name was just created by another request")
        return JSONResponse(conflict.to_body(), status_code=409)
    log.error("unhandled error", exc_info=exc)
    return JSONResponse({"error": "internal_error", "message": "internal error"}, status_code=500)


async def _openapi(request: Request) -> Response:
    return Response(json.dumps(openapi_document()), media_type="application/json")


def _routes() -> list[BaseRoute]:
    routes: list[BaseRoute] = [
        Route(f"/api/v1{path}", getattr(h, handler), methods=[method])
        for method, path, handler, *_ in ROUTES
    ]
    routes.append(Route("/api/v1/openapi.json", _openapi, methods=["GET"]))
    routes.append(Route("/", index, methods=["GET"]))
    routes.append(Mount("/web", StaticFiles(directory=WEB_DIR), name="web"))
    return routes


def create_app(
    settings: PlatformSettings | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """The platform ASGI app. ``transport`` reaches brokers (tests pass an in-process one)."""
    settings = settings or PlatformSettings.from_env()
    platform = Platform(settings, transport=transport)
    throttle = settings.throttle()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        await platform.start()
        # Everything loaded so far (modules, tables, compiled schemas) lives as long as the
        # process: kept out of the collector's full passes, which otherwise walk it all again
        # every few thousand requests.
        gc.freeze()
        stop = asyncio.Event()
        task = None
        if settings.run_worker:
            task = asyncio.create_task(Worker(platform).run(stop))
        try:
            yield {}
        finally:
            stop.set()
            if task is not None:
                try:
                    await asyncio.wait_for(task, timeout=10)
                except TimeoutError:
                    log.warning("worker did not stop in time; its leases will expire")
            await platform.close()

    app = Starlette(
        routes=_routes(),
        middleware=[Middleware(SecurityHeaders), Middleware(TokenAuth, throttle=throttle)],
        exception_handlers={Exception: _error, HTTPException: _error, PlatformError: _error},
        lifespan=lifespan,
    )
    app.state.platform = platform
    return app
