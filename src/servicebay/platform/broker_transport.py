"""The default transport of :class:`~servicebay.platform.broker_link.BrokerLink`: plain HTTP/1.1
with kept-alive connections, straight on asyncio.

Where it sits: every broker call of the worker goes through it (tests pass another
``httpx.AsyncBaseTransport`` instead, such as an in-process ASGI app). httpx's own transport
(httpcore over anyio) spends more CPU per request than the broker does to answer it — a cancel
scope per read and write, a readability check of every pooled connection, a write for headers
and another for the body — which, at one request per lifecycle step, was a third of the
platform's CPU. Here a request is one write, and the answer is parsed by ``httptools`` (the C
parser uvicorn uses) as it arrives. Connections are reused while the broker keeps them open.

``https`` URLs go to httpx's transport, which owns TLS settings and certificate stores.
Either way an answer is read into memory only up to a bound (headers 64 KiB, body 16 MiB by
default, far above any catalog seen): a broker that streams without end fails its request with
``RemoteProtocolError`` instead of filling the platform's memory. Requests ask for the identity
encoding and a compressed answer is refused, since 16 MiB of gzip would inflate to gigabytes.
Failures are raised as the httpx exceptions ``broker_link`` classifies: ``ConnectError``,
``ConnectTimeout``, ``ReadTimeout``, ``WriteError`` and ``RemoteProtocolError`` (the broker
closed the connection before answering, as a broker that drops a kept-alive connection does).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, cast

import httptools  # the C parser uvicorn[standard] ships
import httpx

_BAD_NAME = re.compile(rb"[^!#$%&'*+.^_`|~0-9A-Za-z-]")  # a header name is an RFC 9110 token
_BAD_VALUE = re.compile(rb"[\r\n\0]")
_MAX_IDLE = 64  # kept-alive connections per broker address
# A connection idle longer than this is not reused: servers drop idle connections (uvicorn after
# 5 s), and one dropped just as a request is written fails that request.
_IDLE_SECONDS = 2.0
_ENCODED = "the broker's answer is compressed although the request asked for none"
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024


class _Connection(asyncio.Protocol):
    """One TCP connection to a broker, carrying one request at a time."""

    def __init__(self, max_body: int = MAX_BODY_BYTES) -> None:
        self._max_body = max_body
        self._head_bytes = 0
        self._body_bytes = 0
        self._head_done = False
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser: Any = None
        self._answer: asyncio.Future[None] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._until_close = False  # an answer without length ends when the broker closes
        self._keep_alive = False
        self._status = 0
        self.idle_since = 0.0
        self.answered = False  # has this connection carried a complete exchange yet
        self._received = False  # any byte of the current answer

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._received = True
        if self._parser is None:
            self.closed = True  # bytes nobody asked for: this connection is not reusable
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP answer ({exc})"))
            return
        if not self._head_done:  # a header line without end is buffered by the parser
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(f"the broker's answer has more than {MAX_HEAD_BYTES} bytes of headers")

    def eof_received(self) -> bool:
        self.closed = True
        if self._until_close:
            self._until_close = False
            self._keep_alive, self._status = False, int(self._parser.get_status_code())
            if self._answer is not None and not self._answer.done():
                self._answer.set_result(None)
        self._fail(httpx.RemoteProtocolError("the broker closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(httpx.ReadError(f"connection lost ({exc})" if exc else "connection lost"))

    # -- httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_done = True
        names = {name.lower() for name, _ in self._headers}
        self._until_close = not names & {b"content-length", b"transfer-encoding"}
        for name, value in self._headers:
            if name.lower() == b"content-encoding" and not _identity(value):
                self._refuse(_ENCODED)
                return

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._max_body:
            self._refuse(f"the broker's answer is larger than {self._max_body} bytes")
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._until_close = False
        if 100 <= self._parser.get_status_code() < 200:
            # An interim answer (100 Continue, 103 Early Hints): the final one follows.
            self._headers, self._body, self._head_done = [], [], False
            return
        # Read now: the parser forgets both once it is ready for the next message.
        self._keep_alive = bool(self._parser.should_keep_alive())
        self._status = int(self._parser.get_status_code())
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(None)

    # -- one exchange -----------------------------------------------------------------------

    def _fail(self, exc: Exception) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc)

    def _refuse(self, reason: str) -> None:
        """Stop reading an answer past its bound: fail the exchange, drop what came, close."""
        self._body, self._headers = [], []
        self._fail(httpx.RemoteProtocolError(reason))
        self.close()

    async def exchange(self, data: bytes, read_timeout: float | None) -> httpx.Response:
        """Send one serialised request and read its whole answer."""
        assert self.transport is not None
        self._parser = httptools.HttpResponseParser(self)
        self._headers, self._body, self._until_close = [], [], False
        self._head_bytes = self._body_bytes = 0
        self._head_done = False
        self._received = False
        self._answer = asyncio.get_running_loop().create_future()
        try:
            self.transport.write(data)
        except (OSError, RuntimeError) as exc:
            self.closed = True
            raise httpx.WriteError(str(exc)) from exc
        try:
            async with asyncio.timeout(read_timeout):
                await self._answer
        except TimeoutError:
            self.closed = True
            raise httpx.ReadTimeout("the broker did not answer in time") from None
        finally:
            self._answer = None
        if not self._keep_alive:
            self.closed = True
        self._parser = None
        self.answered = True
        return httpx.Response(self._status, headers=self._headers, content=b"".join(self._body))

    @property
    def unanswered(self) -> bool:
        """No byte of the current answer has arrived."""
        return not self._received

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class BrokerTransport(httpx.AsyncBaseTransport):
    """Plain-HTTP/1.1 transport with a keep-alive pool per broker address (see module doc)."""

    def __init__(self, *, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._tls: httpx.AsyncHTTPTransport | None = None
        self._max_body = max_body_bytes

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            if self._tls is None:
                self._tls = httpx.AsyncHTTPTransport()
            request.headers["Accept-Encoding"] = "identity"
            return await self._bounded(await self._tls.handle_async_request(request))
        timeouts = request.extensions.get("timeout", {})
        address = (request.url.host, request.url.port or 80)
        data = _serialise(request)
        connection = await self._checkout(address, timeouts.get("connect"))
        try:
            response = await connection.exchange(data, timeouts.get("read"))
        except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
            connection.close()
            if not (connection.answered and connection.unanswered):
                raise
            # A kept-alive connection the broker closed before our request reached it (no
            # byte of an answer came back): send once more on a new connection.
            connection = await self._connect(address, timeouts.get("connect"))
            try:
                response = await connection.exchange(data, timeouts.get("read"))
            except BaseException:
                connection.close()
                raise
        except BaseException:
            connection.close()
            raise
        self._checkin(address, connection)
        response.request = request
        return response

    async def _bounded(self, response: httpx.Response) -> httpx.Response:
        """httpx's streamed answer read whole, up to the same bound as ours."""
        if not _identity(response.headers.get("content-encoding", "identity").encode("latin-1")):
            await response.aclose()
            raise httpx.RemoteProtocolError(_ENCODED)
        body = bytearray()
        try:
            async for chunk in cast(httpx.AsyncByteStream, response.stream):
                body += chunk
                if len(body) > self._max_body:
                    raise httpx.RemoteProtocolError(
                        f"the broker's answer is larger than {self._max_body} bytes"
                    )
        finally:
            await response.aclose()
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            content=bytes(body),
            extensions=response.extensions,
        )

    async def _checkout(
        self, address: tuple[str, int], connect_timeout: float | None
    ) -> _Connection:
        idle = self._idle.get(address)
        fresh = time.monotonic() - _IDLE_SECONDS
        while idle:
            connection = idle.pop()
            transport = connection.transport
            usable = transport is not None and not transport.is_closing()
            if usable and not connection.closed and connection.idle_since > fresh:
                return connection
            connection.close()
        return await self._connect(address, connect_timeout)

    async def _connect(
        self, address: tuple[str, int], connect_timeout: float | None
    ) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self._max_body), *address
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {address[0]}:{address[1]}") from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {address[0]}:{address[1]}") from exc
        return protocol

    def _checkin(self, address: tuple[str, int], connection: _Connection) -> None:
        idle = self._idle.setdefault(address, [])
        if connection.closed or len(idle) >= _MAX_IDLE:
            connection.close()
        else:
            connection.idle_since = time.monotonic()
            idle.append(connection)

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        if self._tls is not None:
            await self._tls.aclose()


def _identity(encoding: bytes) -> bool:
    return encoding.strip().lower() in (b"", b"identity")


def _serialise(request: httpx.Request) -> bytes:
    """The request line, headers and body in one buffer (one write)."""
    url = request.url
    target = url.raw_path  # path and query, already percent-encoded
    lines = [request.method.encode() + b" " + target + b" HTTP/1.1"]
    headers = request.headers
    if "host" not in headers:
        lines.append(b"Host: " + url.netloc)
    body = request.content
    lines.append(b"Accept-Encoding: identity")  # see the module doc: no compressed answers
    for name, value in headers.raw:
        if name.lower() == b"accept-encoding":
            continue
        # httpx leaves validation to its transport: a CR, LF or NUL would end the header early
        # (an injected header or request). The value may be a credential: name the header only.
        if not name or _BAD_NAME.search(name) or _BAD_VALUE.search(value):
            raise httpx.LocalProtocolError(f"invalid header {name.decode('latin-1')!r}")
        lines.append(name + b": " + value)
    if body and "content-length" not in headers:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
