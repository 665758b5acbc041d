"""What every use case needs, built once per process: database, cipher, broker link, tokens.

A :class:`Platform` is shared by the HTTP API and the worker of one process. An operation the
API queues is leased at once to the in-process worker when it has a free slot (``local``), and
handed to it by ``submit()`` after the transaction commits: no claim, no waiting. Otherwise
``submit()`` wakes the worker's claim loop; on PostgreSQL a notification (``QUEUED``) wakes
the workers of other processes too, which otherwise find it by polling the database. Waiters
on an operation are woken with its view by ``changed()``, and on PostgreSQL by the ``CHANGED``
notification of the process whose worker finished it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from servicebay.platform.broker_link import BrokerEndpoint, BrokerLink
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


# PostgreSQL notification channels between platform processes (see Database.listen).
QUEUED = "servicebay_operation_queued"
CHANGED = "servicebay_operation_finished"  # payload: the operation id
_ENDPOINTS_KEPT = 256  # decrypted broker endpoints (see Platform.endpoint)


@dataclass(frozen=True)
class Handoff:
    """What the worker needs besides the operation's row, as the use case that queued it has
    just read and checked it in its transaction: the decrypted request, the target record, the
    broker's ids for service and plan, and where the broker is. Handed over with the operation,
    it spares the worker reading back what was just written."""

    request: dict[str, Any]
    instance_id: str
    service_id: str
    plan_id: str
    max_polling: float | None
    broker_url: str
    broker_credentials: str | None
    binding_kind: str | None = None


class LocalWorker(Protocol):
    """The in-process worker as the use cases see it (``servicebay.platform.worker.Worker``)."""

    id: str

    def reserve(self, operation_id: str) -> dt.datetime | None:
        """Keep a slot for an operation about to be queued; the lease's end, or None if full."""

    def deliver(self, operation: dict[str, Any], handoff: Handoff | None = None) -> None:
        """Start driving a committed operation leased with :meth:`reserve`."""

    def release(self, operation_id: str) -> None:
        """Give back the slot of an operation whose transaction rolled back."""


@dataclass(eq=False)
class OperationWatch:
    """Set when this process's worker changes an operation; ``view`` is the committed result
    when the worker knows it (the waiter then needs no read)."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    view: dict[str, Any] | None = None

    def clear(self) -> None:
        """Forget what was seen, before reading the operation again."""
        self.event.clear()
        self.view = None


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
        self.local: LocalWorker | None = None
        self._closing = asyncio.Event()
        self._listening: asyncio.Task[None] | None = None
        self._watchers: dict[str, set[OperationWatch]] = {}
        self._endpoints: dict[tuple[str, str | None], BrokerEndpoint] = {}

    async def start(self) -> None:
        """Apply migrations, and on PostgreSQL listen for other processes' operations; call
        before serving or working."""
        await self.db.migrate(self.cipher)
        if self.db.is_postgres:
            callbacks = {QUEUED: self._queued_elsewhere, CHANGED: self._changed_elsewhere}
            self._listening = asyncio.create_task(self.db.listen(callbacks, self._closing))

    async def close(self) -> None:
        """Release connections."""
        self._closing.set()
        if self._listening is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listening, 5)  # cancelled if still connecting
        await self.link.close()
        await self.db.close()

    def _queued_elsewhere(self, _payload: str) -> None:
        self.wake.set()  # another process queued an operation: this one's worker may take it

    def _changed_elsewhere(self, operation_id: str) -> None:
        for watch in self._watchers.get(operation_id, ()):
            watch.event.set()  # the waiter reads it again (a view set here stays)

    def authenticate(self, token: str) -> Actor | None:
        """The actor owning ``token``, or None; compared in constant time."""
        found: str | None = None
        for known, user in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = user
        return Actor.of(found) if found is not None else None

    def endpoint(self, url: str, credentials: str | None) -> BrokerEndpoint:
        """The broker at ``url`` with its stored ``credentials`` decrypted (in memory only).

        Decrypted once per stored value: every broker call needs them, and a refresh that
        changes them stores a new value (Fernet tokens differ each time), so a stale entry is
        never used.
        """
        key = (url, credentials)
        found = self._endpoints.get(key)
        if found is None:
            creds = self.cipher.open(credentials) or {}
            found = BrokerEndpoint(
                url=url,
                username=creds.get("username"),
                password=creds.get("password"),
                bearer_token=creds.get("bearer_token"),
            )
            if len(self._endpoints) >= _ENDPOINTS_KEPT:
                self._endpoints.clear()
            self._endpoints[key] = found
        return found

    def notify(self) -> None:
        """Tell the in-process worker there is work."""
        self.wake.set()

    def lease_for_local(self, operation_id: str) -> tuple[str, dt.datetime] | None:
        """(owner, lease end) for an operation the in-process worker will take, if it can."""
        local = self.local
        if local is None:
            return None
        lease = local.reserve(operation_id)
        return None if lease is None else (local.id, lease)

    def release_local(self, operation_id: str) -> None:
        """The transaction that was to queue ``operation_id`` rolled back: free its slot."""
        local = self.local
        if local is not None:
            local.release(operation_id)

    def submit(self, operation: dict[str, Any], handoff: Handoff | None = None) -> None:
        """After the commit: hand a locally leased operation over (with what the worker needs,
        if given), or wake the claim loop."""
        local = self.local
        if local is not None and operation["owner"] == local.id:
            local.deliver(operation, handoff)
        else:
            self.notify()

    def watch(self, operation_id: str) -> OperationWatch:
        """A watch set when this process's worker next changes the operation.

        Waiters still poll the database as well: another process's worker may drive it.
        """
        watch = OperationWatch()
        self._watchers.setdefault(operation_id, set()).add(watch)
        return watch

    def unwatch(self, operation_id: str, watch: OperationWatch) -> None:
        """Stop watching (see :meth:`watch`)."""
        watches = self._watchers.get(operation_id)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del self._watchers[operation_id]

    def changed(self, operation_id: str, view: dict[str, Any] | None = None) -> None:
        """Wake whoever waits on this operation in this process, with its committed view."""
        for watch in self._watchers.get(operation_id, ()):
            watch.view = view
            watch.event.set()
