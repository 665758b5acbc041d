"""Fixtures of the chat tests: every store backend behind the same ``chat_store`` fixture."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

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
