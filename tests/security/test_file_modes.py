"""What the servers write to disk is readable by their user only, whatever the umask.

SQLite creates its files 0644 (less the umask) and its -wal/-shm files with the database's
mode; a home directory made with the default mode is 0755, or 0777 under ``umask 0``.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from security_helpers import chat_client, platform_client

from servicebay.broker import open_store as open_broker_store


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _group_or_other(path: Path) -> list[str]:
    """Files under ``path`` (itself included) that anyone but the owner may read or write."""
    found = [path, *path.rglob("*")]
    return [f"{p} {_mode(p):o}" for p in found if _mode(p) & 0o077]


@pytest.mark.parametrize("mask", [0o000, 0o022])
async def test_platform_home_and_database_are_private(tmp_path: Path, mask: int) -> None:
    """SERVICEBAY_HOME is 0700; the database, its WAL, the key and the token files 0600."""
    folder = tmp_path / "p"
    folder.mkdir(mode=0o700)
    with _umask(mask):
        async with platform_client(folder) as platform:
            body = {"name": "ns", "description": "x"}
            (await platform.post("/api/v1/namespaces", json=body)).raise_for_status()
    assert (folder / "platform.db").exists()
    assert _group_or_other(folder) == []


@pytest.mark.parametrize("mask", [0o000, 0o022])
async def test_chat_database_is_private(tmp_path: Path, mask: int) -> None:
    """The chat's SQLite store (messages, token digests) and its WAL are 0600."""
    store = tmp_path / "c"
    store.mkdir(mode=0o700)
    with _umask(mask):
        async with chat_client(store) as chat:
            (await chat.post("/api/v1/signup", json={"name": "ann"})).raise_for_status()
    assert sorted(p.name for p in store.iterdir())[:1] == ["chat.db"]
    assert _group_or_other(store) == []


@pytest.mark.parametrize("mask", [0o000, 0o022])
async def test_broker_database_is_private(tmp_path: Path, mask: int) -> None:
    """A broker's SQLite store (encrypted credentials, instances) and its key file are 0600."""
    folder = tmp_path / "b"
    folder.mkdir(mode=0o700)
    with _umask(mask):
        store = open_broker_store(f"sqlite:///{folder / 'broker.db'}")
        await store.open()
        await store.close()
    assert (folder / "broker.db").exists()
    assert _group_or_other(folder) == []
