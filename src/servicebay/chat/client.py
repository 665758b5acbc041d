"""Python client of the chat protocol v1 that reconnects and resumes by itself.

Where it sits: apps (the call center, tests, benchmarks) use ``ChatClient`` over a WebSocket to
a chat server. Guarantees, kept across dropped connections and server restarts:

- ``send`` returns the room seq only after the server stored the message durably; until then the
  message stays pending and is resent with the SAME idempotency key on every reconnect, so it is
  stored once whatever was lost on the way.
- ``messages()`` yields each room's messages in seq order, each once: on reconnect the client
  tells the server, per room, the last seq it handed to the app; the server replays after it.
  A seq already handed over is dropped; a hole (never expected) makes the client reconnect and
  resume from its position rather than skip a message.
- What is handed over is acknowledged (cumulative ack per room), which moves the durable cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog
import websockets
from websockets.asyncio.client import ClientConnection, connect

from servicebay.chat.protocol import MAX_FRAMES_PER_MESSAGE, MAX_MESSAGE_BYTES, VERSION

log = structlog.get_logger("servicebay.chat.client")

RETRYABLE = {"unavailable", "not_ready"}
# Acks are cumulative: one per room per 50 ms is plenty, and with 100 receivers in a room each
# ack frame costs the server as much as a delivery (measured: 20 ms → 50 ms cut the server's ack
# frames by 2.5x at 500 msg/s). The durable cursor trails by that much more: redelivery, never loss.
ACK_EVERY = 0.05
# ...unless a room has this many unacknowledged messages: half the server's window of 2,048
# (docs/chat-protocol.md, flow control). At 50 ms alone, a room faster than ~40,000 msg/s would
# fill the window and wait for the timer.
ACK_AT = 1024


class ChatError(Exception):
    """The server refused a frame for good (``code`` as in the protocol's error frame)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ChatMessage:
    """A message handed to the app."""

    room: str
    seq: int
    sender: str
    key: str
    body: str
    ts: float


@dataclass
class _Pending:
    room: str
    body: str
    fut: asyncio.Future[int]


@dataclass
class ClientStats:
    """What the client absorbed on the app's behalf."""

    connects: int = 0
    disconnects: int = 0
    duplicates_dropped: int = 0
    holes: int = 0
    repositioned: int = 0
    resent: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class ChatClient:
    """A resuming chat connection (use ``async with``)."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        positions: dict[str, int | None] | None = None,
        retry_min: float = 0.05,
        retry_max: float = 2.0,
    ) -> None:
        """Connect to ``url`` (``ws://host:port/ws``) as the token's user.

        ``positions``: per room, the last seq the app already has (None: the server's cursor).
        """
        self.url = url
        self._token = token
        self.positions: dict[str, int | None] = dict(positions or {})
        self.retry_min, self.retry_max = retry_min, retry_max
        self.user: str | None = None
        self.presence: dict[str, list[str]] = {}
        self.delivered: dict[str, int] = {}
        self.stats = ClientStats()
        self.ready = asyncio.Event()
        self._pending: dict[str, _Pending] = {}
        self._inbox: asyncio.Queue[ChatMessage] = asyncio.Queue()
        self._ws: ClientConnection | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._retries: set[asyncio.Task[None]] = set()
        self._outbox: list[dict[str, Any]] = []
        self._to_ack: dict[str, int] = {}
        self._ack_timer: asyncio.TimerHandle | None = None
        self._acked: dict[str, int] = {}  # per room: the last seq acknowledged

    async def __aenter__(self) -> ChatClient:
        """Start connecting (returns at once; ``ready`` is set once welcomed)."""
        self._runner = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close for good."""
        await self.close()

    async def close(self) -> None:
        """Stop reconnecting and close the socket; pending sends fail with ``ChatError``."""
        self._closing = True
        if self._ack_timer is not None:
            self._ack_timer.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        for pending in self._pending.values():
            if not pending.fut.done():
                pending.fut.set_exception(ChatError("closed", "the client was closed"))
                # Whoever awaited it hears it through send(); nobody else needs a warning.
                pending.fut.exception()

    async def reconnect(self) -> None:
        """Drop the connection now; the client reconnects and resumes by itself."""
        if self._ws is not None:
            await self._ws.close()

    # sending -----------------------------------------------------------------------------------

    async def send(self, room: str, body: str, key: str | None = None) -> int:
        """Send a message; returns its room seq once durably stored (retries until then)."""
        key = key or uuid.uuid4().hex
        pending = self._pending.get(key)
        if pending is None:
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            pending = self._pending[key] = _Pending(room, body, fut)
            if self.ready.is_set():
                await self._send_frame({"type": "send", "room": room, "key": key, "body": body})
        return await asyncio.shield(pending.fut)

    async def join(self, room: str, after: int | None = None) -> None:
        """Join (open rooms) and subscribe; remembered for reconnects."""
        self.positions.setdefault(room, after)
        if self.ready.is_set():
            await self._send_frame({"type": "join", "room": room, "after": self.positions[room]})

    async def typing(self, room: str) -> None:
        """Tell the room the user is typing."""
        await self._send_frame({"type": "typing", "room": room})

    async def _send_frame(self, frame: dict[str, Any]) -> None:
        self._queue(frame)

    def _queue(self, frame: dict[str, Any]) -> None:
        """Queue a frame for the current connection; frames queued together go as one array."""
        ws = self._ws
        if ws is None:
            return  # sends are resent after the next welcome; acks follow from positions
        box = self._outbox
        box.append(frame)
        if len(box) == 1:
            flush = asyncio.create_task(self._flush(ws, box))
            self._track(flush)

    def _track(self, task: asyncio.Task[None]) -> None:
        """Keep a background task until done; a failure is logged, never left unretrieved."""
        self._retries.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._retries.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("chat.client.task_failed", exc_info=exc)

    async def _flush(self, ws: ClientConnection, box: list[dict[str, Any]]) -> None:
        await asyncio.sleep(0)  # let frames queued in this same turn join the message
        frames = list(box)
        box.clear()
        if ws is not self._ws or not frames:
            return  # that connection is gone; a new one starts with a new box
        with contextlib.suppress(websockets.ConnectionClosed):
            for text in _messages(frames):
                await ws.send(text)

    # receiving ---------------------------------------------------------------------------------

    async def messages(self) -> AsyncIterator[ChatMessage]:
        """Each room's messages in order, each once, across reconnects."""
        while True:
            yield await self._inbox.get()

    async def next_message(self) -> ChatMessage:
        """The next message (wrap in ``asyncio.timeout`` to bound the wait)."""
        return await self._inbox.get()

    def received(self) -> list[ChatMessage]:
        """Every message handed over but not yet taken, without waiting."""
        taken = []
        while not self._inbox.empty():
            taken.append(self._inbox.get_nowait())
        return taken

    # the connection loop -----------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self.retry_min
        while not self._closing:
            try:
                async with connect(self.url, max_size=None, compression=None) as ws:
                    self._ws = ws
                    self._outbox = []
                    self.stats.connects += 1
                    await ws.send(json.dumps(self._hello()))
                    async for raw in ws:
                        if await self._on_socket_message(ws, raw):
                            break  # a hole: resume from our position on a new connection
            except (OSError, websockets.WebSocketException, TimeoutError):
                self.stats.disconnects += 1  # expected: the loop reconnects and resumes
            finally:
                self._ws = None
                if self.ready.is_set():
                    delay = self.retry_min
                self.ready.clear()
            if not self._closing:
                await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter
                delay = min(delay * 2, self.retry_max)

    def _hello(self) -> dict[str, Any]:
        return {"type": "hello", "v": VERSION, "token": self._token, "rooms": self.positions}

    async def _on_socket_message(self, ws: ClientConnection, raw: str | bytes) -> bool:
        """Handle one socket message; True when the connection must be renewed (a hole)."""
        data = json.loads(raw)
        frames = data if isinstance(data, list) else [data]
        touched: dict[str, int] = {}
        for frame in frames:
            kind = frame.get("type")
            if kind == "msg":
                if not self._accept(frame, touched):
                    self._ack(touched)
                    return True
            else:
                await self._on_control(ws, frame)
        self._ack(touched)
        return False

    def _ack(self, touched: dict[str, int]) -> None:
        """Acknowledge what was handed over, at most every ACK_EVERY seconds per client, or at
        once when a room has ACK_AT unacknowledged (before the server's window fills).

        Acks are cumulative, so a burst needs one; the server's durable cursor then trails by
        at most ACK_EVERY, and a reconnect carries the exact position anyway.
        """
        self._to_ack.update(touched)
        if not self._to_ack:
            return
        if any(seq - self._acked.get(room, 0) >= ACK_AT for room, seq in touched.items()):
            if self._ack_timer is not None:
                self._ack_timer.cancel()
            self._send_acks()
        elif self._ack_timer is None:
            loop = asyncio.get_running_loop()
            self._ack_timer = loop.call_later(ACK_EVERY, self._send_acks)

    def _send_acks(self) -> None:
        self._ack_timer = None
        for room, seq in self._to_ack.items():
            self._queue({"type": "ack", "room": room, "seq": seq})
            self._acked[room] = seq
        self._to_ack.clear()

    def _accept(self, frame: dict[str, Any], touched: dict[str, int]) -> bool:
        room, seq = frame["room"], frame["seq"]
        last = self.positions.get(room)
        if last is not None and seq <= last:
            self.stats.duplicates_dropped += 1
            return True
        if last is not None and seq != last + 1:
            self.stats.holes += 1
            return False
        self.positions[room] = seq
        touched[room] = seq
        self._inbox.put_nowait(
            ChatMessage(room, seq, frame["from"], frame["key"], frame["body"], frame["ts"])
        )
        return True

    async def _on_control(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "welcome":
            self.user = frame["user"]
            for room in frame["rooms"]:
                self.positions.setdefault(room, None)
            await self._resend(ws)
            self.ready.set()
        elif kind == "joined":
            # Delivery starts after `from`. Above our position: history we never saw was
            # deleted (floor). Below it: the server's log is shorter than what we saw (a reset
            # store); trusting it beats dropping its new messages as "already shown".
            room, start = frame["room"], frame["from"]
            if self.positions.get(room) not in (None, start):
                self.stats.repositioned += 1
            self.positions[room] = start
        elif kind == "sent":
            pending = self._pending.pop(frame["key"], None)
            if pending is not None and not pending.fut.done():
                pending.fut.set_result(frame["seq"])
        elif kind == "receipt":
            self.delivered[frame["room"]] = frame["delivered"]
        elif kind == "presence":
            self.presence[frame["room"]] = frame["online"]
        elif kind == "error":
            self._on_error(frame)

    async def _retry(self, key: str, pending: _Pending) -> None:
        await asyncio.sleep(0.2)
        if self._pending.get(key) is pending and self.ready.is_set():
            await self._send_frame(
                {"type": "send", "room": pending.room, "key": key, "body": pending.body}
            )

    async def _resend(self, ws: ClientConnection) -> None:
        for key, pending in list(self._pending.items()):
            self.stats.resent += 1
            self._queue({"type": "send", "room": pending.room, "key": key, "body": pending.body})

    def _on_error(self, frame: dict[str, Any]) -> None:
        code = frame.get("code", "error")
        self.stats.errors[code] = self.stats.errors.get(code, 0) + 1
        ref = frame.get("ref")
        pending = self._pending.get(ref) if isinstance(ref, str) else None
        if pending is None:
            if code in RETRYABLE and "room" in frame:
                # The server retries the room by itself and carries on; nothing to do here.
                log.info("chat.client.room_waits", room=frame["room"], message=frame.get("message"))
                return
            log.warning("chat.client.error", code=code, message=frame.get("message"))
            return
        if code in RETRYABLE:
            # Stays pending with the same key: resent shortly, and after every welcome.
            retry = asyncio.create_task(self._retry(ref, pending))  # type: ignore[arg-type]
            self._track(retry)
            return
        del self._pending[ref]  # type: ignore[arg-type]
        if not pending.fut.done():
            pending.fut.set_exception(ChatError(code, frame.get("message", "")))


def _messages(frames: list[dict[str, Any]]) -> Iterator[str]:
    """The frames as WebSocket messages the server takes: a frame alone, or arrays of at most
    MAX_FRAMES_PER_MESSAGE frames and MAX_MESSAGE_BYTES (a burst of sends in one loop turn can
    be more; the server refuses a bigger array whole, and its sends would go unanswered)."""
    if len(frames) == 1:
        yield json.dumps(frames[0])
        return
    parts: list[str] = []
    size = 2  # the brackets
    for frame in frames:
        text = json.dumps(frame)  # ASCII (escaped): its length is its size in bytes
        if parts and (
            len(parts) == MAX_FRAMES_PER_MESSAGE or size + len(text) + 1 > MAX_MESSAGE_BYTES
        ):
            yield "[" + ",".join(parts) + "]"
            parts, size = [], 2
        parts.append(text)
        size += len(text) + 1
    yield "[" + ",".join(parts) + "]"
