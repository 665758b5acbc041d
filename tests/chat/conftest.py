"""Fixtures of the chat tests: every store backend behind ``chat_store``, and a served chat."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from chat_helpers import BACKENDS, ServedChat, serve_chat

from servicebay.chat.settings import ChatSettings
from servicebay.chat.stores import ChatStore, open_store


@pytest.fixture(autouse=True)
def private_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every chat test, and the servers it starts, use a home of its own, never ~/.servicebay."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("SERVICEBAY_HOME", str(home))
    return home


@pytest.fixture(params=BACKENDS)
async def chat_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ChatStore]:
    """An opened, empty store of each backend."""
    store = open_store(request.param(tmp_path))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(params=BACKENDS)
async def chat(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ServedChat]:
    """A served chat with rooms ``lobby`` and ``side`` on a fresh store of each backend."""
    settings = ChatSettings(store=request.param(tmp_path), rooms=["lobby", "side"])
    async with serve_chat(settings) as served:
        yield served
