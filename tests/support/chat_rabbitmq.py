"""Test support: a RabbitMQ chat store URL on the machine's shared RabbitMQ, isolated per run.

Each test process gets its own vhost (``sbtest-chat-<hex>``, created on first use through the
management API and deleted when the process exits), so streams never collide with other helpers'
tests and nothing is left behind; each store also names its streams with a random id of its own.
The URL carries the binding root and the metadata file, both under the test's tmp_path, so a
chat server started as a subprocess finds the same binding.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from urllib.parse import quote

import httpx

from servicebay import bindings
from servicebay.chat.stores import open_store
from servicebay.chat.stores.rabbitmq import RabbitMQChatStore

AMQP_HOST = os.environ.get("SERVICEBAY_TEST_AMQP_HOST", "127.0.0.1:5672")
MANAGEMENT = os.environ.get("SERVICEBAY_TEST_RABBITMQ_API", "http://127.0.0.1:15672")
AUTH = ("guest", "guest")
BINDING = "chat-mq"

_vhost: str | None = None


def _drop_vhost(vhost: str) -> None:
    httpx.delete(f"{MANAGEMENT}/api/vhosts/{quote(vhost, safe='')}", auth=AUTH, timeout=30)


def session_vhost() -> str:
    """This test process's own vhost on the shared RabbitMQ (guest may use it)."""
    global _vhost
    if _vhost is None:
        vhost = f"sbtest-chat-{secrets.token_hex(4)}"
        quoted = quote(vhost, safe="")
        httpx.put(f"{MANAGEMENT}/api/vhosts/{quoted}", auth=AUTH, timeout=30).raise_for_status()
        permissions = {"configure": ".*", "write": ".*", "read": ".*"}
        httpx.put(
            f"{MANAGEMENT}/api/permissions/{quoted}/guest", json=permissions, auth=AUTH, timeout=30
        ).raise_for_status()
        atexit.register(_drop_vhost, vhost)
        _vhost = vhost
    return _vhost


def write_binding(root: Path, uri: str, name: str = BINDING) -> Path:
    """Write a servicebinding.io binding of type ``rabbitmq`` with entry ``uri`` under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    return bindings.write(bindings.Binding.from_credentials(name, "rabbitmq", {"uri": uri}), root)


def store_url(tmp: Path, uri: str | None = None, **options: str) -> str:
    """A ``rabbitmq:`` store URL whose binding and metadata live under ``tmp``."""
    uri = uri or store_uri()
    root = tmp / "bindings"
    write_binding(root, uri)
    query = {"root": str(root), "state": str(tmp / "chat-meta.db"), **options}
    return f"rabbitmq:{BINDING}?" + "&".join(f"{k}={quote(v)}" for k, v in query.items())


def store_uri() -> str:
    """The AMQP URI of this process's vhost on the shared RabbitMQ."""
    return f"amqp://guest:guest@{AMQP_HOST}/{quote(session_vhost(), safe='')}"


@contextlib.asynccontextmanager
async def opened_store(
    tmp_path: Path, room: str, members: Iterable[str]
) -> AsyncIterator[RabbitMQChatStore]:
    """A RabbitMQ chat store, opened, holding ``room`` with ``members`` in it; closed after."""
    opened = open_store(store_url(tmp_path))
    assert isinstance(opened, RabbitMQChatStore)
    await opened.open()
    try:
        await opened.put_room(room)
        for user in members:
            await opened.put_user(user)
            await opened.join(room, user)
        yield opened
    finally:
        await opened.close()
