"""What every use case needs, built once per process: database, cipher, broker link, tokens.

A :class:`Platform` is shared by the HTTP API and the worker of one process. ``notify()`` wakes
the in-process worker as soon as an operation is queued; workers in other processes find it
by polling the database.
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass

import httpx

from servicebay.platform.broker_link import BrokerLink
from servicebay.platform.keys import Cipher, load_key, load_tokens
from servicebay.platform.settings import PlatformSettings
from servicebay.platform.store import Database


@dataclass(frozen=True)
class Actor:
    """The user behind a request; ``admin`` users see every credential."""

    user: str
    admin: bool

    @classmethod
    def of(cls, user: str) -> Actor:
        """The actor for a user name (``admin`` is the administrator)."""
        return cls(user=user, admin=user == "admin")


class Platform:
    """The services' shared resources for one process."""

    def __init__(
        self, settings: PlatformSettings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.settings = settings
        self.db = Database(settings.db)
        self.cipher = Cipher(load_key(settings.home, settings.key))
        self._tokens = load_tokens(settings.home, settings.tokens)
        self.link = BrokerLink(timeout=settings.broker_timeout, transport=transport)
        self.wake = asyncio.Event()
        self._watchers: dict[str, set[asyncio.Event]] = {}

    async def start(self) -> None:
        """Apply migrations; call before serving or working."""
        await self.db.migrate()

    async def close(self) -> None:
        """Release connections."""
        await self.link.close()
        await self.db.close()

    def authenticate(self, token: str) -> Actor | None:
        """The actor owning ``token``, or None; compared in constant time."""
        found: str | None = None
        for known, user in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = user
        return Actor.of(found) if found is not None else None

    def notify(self) -> None:
        """Tell the in-process worker there is work."""
        self.wake.set()

    def watch(self, operation_id: str) -> asyncio.Event:
        """An event set when this process's worker next changes the operation.

        Waiters still poll the database as well: another process's worker may drive it.
        """
        event = asyncio.Event()
        self._watchers.setdefault(operation_id, set()).add(event)
        return event

    def unwatch(self, operation_id: str, event: asyncio.Event) -> None:
        """Stop watching (see :meth:`watch`)."""
        events = self._watchers.get(operation_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self._watchers[operation_id]

    def changed(self, operation_id: str) -> None:
        """Wake whoever waits on this operation in this process."""
        for event in self._watchers.get(operation_id, ()):
            event.set()
