"""Chat storage backends behind one interface, chosen by a URL.

``open_store("sqlite:PATH")`` gives the embedded log (the default); ``rabbitmq`` (optionally
``rabbitmq:BINDING_NAME``) is reserved for the RabbitMQ backend, found through a servicebinding.io
binding of type ``rabbitmq``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

from servicebay.chat.stores.base import (
    Appended,
    ChatStore,
    ChatStoreError,
    IssuedToken,
    Member,
    Message,
    NotMember,
    Retention,
    Room,
    StoreInUse,
    StoreNotOpened,
    StoreUnavailable,
    UnknownRoom,
    UnknownUser,
    User,
)

__all__ = [
    "Appended",
    "ChatStore",
    "ChatStoreError",
    "IssuedToken",
    "Member",
    "Message",
    "NotMember",
    "Retention",
    "Room",
    "StoreInUse",
    "StoreNotOpened",
    "StoreUnavailable",
    "UnknownRoom",
    "UnknownUser",
    "User",
    "local_file",
    "open_store",
]

DEFAULT_STORE = "sqlite:./servicebay-chat.db"
# The RabbitMQ store's metadata file, unless its URL says ``state=PATH``.
RABBITMQ_STATE = "servicebay-chat-rabbitmq.db"


def local_file(url: str) -> Path:
    """The store's file on this machine: the SQLite log, or the RabbitMQ store's metadata.

    The owner lock (``<file>.lock``) and a generated admin token (``<file>.admin-token``) sit
    next to it.
    """
    scheme, _, rest = url.partition(":")
    path, _, query = rest.partition("?")
    if scheme == "rabbitmq":
        return Path(dict(parse_qsl(query)).get("state", RABBITMQ_STATE))
    return Path(path or "servicebay-chat.db")


def open_store(url: str = DEFAULT_STORE) -> ChatStore:
    """Build (not yet open) the store named by ``url``.

    ``sqlite:PATH[?synchronous=FULL|NORMAL]`` or ``rabbitmq[:BINDING_NAME]``; a URL that
    names no usable store is ``StoreNotOpened``.
    """
    scheme, _, rest = url.partition(":")
    if scheme == "sqlite":
        from servicebay.chat.stores.sqlite import SQLiteChatStore

        path, _, query = rest.partition("?")
        options = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
        try:
            return SQLiteChatStore(path or "servicebay-chat.db", **options)
        except (TypeError, ValueError) as exc:  # an unknown option or value
            raise StoreNotOpened(f"chat store {url!r}: {exc}") from None
    if scheme == "rabbitmq":
        try:
            from servicebay.chat.stores.rabbitmq import open_rabbitmq_store  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise StoreNotOpened("the RabbitMQ chat store is not available in this build") from exc
        store: ChatStore = open_rabbitmq_store(rest or None)
        return store
    raise StoreNotOpened(f"unknown chat store {url!r}: use sqlite:PATH or rabbitmq[:BINDING]")
