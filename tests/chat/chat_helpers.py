"""Helpers of the chat tests: serve the chat app on a real port inside the test's loop."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette

from servicebay.chat.metrics import ChatMetrics
from servicebay.chat.server import create_app, uvicorn_options
from servicebay.chat.service import ChatService
from servicebay.chat.settings import ChatSettings
from servicebay.chat.stores import ChatStore, Retention, open_store
from support import chat_rabbitmq

# Every backend, as a store URL built from the test's tmp_path. A RabbitMQ backend adds
# pytest.param(lambda tmp: "rabbitmq:<binding>", id="rabbitmq", marks=pytest.mark.rabbitmq);
# every store test, server test and the chaos test then run on it too.
BACKENDS = [
    pytest.param(lambda tmp: f"sqlite:{tmp / 'chat.db'}", id="sqlite"),
    pytest.param(chat_rabbitmq.store_url, id="rabbitmq", marks=pytest.mark.rabbitmq),
]


@dataclass
class ServedChat:
    """A chat app served by uvicorn on a real local port, inside the test's event loop."""

    app: Starlette
    port: int
    admin_token: str

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def service(self) -> ChatService:
        service: ChatService = self.app.state.service
        return service

    @property
    def store(self) -> ChatStore:
        return self.service.store

    async def user(self, name: str, *rooms: str) -> str:
        """Create a user who is a member of ``rooms`` (from the start); return a token."""
        await self.store.put_user(name)
        for room in rooms:
            await self.service.join(room, name, cursor=0)
        return (await self.store.issue_token(name)).token


@contextlib.asynccontextmanager
async def serve_chat(settings: ChatSettings) -> AsyncIterator[ServedChat]:
    """Run the chat app on a free port until the block ends."""
    app = create_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", **uvicorn_options())
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await eventually(lambda: server.started, 20)
    try:
        yield ServedChat(app, port, app.state.admin_token)
    finally:
        server.should_exit = True
        await task
        sock.close()


async def eventually(check: Callable[[], Any], seconds: float = 5.0) -> None:
    """Poll ``check`` (sync or async, truthy when done) until it holds or the deadline passes."""
    async with asyncio.timeout(seconds):
        while True:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            # Polling with a deadline is the rule here (no fixed sleeps, no event to hook into).
            await asyncio.sleep(0.01)


async def started_service(
    db: Path, room: str, member: str, compact_every: float = 30.0
) -> ChatService:
    """A started ``ChatService`` over the SQLite file ``db``, with ``room`` and its ``member``."""
    service = ChatService(open_store(f"sqlite:{db}"), ChatMetrics(), compact_every=compact_every)
    await service.start()
    await service.store.put_room(room, Retention())
    await service.store.put_user(member)
    await service.join(room, member, cursor=0)
    return service
