"""The chat server: one Starlette app with the WebSocket protocol, the HTTP API and the page.

Where it sits: ``bay chat serve`` runs ``create_app`` under uvicorn. A WebSocket ``Session`` reads
client frames (``protocol.parse_frame``), calls ``ChatService``, and writes through one outgoing
queue, so delivery loops, replies and presence never interleave on the socket. Per subscribed room
a delivery loop sends the hub's published messages after the session's position, in seq order,
never more than ``WINDOW`` ahead of what the client acknowledged; while it waits at the room's
head it is parked in the hub, whose wake-ups queue new messages for it directly.

Route table::

    GET  /  /chat.js  /chat.css    the web page          (web/)
    WS   /ws                       protocol v1           (docs/chat-protocol.md)
    *    /api/v1/...               HTTP API for apps     (http_api)
    GET  /healthz /readyz          public (liveness, readiness)
    GET  /metrics                  admin token
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from servicebay.auth_throttle import AuthThrottle
from servicebay.chat import http_api
from servicebay.chat.headers import SecurityHeaders
from servicebay.chat.metrics import ChatMetrics
from servicebay.chat.protocol import (
    ERROR_CODES,
    MAX_MESSAGE_BYTES,
    VERSION,
    Ack,
    ClientFrame,
    Frames,
    Hello,
    Join,
    Leave,
    Ping,
    ProtocolError,
    Send,
    Typing,
    encode,
    encode_many,
    error_frame,
    parse_message,
)
from servicebay.chat.service import Backoff, Batch, ChatService, RoomHub, reap
from servicebay.chat.settings import ChatSettings
from servicebay.chat.stores import (
    Appended,
    ChatStore,
    ChatStoreError,
    StoreUnavailable,
    User,
    open_store,
)

log = structlog.get_logger("servicebay.chat")

WINDOW = 2048
BATCH = 256
MAX_INFLIGHT_SENDS = 512
# A connection's consecutive sends to one room are stored as one write of at most this many:
# each write is answered as a whole, so smaller writes let a client that keeps sending refill
# its window while the store works on the rest (at most MAX_INFLIGHT_SENDS in flight).
SUBMIT_CHUNK = 256
HELLO_TIMEOUT = 30.0  # seconds an unauthenticated connection may stay open
OUT_MESSAGE_BYTES = 256 * 1024  # stop packing frames into one message beyond this


class Outbox:
    """A session's outgoing frames: queued without waiting, taken all at once by its writer.

    (An ``asyncio.Queue`` costs a get per frame; the writer wants everything queued anyway.)
    """

    def __init__(self) -> None:
        """Start empty."""
        self._items: deque[str | None] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: str | None) -> None:
        """Queue a frame (or ``Frames``); None tells the writer to stop after what is queued."""
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def take(self) -> deque[str | None]:
        """Everything queued, once there is something."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        items, self._items = self._items, deque()
        return items


