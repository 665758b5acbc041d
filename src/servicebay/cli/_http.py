"""`HttpProtocol`: the HTTP/1.1 connection behind ``bay broker serve`` (httptools, one write).

uvicorn still runs the server: sockets, workers, signals, the lifespan, the date header and the
graceful shutdown (it asks every connection to `shutdown`, waits for their requests, then runs
the app's shutdown). This protocol replaces only uvicorn's per-request path, which cost a
served broker request about a fifth of its CPU on the build machine: a request-response cycle
object, an ``asyncio.Event`` and several layers per request, and two socket writes per answer
(status line and headers, then the body, each a segment the client may wake up for). Here the
head waits for the body and both leave in one ``write``.

What a connection does:

- parses with httptools (llhttp): keep-alive by default on HTTP/1.1, ``Connection: close`` or
  HTTP/1.0 without keep-alive closes after the answer;
- waits on the client for the config's ``timeout_keep_alive`` seconds at a time: an idle
  connection is closed after it; a request head has that long from its first byte, however
  often bytes come (a head that waits behind an answer in progress gets the time afresh once
  it is its turn); a request body being read may pause that long between two pieces, after
  which the app receives ``http.disconnect`` and the connection is closed;
- answers pipelined requests in order, one at a time (reading pauses while one waits);
- refuses what it cannot parse with 400, a request line plus headers larger than
  `MAX_HEAD_BYTES` (or more than `MAX_HEADERS` fields) with 431, and closes the connection;
  the bytes of an open head are counted as they arrive, so one header line that never ends is
  refused once past the limit (the parser would otherwise keep gathering it);
- hands the body to the app as it comes (reading pauses past `HIGH_WATER` bytes not yet
  received by the app); an answer sent before the whole body was read closes the connection,
  so an oversized body is never read to its end;
- ``Expect: 100-continue`` is answered when the app first asks for the body;
- a client gone mid-request: the app's ``receive`` says ``http.disconnect``, its answer is
  dropped, and the request still runs to its end (a write it started is recorded);
- adds ``Content-Length`` when the app gave none and sent its body at once, else chunked
  encoding; ``HEAD`` answers carry no body; 1xx/204/304 never a body;
- an exception in the app before its answer started is a 500, after it a closed connection.
"""

from __future__ import annotations

import asyncio
import http
import logging
import re
from collections import deque
from typing import Any, cast
from urllib.parse import unquote

import httptools
from uvicorn.config import Config
from uvicorn.server import ServerState

__all__ = ["HIGH_WATER", "MAX_HEADERS", "MAX_HEAD_BYTES", "HttpProtocol"]

#: Request line plus header fields, in bytes, beyond which a request is refused with 431.
MAX_HEAD_BYTES = 64 * 1024
#: Header fields of one request beyond which it is refused with 431.
MAX_HEADERS = 200
#: Body bytes buffered for the app beyond which reading pauses until the app takes them.
HIGH_WATER = 64 * 1024
#: How long, and how many bytes, a connection closed with a request unread still drops.
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 * 1024 * 1024

log = logging.getLogger("servicebay.broker.http")
access = logging.getLogger("uvicorn.access")

_STATUS = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, phrase.encode())
    for code, phrase in ((s.value, s.phrase) for s in http.HTTPStatus)
}
_BAD_NAME = re.compile(b'[\x00-\x1f\x7f()<>@,;:\\[\\]={} \t\\\\"]')
_BAD_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")
_CLOSE = b"connection: close\r\n"
_CHUNKED = b"transfer-encoding: chunked\r\n"
_DECIDED = (b"content-length", b"transfer-encoding", b"connection")


def _status_line(code: int) -> bytes:
    line = _STATUS.get(code)
    return line if line is not None else b"HTTP/1.1 %d \r\n" % code


