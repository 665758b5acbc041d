"""Fixtures of the chat tests: every store backend behind ``chat_store``, and a served chat."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from chat_helpers import ServedChat, serve_chat

from servicebay.chat.settings import ChatSettings
from servicebay.chat.stores import ChatStore
from servicebay.chat.stores.sqlite import SQLiteChatStore

# A RabbitMQ backend adds its name here (and marks its param with pytest.mark.rabbitmq).
BACKENDS = [pytest.param("sqlite", id="sqlite")]


@pytest.fixture(params=BACKENDS)
async def chat_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ChatStore]:
    """An opened, empty store of each backend."""
    store = SQLiteChatStore(tmp_path / "chat.db")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def chat(tmp_path: Path) -> AsyncIterator[ServedChat]:
    """A served chat with rooms ``lobby`` and ``side`` on a fresh SQLite store."""
    settings = ChatSettings(store=f"sqlite:{tmp_path / 'chat.db'}", rooms=["lobby", "side"])
    async with serve_chat(settings) as served:
        yield served
