"""Helpers of the security tests: the chat and platform apps in-process, with their lifespan.

(Imported by name, like tests/chat's chat_helpers; no conftest.py here, so that no other
directory's ``from conftest import ...`` can pick this one up.)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from servicebay.chat.server import create_app as chat_app
from servicebay.chat.settings import ChatSettings
from servicebay.platform import PlatformSettings
from servicebay.platform import create_app as platform_app

CHAT_ADMIN = "chat-admin-token-0123456789"
PLATFORM_TOKEN = "platform-token-0123456789"
USER_TOKEN = "platform-user-token-0123456789"


@contextlib.asynccontextmanager
async def chat_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A chat server on a fresh SQLite store (room ``lobby``), reached in-process."""
    settings = ChatSettings(
        store=f"sqlite:{tmp_path / 'chat.db'}", admin_token=CHAT_ADMIN, rooms=["lobby"]
    )
    app = chat_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://chat.test") as client:
            yield client


@contextlib.asynccontextmanager
async def platform_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A platform (no worker) on a fresh SQLite database, reached in-process with the admin's
    token (``USER_TOKEN`` is alice's, a user who is not an admin)."""
    settings = PlatformSettings(
        home=tmp_path / "home",
        db=f"sqlite:///{tmp_path / 'platform.db'}",
        tokens={PLATFORM_TOKEN: "admin", USER_TOKEN: "alice"},
        run_worker=False,
    )
    app = platform_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://platform.test",
            headers={"authorization": f"Bearer {PLATFORM_TOKEN}"},
        ) as client:
            yield client