class _Exchange:
    """One request and its answer: what the app receives and what it has sent."""

    __slots__ = (
        "body",
        "chunked",
        "complete",
        "continue_wanted",
        "head",
        "head_only",
        "keep_alive",
        "left",
        "more_body",
        "scope",
        "started",
        "status",
        "taken",
        "waiter",
    )

    def __init__(self, scope: dict[str, Any], keep_alive: bool, continue_wanted: bool) -> None:
        self.scope = scope
        self.keep_alive = keep_alive
        self.continue_wanted = continue_wanted
        self.head_only = scope["method"] == "HEAD"
        self.body = bytearray()
        self.more_body = True  # the request's body has not all arrived yet
        self.taken = False  # the app has received the end of the request's body
        self.waiter: asyncio.Future[None] | None = None  # the app waits for body or disconnect
        self.started = False  # the app has started its answer
        self.head: Any = None  # the answer's headers, held until its first body message
        self.complete = False  # the answer has been written in full
        self.status = 0
        self.chunked = False
        self.left: int | None = None  # body bytes the answer's Content-Length still owes

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection (see the module docstring); uvicorn's ``http`` protocol class."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.state = server_state
        self.app_state = app_state
        self.keep_alive_timeout = config.timeout_keep_alive
        self.access_log = config.access_log and access.isEnabledFor(logging.INFO)
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.server: tuple[str, int] | None = None
        self.client: tuple[str, int] | None = None
        self.running: _Exchange | None = None  # the request the app is answering
        self.waiting: deque[_Exchange] = deque()  # pipelined requests, parsed, not yet run
        self.parsing: _Exchange | None = None  # the request whose body is arriving
        self.read_paused = False
        self.write_paused: asyncio.Future[None] | None = None
        # What the connection waits on the client for ("idle", "head", "body"; "linger"), timed.
        self.timer: asyncio.TimerHandle | None = None
        self.timer_kind: str | None = None
        self.body_came = False  # body bytes were parsed from the data being fed
        self.closing = False
        self.lingering = False  # answered and half-closed: what still comes is dropped
        self.lingered = 0
        self.refusal: tuple[int, str] | None = None  # owed once the requests before it are
        # Per request, while its head is parsed.
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.head_open = False  # a request head has begun and not ended
        self.head_raw = 0  # bytes received while it is open

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        # uvicorn's type names its own protocols; the set holds anything with shutdown().
        self.state.connections.add(self)  # type: ignore[arg-type]
        self.server = _address(transport.get_extra_info("sockname"))
        self.client = _address(transport.get_extra_info("peername"))
        self._watch_client()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        self.closing = True
        self._disarm_timer()
        for exchange in (self.running, self.parsing, *self.waiting):
            if exchange is not None:
                exchange.wake()
        self.waiting.clear()
        if self.write_paused is not None and not self.write_paused.done():
            self.write_paused.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            self.lingered += len(data)
            if self.lingered > LINGER_BYTES:
                self._close()
            return
        if self.head_open:
            self.head_raw += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol upgrade here: the request is answered over HTTP/1.1, and since what
            # follows it is not HTTP/1.1 to the parser, the connection closes after the answer.
            last = self.waiting[-1] if self.waiting else self.running
            if last is None:
                self._close()
            else:
                last.keep_alive = False
                self._pause_reading()
        except httptools.HttpParserError as error:
            if isinstance(error.__context__, _HeadTooLarge):
                self._refuse(431, "request header fields too large")
            else:
                self._refuse(400, "invalid HTTP request")
            return
        if self.head_open and self.head_raw > MAX_HEAD_BYTES:
            # httptools reports a header only once it has ended, gathering its pieces until then.
            self._refuse(431, "request header fields too large")
            return
        progress, self.body_came = self.body_came, False
        self._watch_client(progress)

    def pause_writing(self) -> None:
        if self.write_paused is None or self.write_paused.done():
            self.write_paused = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.write_paused is not None and not self.write_paused.done():
            self.write_paused.set_result(None)

    def shutdown(self) -> None:
        """The server stops: close when idle, else after the answer being worked on."""
        self.waiting.clear()  # pipelined, not started: the client sends them again
        if self.running is None:
            self._close()
        else:
            self.running.keep_alive = False
            if not self.running.more_body:  # nothing more of its own to read
                self._pause_reading()

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.head_bytes = 0
        self.head_open = True
        self.head_raw = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        if len(self.headers) >= MAX_HEADERS:
            raise _HeadTooLarge
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.head_open = False
        parser = self.parser
        version = parser.get_http_version()
        target = httptools.parse_url(self.url)
        raw_path = target.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": version,
            "method": parser.get_method().decode("ascii"),
            "scheme": "http",
            "path": path,
            "raw_path": raw_path,
            "query_string": target.query or b"",
            "root_path": "",
            "headers": self.headers,
            "server": self.server,
            "client": self.client,
            "state": self.app_state.copy(),
        }
        expects = any(n == b"expect" and v.lower() == b"100-continue" for n, v in self.headers)
        keep_alive = version != "1.0" and parser.should_keep_alive()
        exchange = _Exchange(scope, keep_alive, expects)
        self.parsing = exchange
        if self.running is None:
            self._run(exchange)
        else:
            self.waiting.append(exchange)
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        if exchange is None or exchange.complete:
            return  # answered already: the connection closes, the rest is not kept
        exchange.body += body
        self.body_came = True
        if len(exchange.body) > HIGH_WATER:
            self._pause_reading()
        exchange.wake()

    def on_message_complete(self) -> None:
        exchange = self.parsing
        if exchange is not None:
            exchange.more_body = False
            exchange.wake()
        self.parsing = None

    # -- running the app ---------------------------------------------------------------------

    def _run(self, exchange: _Exchange) -> None:
        self.running = exchange
        task = self.loop.create_task(self._answer(exchange))
        self.state.tasks.add(task)
        task.add_done_callback(self.state.tasks.discard)

    async def _answer(self, exchange: _Exchange) -> None:
        async def receive() -> dict[str, Any]:
            return await self._receive(exchange)

        async def send(message: dict[str, Any]) -> None:
            await self._send(exchange, message)

        try:
            await self.app(exchange.scope, receive, send)
        except BaseException as error:
            if not isinstance(error, Exception):
                self._close()
                raise
            log.error("exception in the ASGI app", exc_info=error)
            self._fail(exchange)
        else:
            if not exchange.complete and not self.closing:
                log.error("the ASGI app returned without a complete answer")
                self._fail(exchange)
        finally:
            self._done(exchange)

    async def _receive(self, exchange: _Exchange) -> dict[str, Any]:
        if exchange.continue_wanted:
            exchange.continue_wanted = False
            if exchange.more_body and not exchange.body and not self.closing:
                self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._watch_client()  # the body is awaited from now on
        while not exchange.body and exchange.more_body and not self._gone(exchange):
            exchange.waiter = self.loop.create_future()
            await exchange.waiter
            exchange.waiter = None
        if exchange.body or not (exchange.more_body or exchange.taken):
            exchange.taken = not exchange.more_body
            body, exchange.body = bytes(exchange.body), bytearray()
            if self.read_paused and not self.waiting and self.refusal is None:
                self._resume_reading()
            return {"type": "http.request", "body": body, "more_body": exchange.more_body}
        while not self._gone(exchange):  # the body was read: wait for the end of the answer
            exchange.waiter = self.loop.create_future()
            await exchange.waiter
            exchange.waiter = None
        return {"type": "http.disconnect"}

    def _gone(self, exchange: _Exchange) -> bool:
        return self.closing or exchange.complete

    async def _send(self, exchange: _Exchange, message: dict[str, Any]) -> None:
        if self.closing:
            return  # the client is gone, or its connection broke: the answer has no reader
        if self.write_paused is not None and not self.write_paused.done() and not self.closing:
            await self.write_paused
        kind = message["type"]
        if kind == "http.response.start":
            if exchange.started:
                raise RuntimeError("the answer has started already")
            exchange.started = True
            exchange.status = int(message["status"])
            exchange.head = message.get("headers", ())
        elif kind == "http.response.body":
            if not exchange.started or exchange.complete:
                raise RuntimeError(f"unexpected {kind} message")
            self._send_body(exchange, bytes(message.get("body", b"")), message.get("more_body"))
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def _send_body(self, exchange: _Exchange, body: bytes, more: bool | None) -> None:
        head, exchange.head = exchange.head, None
        out = b""
        if head is not None:
            out = self._head(exchange, head, None if more else len(body))
        if exchange.head_only or exchange.status in (204, 304):
            body = b""
        elif exchange.chunked:
            body = (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + (
                b"" if more else b"0\r\n\r\n"
            )
        elif exchange.left is not None:
            exchange.left -= len(body)
            if exchange.left < 0 or (not more and exchange.left):
                self._write(out)  # the head, so the client sees the answer break off
                self._close()
                raise RuntimeError("the body does not match the answer's Content-Length")
        self._write(out + body if out else body)
        if not more:
            exchange.complete = True
            exchange.wake()
            if self.access_log:
                self._log_access(exchange)

    def _head(self, exchange: _Exchange, headers: Any, length: int | None) -> bytes:
        """The status line and headers of the answer (``length``: its whole body's, if known)."""
        lines = [_status_line(exchange.status)]
        given: int | None = None
        for name, value in self.state.default_headers:
            lines.append(b"%b: %b\r\n" % (name, value))
        for raw_name, raw_value in headers:
            name, value = bytes(raw_name).lower(), bytes(raw_value)
            if _BAD_NAME.search(name) or _BAD_VALUE.search(value):
                raise RuntimeError("invalid HTTP header in the answer")
            if name in _DECIDED:  # this protocol writes them
                if name == b"content-length":
                    given = exchange.left = int(value)
                elif name == b"connection" and b"close" in value.lower():
                    exchange.keep_alive = False
                continue
            lines.append(b"%b: %b\r\n" % (name, value))
        no_body = exchange.status in (204, 304) or exchange.status < 200
        if given is not None:
            lines.append(b"content-length: %d\r\n" % given)
        elif length is not None:
            if not no_body:
                lines.append(b"content-length: %d\r\n" % length)
        elif not no_body and not exchange.head_only:
            exchange.chunked = True
            lines.append(_CHUNKED)
        if exchange.head_only or no_body:
            exchange.left = None
        if exchange.more_body or self.closing:
            exchange.keep_alive = False  # the rest of the request's body is not read
        if not exchange.keep_alive:
            lines.append(_CLOSE)
        lines.append(b"\r\n")
        return b"".join(lines)

    def _fail(self, exchange: _Exchange) -> None:
        if exchange.started or self.closing:
            self._close()
            return
        exchange.started = True
        exchange.status = 500
        exchange.keep_alive = False
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        self._write(self._head(exchange, headers, 21) + b"Internal Server Error")
        exchange.complete = True
        if self.access_log:
            self._log_access(exchange)

    def _done(self, exchange: _Exchange) -> None:
        """The app has finished: next pipelined request, idle, or close."""
        self.running = None
        self.state.total_requests += 1
        if self.closing:
            return
        if not exchange.keep_alive:
            if exchange.more_body:
                self._linger()
            else:
                self._close()
            return
        if self.waiting:
            self._run(self.waiting.popleft())
            if not self.waiting and self.refusal is None:
                self._resume_reading()
            return
        if self.refusal is not None:
            self._send_refusal()
            return
        self._resume_reading()
        self._watch_client()

    # -- the connection ----------------------------------------------------------------------

    def _count_head(self, size: int) -> None:
        self.head_bytes += size
        if self.head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge

    def _refuse(self, status: int, reason: str) -> None:
        """A request could not be parsed: it is answered `status` in its turn, then the
        connection closes (nothing after it is read)."""
        log.warning("refused an HTTP request: %d %s", status, reason)
        broken, self.parsing = self.parsing, None  # None: the break is in a request's head
        if broken is not None and broken is self.running:
            if broken.started:
                self._close()  # half an answer is out: the client sees the connection close
                return
            broken.complete = True  # its body broke off: the app's answer is dropped
            broken.wake()
        elif broken is not None:
            self.waiting.remove(broken)
        self.refusal = (status, reason)
        self._pause_reading()
        if self.running is None or self.running is broken:
            self._send_refusal()

    def _send_refusal(self) -> None:
        status, reason = self.refusal or (400, "")
        body = reason.encode()
        self._write(
            _status_line(status)
            + b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n" % len(body)
            + _CLOSE
            + b"\r\n"
            + body
        )
        self._linger()

    def _write(self, data: bytes) -> None:
        if not self.closing and self.transport is not None and data:
            self.transport.write(data)

    def _linger(self) -> None:
        """Close after an answer while the client may still be sending: a close with unread
        data resets the connection, and the client could lose the answer. So the write side
        is shut, and what comes is dropped for up to LINGER_SECONDS or LINGER_BYTES."""
        transport = self.transport
        if self.closing or transport is None or not transport.can_write_eof():
            self._close()
            return
        transport.write_eof()
        self.closing = self.lingering = True
        self._disarm_timer()
        self.timer = self.loop.call_later(LINGER_SECONDS, self._close)
        self.timer_kind = "linger"
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()

    def _close(self) -> None:
        self._disarm_timer()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.closing = True

    def _pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None and not self.closing:
            self.read_paused = True
            self.transport.pause_reading()
            self._disarm_timer()  # the wait is ours, not the client's

    def _resume_reading(self) -> None:
        if self.read_paused and self.transport is not None and not self.closing:
            self.read_paused = False
            self.transport.resume_reading()
            self._watch_client()

    def _watch_client(self, progress: bool = False) -> None:
        """Time what the connection waits on the client for, if anything: the next request
        (idle), the rest of a request head, or more of the body the app is reading. A wait
        gets ``timeout_keep_alive`` seconds from when it starts; only the body's restarts when
        a piece of it comes (``progress``). No timer while reading is paused, the app works on
        an answer, or it has not yet asked for a body announced by ``Expect: 100-continue``."""
        if self.closing:
            return
        kind: str | None = None
        if self.read_paused:
            pass
        elif self.head_open:
            if self.running is None:
                kind = "head"
        elif self.parsing is not None:
            if self.parsing is self.running and not self.parsing.continue_wanted:
                kind = "body"
        elif self.running is None:
            kind = "idle"
        if kind == self.timer_kind and not (progress and kind == "body"):
            return
        self._disarm_timer()
        if kind is not None:
            self.timer = self.loop.call_later(self.keep_alive_timeout, self._timed_out)
            self.timer_kind = kind

    def _timed_out(self) -> None:
        kind, self.timer, self.timer_kind = self.timer_kind, None, None
        exchange = self.parsing
        self._close()
        if kind == "body" and exchange is not None:
            log.debug("closed a connection: its request body stalled")
            exchange.wake()  # the app's receive() says http.disconnect

    def _disarm_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.timer_kind = None

    def _log_access(self, exchange: _Exchange) -> None:
        scope = exchange.scope
        query = scope["query_string"]
        target = scope["raw_path"].decode("latin-1")
        if query:
            target += "?" + query.decode("latin-1")
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        access.info(
            '%s - "%s %s HTTP/%s" %d',
            client,
            scope["method"],
            target,
            scope["http_version"],
            exchange.status,
        )


class _HeadTooLarge(Exception):
    """The request line and headers passed `MAX_HEAD_BYTES` or `MAX_HEADERS`."""


def _address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return None