class Session:
    """One WebSocket connection: authentication, subscriptions, and the outgoing queue."""

    def __init__(self, ws: WebSocket, service: ChatService, throttle: AuthThrottle) -> None:
        """Serve one accepted socket."""
        self.ws = ws
        self.service = service
        self.throttle = throttle
        self.user: User | None = None
        self.out = Outbox()
        self.loops: dict[str, asyncio.Task[None]] = {}
        self.acked: dict[str, int] = {}
        self.position: dict[str, int] = {}  # per room: last seq queued for the socket
        self.ack_moved: dict[str, asyncio.Event] = {}
        self.sends: set[asyncio.Task[None]] = set()
        self.unanswered = 0  # sends not yet answered (at most MAX_INFLIGHT_SENDS)
        self.answered = asyncio.Event()  # set when one is answered
        self._writer: asyncio.Task[None] | None = None
        self.close_code: int | None = None

    async def run(self) -> None:
        """Read frames until the client goes; the writer runs alongside."""
        writer = self._writer = asyncio.create_task(self._write_out())
        try:
            while True:
                message = await self._receive()
                if message is None or message["type"] == "websocket.disconnect":
                    return
                raw = message.get("text")
                await self._handle(raw if raw is not None else message.get("bytes") or b"")
        except WebSocketDisconnect:
            return
        finally:
            await self._close(writer)

    async def _receive(self) -> Any:
        """The next socket event; an unauthenticated socket gets HELLO_TIMEOUT to say hello."""
        if self.user is not None:
            return await self.ws.receive()
        try:
            return await asyncio.wait_for(self.ws.receive(), HELLO_TIMEOUT)
        except TimeoutError:
            self._error("not_ready", f"no accepted hello within {HELLO_TIMEOUT:g} s; closing")
            self.out.put_nowait(None)  # the writer sends what is queued, then stops
            if self._writer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(self._writer), 5)
            await self.ws.close(code=1008)
            return None

    async def _close(self, writer: asyncio.Task[None]) -> None:
        for room, task in list(self.loops.items()):
            task.cancel()
            if self.user is not None and room in self.position:  # listening: its hub is loaded
                hub = await self.service.hub(room)
                self.service.went_offline(hub, self.user.id, self)
        for task in self.sends:
            task.cancel()
        writer.cancel()
        for task in [*self.loops.values(), *self.sends, writer]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def push(self, text: str) -> None:
        """Queue a frame (or several, as ``Frames``) for the socket."""
        self.out.put_nowait(text)

    def reply(self, frame: dict[str, Any]) -> None:
        """Queue a frame given as a dict."""
        self.push(encode(frame))

    async def _write_out(self) -> None:
        """Send queued frames; whatever queued up meanwhile goes as one JSON array message."""
        while True:
            items = await self.out.take()
            while items:
                parts: list[str] = []
                size, many, stop = 0, False, False
                while items and size < OUT_MESSAGE_BYTES:
                    if (item := items.popleft()) is None:
                        stop = True
                        break
                    parts.append(item)
                    size += len(item)
                    many = many or isinstance(item, Frames)
                if parts and not await self._send_text(
                    "[" + ",".join(parts) + "]" if many or len(parts) > 1 else parts[0]
                ):
                    return  # the socket is gone; the reader notices and ends the session
                if stop:
                    if self.close_code is not None:
                        with contextlib.suppress(Exception):  # closed by the client: same end
                            await self.ws.close(code=self.close_code)
                    return

    async def _send_text(self, text: str) -> bool:
        try:
            await self.ws.send_text(text)
        except Exception:
            return False
        return True

    # frames ----------------------------------------------------------------------------------

    async def _handle(self, raw: str | bytes) -> None:
        try:
            frames = parse_message(raw)
        except ProtocolError as exc:
            return self._error(exc.code, exc.message, exc.ref)
        run: list[Send] = []  # consecutive sends to one loaded room: stored as one write
        for frame in frames:
            if run and (not isinstance(frame, Send) or frame.room != run[0].room):
                self._submit(run)
                run = []
            if isinstance(frame, ProtocolError):
                self._error(frame.code, frame.message, frame.ref)
            elif isinstance(frame, Send) and self.user is not None:
                # Sends run concurrently so that one connection can keep the group commit
                # busy; at most MAX_INFLIGHT_SENDS unanswered (pushing back on a flood).
                while self.unanswered >= MAX_INFLIGHT_SENDS:
                    if run:
                        self._submit(run)  # what waits for a slot must not hold others back
                        run = []
                    self.answered.clear()
                    await self.answered.wait()
                self.unanswered += 1
                hub = self.service.loaded(frame.room)
                if hub is not None and self.user.id in hub.cursors:
                    run.append(frame)  # the usual case: no task, callbacks
                    if len(run) >= SUBMIT_CHUNK:
                        self._submit(run)
                        run = []
                    continue
                task = asyncio.create_task(self._guard(frame, self._send(self.user, frame)))
                self.sends.add(task)
                task.add_done_callback(self._send_done)
            else:
                await self._guard(frame, self._dispatch(frame))
        if run:
            self._submit(run)
        return None

    def _submit(self, sends: list[Send]) -> None:
        """Store a member's sends to one loaded room; ``sent`` (or errors) follow by callback."""
        hub = self.service.loaded(sends[0].room)
        assert hub is not None and self.user is not None  # checked by _handle, nothing awaited
        items = [(frame.key, frame.body) for frame in sends]
        try:
            stored = self.service.submit_many(hub, self.user, items)
        except ChatStoreError as exc:  # refused at once (a closed store)
            stored = asyncio.get_running_loop().create_future()
            stored.set_exception(exc)
        stored.add_done_callback(functools.partial(self._stored, sends))

    def _stored(self, sends: list[Send], stored: asyncio.Future[list[Any]]) -> None:
        self._answered(len(sends))
        if stored.cancelled():
            return
        if (failure := stored.exception()) is not None:
            outcomes: list[Any] = [failure] * len(sends)
        else:
            outcomes = stored.result()
        replies = []
        for frame, outcome in zip(sends, outcomes, strict=True):
            if isinstance(outcome, Appended):
                replies.append(_sent_frame(frame, outcome))
            elif isinstance(outcome, ChatStoreError):
                self._error(outcome.code, str(outcome), frame.key)
            else:  # a bug: logged; the client resends the key after reconnecting
                log.error("chat.send_failed", room=frame.room, exc_info=outcome)
        if replies:
            self.push(encode_many(replies))

    def _send_done(self, task: asyncio.Task[None]) -> None:
        self.sends.discard(task)
        self._answered(1)
        reap(task)

    def _answered(self, count: int) -> None:
        self.unanswered -= count
        self.answered.set()

    async def _guard(self, frame: ClientFrame, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except ProtocolError as exc:
            self._error(exc.code, exc.message, exc.ref)
        except ChatStoreError as exc:
            self._error(exc.code, str(exc), getattr(frame, "key", None))

    def _error(self, code: str, message: str, ref: str | None = None) -> None:
        self.service.metrics.errors.labels(code).inc()
        self.reply(error_frame(code, message, ref))

    async def _dispatch(self, frame: ClientFrame) -> None:
        if isinstance(frame, Hello):
            return await self._hello(frame)
        if isinstance(frame, Ping):
            return self.reply({"type": "pong", "id": frame.id})
        if self.user is None:
            raise ProtocolError("not_ready", "send hello with a token first")
        if isinstance(frame, Send):
            return await self._send(self.user, frame)
        if isinstance(frame, Ack):
            return await self._ack(self.user, frame)
        if isinstance(frame, Join):
            return await self._subscribe(self.user, frame.room, frame.after, "joined")
        if isinstance(frame, Leave):
            return await self._leave(self.user, frame.room)
        if isinstance(frame, Typing):
            return await self._typing(self.user, frame.room)
        raise ProtocolError("bad_frame", f"unexpected frame {frame!r}")

    async def _hello(self, frame: Hello) -> None:
        if frame.v != VERSION:
            raise ProtocolError("unsupported_version", f"this server speaks v{VERSION}")
        if self.user is not None:
            raise ProtocolError("bad_frame", "hello was already accepted on this connection")
        address = self.throttle.address(self.ws.scope)
        wait = self.throttle.retry_after(address)
        if wait is not None:
            # Refused unchecked, then closed: reconnecting sooner gets the same.
            message = f"{ERROR_CODES['too_many_attempts']} (in {wait} s)"
            self.service.metrics.errors.labels("too_many_attempts").inc()
            self.reply({**error_frame("too_many_attempts", message), "retry_after": wait})
            return self._shut(1008)
        try:
            user = await self.service.store.authenticate(frame.token)
            if user is None:
                http_api.failed_authentication(self.throttle, address)
                raise ProtocolError("unauthorized", "unknown or revoked token")
            members = await self.service.store.membership(user.id)
        except StoreUnavailable as exc:
            # The client's reconnect loop (with its backoff) is the retry: say why, then close.
            self._error(exc.code, f"{exc}; reconnect later")
            return self._shut(1013)  # try again later
        self.user = user
        positions: dict[str, int | None] = {m.room: None for m in members}
        positions.update(frame.rooms)
        self.reply({"type": "welcome", "v": VERSION, "user": user.id, "rooms": sorted(positions)})
        for room, after in positions.items():
            try:
                await self._subscribe(user, room, after, "joined")
            except ChatStoreError as exc:
                self._error(exc.code, str(exc))

    async def _subscribe(self, user: User, room: str, after: int | None, kind: str) -> None:
        """Subscribe now, or (store unavailable) keep trying in the room's task until it answers."""
        if room in self.loops:
            if room not in self.position:
                raise StoreUnavailable(f"room {room!r} waits for the store")
            # Already delivering: restarting at another position would resend what is queued
            # behind this reply. Say where delivery stands instead (after the queued messages).
            cursor = await self.service.ensure_member(room, user)
            hub = await self.service.hub(room)
            at = self.position[room]
            return self.reply(
                {"type": kind, "room": room, "from": at, "head": hub.head, "cursor": cursor}
            )
        opened: tuple[RoomHub, int, int] | None = None
        try:
            opened = await self._open(user, room, after)
        except StoreUnavailable as exc:
            self._room_waits(room, exc)
        else:
            self._start(user, room, kind, *opened)
        task = asyncio.create_task(self._room(user, room, after, kind, opened))
        task.add_done_callback(functools.partial(self._room_done, room))
        self.loops[room] = task

    async def _open(self, user: User, room: str, after: int | None) -> tuple[RoomHub, int, int]:
        """The room's hub, where delivery starts, and the member's cursor (joining open rooms)."""
        cursor = await self.service.ensure_member(room, user)
        hub = await self.service.hub(room)
        info = await self.service.store.get_room(room)
        floor = info.floor if info is not None else 0
        return hub, min(max(cursor if after is None else after, floor), hub.head), cursor

    def _start(
        self, user: User, room: str, kind: str, hub: RoomHub, start: int, cursor: int
    ) -> None:
        if start > cursor:
            self.service.request_ack(hub, user.id, start)  # the client says it has shown these
        self.position[room] = start
        self.acked[room] = start
        self.ack_moved[room] = asyncio.Event()
        self.reply({"type": kind, "room": room, "from": start, "head": hub.head, "cursor": cursor})
        self.service.went_online(hub, user.id, self, self.push)

    def _room_waits(self, room: str, exc: StoreUnavailable) -> None:
        self.service.metrics.errors.labels(exc.code).inc()
        message = f"{exc}; delivery of room {room!r} resumes by itself when the store is back"
        self.reply({**error_frame(exc.code, message), "room": room})

    async def _room(
        self,
        user: User,
        room: str,
        after: int | None,
        kind: str,
        opened: tuple[RoomHub, int, int] | None,
    ) -> None:
        """A subscribed room's task: open it (retrying an unavailable store), then deliver."""
        retry = Backoff()
        while opened is None:
            await retry.wait()
            try:
                opened = await self._open(user, room, after)
            except StoreUnavailable:
                continue
            except (ProtocolError, ChatStoreError) as exc:  # e.g. the room was deleted meanwhile
                self._error(exc.code, str(exc))
                return
            self._start(user, room, kind, *opened)
        await self._deliver(opened[0], user.id, opened[1])

    def _room_done(self, room: str, task: asyncio.Task[None]) -> None:
        """A room's task ended: by ``leave`` or close (cancelled), or by a bug (the session ends).

        A delivery that stops silently would leave the client waiting forever; ending the
        connection makes it reconnect and resume from its position.
        """
        failure = None if task.cancelled() else task.exception()
        if failure is None:
            if self.loops.get(room) is task:
                del self.loops[room]
            return
        log.error("chat.delivery_failed", room=room, exc_info=failure)
        self._error("internal", f"delivery of room {room!r} failed; reconnect")
        self._shut(1011)

    def _shut(self, code: int) -> None:
        """Send what is queued, then close the connection with ``code`` (the writer does)."""
        self.close_code = code
        self.out.put_nowait(None)

    async def _deliver(self, hub: RoomHub, user: str, position: int) -> None:
        """Send the room's published messages after ``position``, in order, within the window.

        An unavailable store (a read of history the hub no longer holds) is retried with
        backoff; the client is told once per outage, and delivery resumes where it stopped.
        """
        room = hub.room
        retry = Backoff()
        while True:
            room_window = WINDOW - (position - self.acked[room])
            if room_window <= 0:
                moved = self.ack_moved[room]
                moved.clear()
                await moved.wait()
                continue
            try:
                batch = await self.service.fetch_batch(hub, position, min(BATCH, room_window))
            except StoreUnavailable as exc:
                if not retry.failures:
                    self._room_waits(room, exc)
                await retry.wait()
                continue
            retry.reset()
            if batch is None:
                await self._park(hub, user)
                position = self.position[room]
                continue
            self._push_batch(hub, user, batch)
            position = batch.last

    def _push_batch(self, hub: RoomHub, user: str, batch: Batch) -> None:
        self.out.put_nowait(batch.text)
        self.service.count_batch(hub, user, batch.first, batch.last)
        self.position[hub.room] = batch.last

    async def _park(self, hub: RoomHub, user: str) -> None:
        """Wait at the room's head; meanwhile the hub's wake-ups queue new messages directly.

        With 100 receivers a wake-up would otherwise resume 100 delivery tasks only to queue
        one shared text each. Returns when the loop must run: the window is full, memory does
        not reach (a store read), or the batch was cut short (more to send).
        """
        room = hub.room
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def deliver() -> bool:
            if woken.done():
                return False
            try:
                position = self.position.get(room)
                if position is None:  # left the room meanwhile
                    woken.set_result(None)
                    return False
                limit = min(BATCH, WINDOW - (position - self.acked[room]))
                batch = hub.batch(position, limit) if limit > 0 else None
                if batch is not None:
                    self._push_batch(hub, user, batch)
                    if batch.last >= hub.head:
                        return True  # at the head again: stay parked
            except Exception as exc:  # a bug: the loop fails, and the session with it
                woken.set_exception(exc)
                return False
            woken.set_result(None)
            return False

        hub.parked[self] = deliver
        try:
            await woken
        finally:
            if hub.parked.get(self) is deliver:
                del hub.parked[self]

    async def _send(self, user: User, frame: Send) -> None:
        appended = await self.service.send(frame.room, user, frame.key, frame.body)
        self.reply(_sent_frame(frame, appended))

    async def _ack(self, user: User, frame: Ack) -> None:
        hub = await self.service.room_for(frame.room, user)
        if not await self.service.is_member(hub, user.id):
            raise ProtocolError("not_member", f"not a member of room {frame.room!r}")
        seq = min(frame.seq, hub.head)
        if seq > self.acked.get(frame.room, 0):
            self.acked[frame.room] = seq
            if (moved := self.ack_moved.get(frame.room)) is not None:
                moved.set()
        self.service.request_ack(hub, user.id, seq)

    async def _leave(self, user: User, room: str) -> None:
        hub = await self.service.room_for(room, user)  # a closed room: as if missing
        if (task := self.loops.pop(room, None)) is not None:
            task.cancel()
            self.position.pop(room, None)
            self.service.went_offline(hub, user.id, self)
        await self.service.leave(room, user)
        self.reply({"type": "left", "room": room})

    async def _typing(self, user: User, room: str) -> None:
        hub = await self.service.room_for(room, user)
        if not await self.service.is_member(hub, user.id):
            raise ProtocolError("not_member", f"not a member of room {room!r}")
        hub.broadcast(encode({"type": "typing", "room": room, "user": user.id}), skip=self)


def _sent_frame(frame: Send, appended: Appended) -> dict[str, Any]:
    return {
        "type": "sent",
        "room": frame.room,
        "key": frame.key,
        "seq": appended.seq,
        "ts": appended.sent_at,
        "duplicate": appended.duplicate,
    }


# the app ---------------------------------------------------------------------------------------


async def chat_socket(ws: WebSocket) -> None:
    """WebSocket endpoint of protocol v1."""
    service: ChatService = ws.app.state.service
    await ws.accept()
    service.metrics.sessions.inc()
    try:
        await Session(ws, service, ws.app.state.throttle).run()
    finally:
        service.metrics.sessions.dec()


async def page(request: Request) -> Response:
    """The web page (plain HTML + JS, no build step)."""
    return HTMLResponse(_asset("index.html"))


async def page_script(request: Request) -> Response:
    """The page's script."""
    return Response(_asset("chat.js"), media_type="text/javascript")


async def page_style(request: Request) -> Response:
    """The page's style sheet (a file, as the page's policy refuses inline style)."""
    return Response(_asset("chat.css"), media_type="text/css")


def _asset(name: str) -> str:
    return resources.files("servicebay.chat").joinpath("web", name).read_text()


async def healthz(request: Request) -> Response:
    """Liveness: the process answers."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Readiness: the store answers."""
    service: ChatService = request.app.state.service
    try:
        await service.store.ping()
    except ChatStoreError as exc:
        return JSONResponse({"status": "unavailable", "reason": exc.code}, status_code=503)
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    """Prometheus exposition (admin token: it names every room, closed ones included)."""
    if (refused := http_api.require_admin(request)) is not None:
        return refused
    service: ChatService = request.app.state.service
    body = service.metrics.render(service.lag())
    return Response(body, media_type="text/plain; version=0.0.4")


def create_app(
    settings: ChatSettings | None = None, *, store: ChatStore | None = None
) -> Starlette:
    """The chat server as an ASGI app; the lifespan opens the store and creates default rooms."""
    settings = settings or ChatSettings()
    service = ChatService(
        store or open_store(settings.store), ChatMetrics(), compact_every=settings.compact_every
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()  # the store's owner lock first: a second server stops here
        try:
            for room in settings.rooms:
                if await service.store.get_room(room) is None:
                    await service.store.put_room(room, settings.retention)
            app.state.admin_token = settings.admin_secret()
            # `bay chat serve` printed the settings already; this says the store is open.
            log.info("chat.started", store=settings.store)
            yield
        finally:
            await service.stop()

    routes: list[BaseRoute] = [
        Route("/", page),
        Route("/chat.js", page_script),
        Route("/chat.css", page_style),
        WebSocketRoute("/ws", chat_socket),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        *http_api.routes(),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)], lifespan=lifespan)
    app.state.service = service
    app.state.settings = settings
    app.state.throttle = settings.throttle()
    return app


def uvicorn_options() -> dict[str, Any]:
    """How ``bay chat serve`` runs uvicorn (the tests serve with the same)."""
    return {
        # Messages up to twice the protocol limit reach the server, which answers "too_large"
        # and keeps the connection; bigger ones are closed by the WebSocket layer (1009).
        "ws_max_size": 2 * MAX_MESSAGE_BYTES,
        # Chat frames are small; compressing each costs more CPU than it saves.
        "ws_per_message_deflate": False,
        "ws_ping_interval": 10,
        "ws_ping_timeout": 10,
        # The client's address is the socket's: uvicorn would otherwise take it from an
        # X-Forwarded-For header sent from 127.0.0.1, and anyone on the host could name a new
        # address with every request and escape the failed-authentication throttle (which
        # reads the header itself, from trusted_proxies only).
        "proxy_headers": False,
    }
