"""Chat storage backends behind one interface, chosen by a URL.

``open_store("sqlite:PATH")`` gives the embedded log (the default); ``rabbitmq`` (optionally
``rabbitmq:BINDING_NAME``) is reserved for the RabbitMQ backend, found through a servicebinding.io
binding of type ``rabbitmq``.
"""

from __future__ import annotations

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
    "StoreUnavailable",
    "UnknownRoom",
    "UnknownUser",
    "User",
    "open_store",
]

DEFAULT_STORE = "sqlite:./servicebay-chat.db"


def open_store(url: str = DEFAULT_STORE) -> ChatStore:
    """Build (not yet open) the store named by ``url``.

    ``sqlite:PATH[?synchronous=FULL|NORMAL]`` or ``rabbitmq[:BINDING_NAME]``.
    """
    scheme, _, rest = url.partition(":")
    if scheme == "sqlite":
        from servicebay.chat.stores.sqlite import SQLiteChatStore

        path, _, query = rest.partition("?")
        options = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
        return SQLiteChatStore(path or "servicebay-chat.db", **options)
    if scheme == "rabbitmq":
        try:
            from servicebay.chat.stores.rabbitmq import open_rabbitmq_store  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise ValueError("the RabbitMQ chat store is not available in this build") from exc
        store: ChatStore = open_rabbitmq_store(rest or None)
        return store
    raise ValueError(f"unknown chat store {url!r}: use sqlite:PATH or rabbitmq[:BINDING]")
