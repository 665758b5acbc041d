"""Test support for the self-test: serve any ASGI app on a real socket, and break a broker.

The misbehaving brokers are the real sandbox app wrapped in ASGI middleware that breaks one
rule each, so a check that fails against them fails for exactly that rule.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

ASGIApp = Any
Scope = dict[str, Any]


@contextlib.contextmanager
def serve_in_thread(app: ASGIApp) -> Iterator[str]:
    """Serve ``app`` (lifespan included) with uvicorn on a free port; yield its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class IgnoreVersionHeader:
    """Broken on purpose: answers requests whatever their X-Broker-API-Version says."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = [(k, v) for k, v in scope["headers"] if k != b"x-broker-api-version"]
            scope = {**scope, "headers": [*headers, (b"x-broker-api-version", b"2.17")]}
        await self.app(scope, receive, send)


class NewCredentialsOnRetry:
    """Broken on purpose: a retried bind (200) hands out a new password."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        is_bind = (
            scope["type"] == "http"
            and scope["method"] == "PUT"
            and "/service_bindings/" in scope["path"]
        )
        if not is_bind:
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks)
            if start["status"] == 200:
                data = json.loads(body)
                if isinstance(data.get("credentials"), dict):
                    data["credentials"]["password"] = secrets.token_urlsafe(12)
                body = json.dumps(data).encode()
            headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, capture)
