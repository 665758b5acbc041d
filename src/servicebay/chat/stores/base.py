"""The chat store interface: what a storage backend must keep and promise.

Where it sits: the server (``servicebay.chat.server``) and the HTTP API call a ``ChatStore``;
backends (``stores.sqlite``, later ``stores.rabbitmq``) implement it. The promises that the
protocol's guarantees rest on are stated on the methods: ``append`` returns only once the message
is durable, a repeated idempotency key returns the first seq and stores nothing, and seqs become
visible in order (see /work/coord/CHAT_STORE.md and docs/chat-protocol.md).

Errors::

    ChatStoreError
     ├── UnknownRoom
     ├── UnknownUser
     ├── NotMember
     ├── StoreUnavailable
     └── StoreNotOpened       the store cannot be opened: say why, start nothing
          └── StoreInUse      another process (a chat server) owns it
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol


@dataclass(frozen=True)
class Retention:
    """When a room's acknowledged messages may be deleted.

    A message may go only when every member acknowledged it, it is older than ``keep_seconds``
    and it is not among the room's newest ``keep_last`` messages; ``keep_all`` keeps history.
    """

    keep_all: bool = False
    keep_seconds: float = 86400.0
    keep_last: int = 100


@dataclass(frozen=True)
class User:
    """A person or a bound app that may hold tokens."""

    id: str
    display_name: str
    kind: str = "person"


@dataclass(frozen=True)
class IssuedToken:
    """A freshly issued token; ``token`` is clear text and is never stored."""

    token_id: str
    user_id: str
    token: str


@dataclass(frozen=True)
class Room:
    """A room: its retention, whether anyone may join, and the span of its log."""

    id: str
    retention: Retention
    open: bool
    head: int
    floor: int


@dataclass(frozen=True)
class Member:
    """A user's membership of a room with the durable cursor (highest acknowledged seq)."""

    room: str
    user: str
    cursor: int
    joined_at: float


@dataclass(frozen=True)
class Message:
    """One stored chat message."""

    room: str
    seq: int
    sender: str
    key: str
    body: str
    sent_at: float


class Appended(NamedTuple):
    """The outcome of ``append``: the room seq; ``duplicate`` when the key was already known.

    (A named tuple, as the other per-message records: a frozen dataclass costs ~0.75 µs to
    build, a named tuple ~0.38.)
    """

    seq: int
    sent_at: float
    duplicate: bool


class ChatStoreError(Exception):
    """Base of every store error."""

    code = "store_error"


class UnknownRoom(ChatStoreError):
    """The room does not exist."""

    code = "unknown_room"

    def __init__(self, room: str) -> None:
        super().__init__(f"unknown room {room!r}")
        self.room = room


class UnknownUser(ChatStoreError):
    """The user does not exist."""

    code = "unknown_user"

    def __init__(self, user: str) -> None:
        super().__init__(f"unknown user {user!r}")
        self.user = user


class NotMember(ChatStoreError):
    """The user is not a member of the room."""

    code = "not_member"

    def __init__(self, room: str, user: str) -> None:
        super().__init__(f"{user!r} is not a member of room {room!r}")
        self.room = room
        self.user = user


class StoreUnavailable(ChatStoreError):
    """The backend cannot be reached or is closed; retrying later may succeed."""

    code = "unavailable"


class StoreNotOpened(ChatStoreError):
    """``open()`` refused: the store is missing, unreadable, misconfigured or refuses us.

    Its message is one line for an operator (``bay chat serve`` prints it and exits 2); it
    never holds a secret.
    """

    code = "not_opened"


class StoreInUse(StoreNotOpened):
    """Another process owns the store: exactly one chat server may serve a store."""

    code = "in_use"


class ChatStore(Protocol):
    """Async storage of users, tokens, rooms, members, cursors and the per-room message log."""

    async def open(self) -> None:
        """Connect and create what is missing."""

    async def close(self) -> None:
        """Finish pending writes and release resources."""

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the backend answers."""

    async def put_user(self, user_id: str, display_name: str = "", kind: str = "person") -> User:
        """Create or update a user (tokens are kept)."""

    async def get_user(self, user_id: str) -> User | None:
        """The user, or None."""

    async def issue_token(self, user_id: str, label: str = "") -> IssuedToken:
        """Issue a new token for a user; only its digest is stored."""

    async def revoke_token(self, token_id: str) -> bool:
        """Revoke one token; False when it was unknown."""

    async def authenticate(self, token: str) -> User | None:
        """The user holding this token, or None."""

    async def put_room(
        self, room_id: str, retention: Retention | None = None, open: bool = True
    ) -> Room:
        """Create a room or update its settings (the log is kept)."""

    async def get_room(self, room_id: str) -> Room | None:
        """The room, or None."""

    async def list_rooms(self) -> list[Room]:
        """Every room."""

    async def join(self, room_id: str, user_id: str, cursor: int | None = None) -> Member:
        """Make the user a member (idempotent); a newcomer's cursor starts at the head."""

    async def leave(self, room_id: str, user_id: str) -> bool:
        """End a membership; False when there was none."""

    async def members(self, room_id: str) -> list[Member]:
        """The room's members with their cursors."""

    async def membership(self, user_id: str) -> list[Member]:
        """The user's memberships with their cursors."""

    def append(self, room_id: str, sender: str, key: str, body: str) -> Awaitable[Appended]:
        """Store a message durably and return its seq; a known key returns the first seq.

        An ``async def`` or a plain method returning a future (no task per message: the
        server attaches callbacks to it); either way the result comes only once it is durable.
        """

    def append_many(
        self, room_id: str, sender: str, items: Sequence[tuple[str, str]]
    ) -> Awaitable[Sequence[Appended | BaseException]]:
        """``append`` for several ``(key, body)`` of one sender, in order (a client's array of
        sends): each item's ``Appended``, or the error that refused that item; a failure of
        the whole write may raise instead. A key repeated within ``items`` is a duplicate of
        its first occurrence.
        """

    async def read(self, room_id: str, after: int, limit: int = 500) -> list[Message]:
        """Retained messages with seq > after, ascending."""

    async def ack(self, room_id: str, user_id: str, seq: int) -> int:
        """Advance the member's durable cursor to seq (never backwards); return the cursor."""

    async def ack_many(self, room_id: str, seqs: dict[str, int]) -> dict[str, int]:
        """``ack`` for several members in one durable write; return their cursors.

        Users who are not (or no longer) members are left out of the answer, not an error.
        """

    async def compact(self, now: float | None = None) -> dict[str, int]:
        """Delete what retention allows; return the number deleted per room."""
