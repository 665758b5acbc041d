"""A lean HTTP/1.1 transport for the management API client.

Why: each broker operation is a handful of small requests to one server, and with httpx's
default transport (httpcore on anyio) the client spent more CPU per request than RabbitMQ took
to answer it — measured ~1.5 ms against ~0.6 ms with this transport on the development
machine (see docs/rabbitmq-broker.md, "Speed"). It
keeps what the management API needs and no more: kept-alive connections per host on asyncio
streams (TLS when the URL is https), ``Content-Length`` and chunked bodies, one timeout per
exchange. Failures surface as httpx's transport errors, so ``ManagementAPI``'s retries apply;
a kept-alive connection the server closed meanwhile is replaced once, transparently (every
request the broker sends is idempotent).

Two faces: ``exchange()`` takes the request already encoded and returns an ``Answer`` (what
``ManagementAPI`` uses: building and parsing httpx's request and response objects cost about as
much CPU as the exchange itself); ``handle_async_request()`` makes it an httpx transport.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

import httpx

__all__ = ["Answer", "ManagementTransport", "Origin"]

Origin = tuple[str, str, int]  # scheme, host, port

_MAX_IDLE = 16  # kept-alive connections per host; more concurrent requests open more
_NO_BODY = frozenset({204, 304})


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def close(self) -> None:
        self.writer.close()


@dataclass(frozen=True, slots=True)
class Answer:
    """A response: status, headers as received, and the whole body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


class _StaleConnection(Exception):
    """A reused connection was closed by the server before it answered."""


class ManagementTransport(httpx.AsyncBaseTransport):
    """httpx transport speaking HTTP/1.1 over asyncio streams, with a small keep-alive pool.

    ``verify`` is as for httpx: True (system CAs), False (no verification) or an SSL context.
    """

    def __init__(self, *, verify: ssl.SSLContext | bool = True, timeout: float = 10.0) -> None:
        self._timeout = timeout
        self._verify = verify
        self._ssl: ssl.SSLContext | None = None
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}

    async def exchange(self, origin: Origin, head: bytes, body: bytes = b"") -> Answer:
        """Send one request to ``origin`` and read its whole answer.

        ``head`` is the request line and headers (``Host`` and ``Content-Length`` included),
        ending with the blank line; ``body`` follows it.
        """
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(self._timeout):
                connection, reused = await self._connection(origin)
                try:
                    return await self._exchange(connection, origin, head + body, head, reused)
                except _StaleConnection:
                    connection, _ = await self._open(origin)
                    return await self._exchange(connection, origin, head + body, head, False)
        except TimeoutError as exc:
            if connection is not None:
                connection.close()  # a late answer must not be read as the next one's
            raise httpx.ReadTimeout(f"no answer within {self._timeout} s") from exc
        except asyncio.CancelledError:
            if connection is not None:
                connection.close()
            raise

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """The httpx transport face of ``exchange()``."""
        body = await request.aread()
        lines = [f"{request.method} {request.url.raw_path.decode('ascii')} HTTP/1.1"]
        lines += [f"{k.decode('latin-1')}: {v.decode('latin-1')}" for k, v in request.headers.raw]
        head = "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n"
        try:
            answer = await self.exchange(self._origin(request), head, body)
        except httpx.TransportError as exc:
            exc.request = request
            raise
        return httpx.Response(
            answer.status, headers=answer.headers, content=answer.body, request=request
        )

    async def aclose(self) -> None:
        """Close every kept-alive connection."""
        for pool in self._idle.values():
            for connection in pool:
                connection.close()
        self._idle.clear()

    # -- connections ---------------------------------------------------------------------

    @staticmethod
    def _origin(request: httpx.Request) -> Origin:
        url = request.url
        return (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))

    async def _connection(self, origin: Origin) -> tuple[_Connection, bool]:
        pool = self._idle.get(origin)
        while pool:
            connection = pool.pop()
            if not connection.reader.at_eof():
                return connection, True
            connection.close()
        return await self._open(origin)

    async def _open(self, origin: Origin) -> tuple[_Connection, bool]:
        scheme, host, port = origin
        tls = self._context() if scheme == "https" else None
        try:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=tls, server_hostname=host if tls else None
            )
        except OSError as exc:
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from exc
        return _Connection(reader, writer), False

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            if isinstance(self._verify, ssl.SSLContext):
                self._ssl = self._verify
            else:
                self._ssl = ssl.create_default_context()
                if not self._verify:
                    self._ssl.check_hostname = False
                    self._ssl.verify_mode = ssl.CERT_NONE
        return self._ssl

    def _release(self, origin: Origin, connection: _Connection) -> None:
        pool = self._idle.setdefault(origin, [])
        if len(pool) < _MAX_IDLE:
            pool.append(connection)
        else:
            connection.close()

    # -- one request and its response ----------------------------------------------------

    async def _exchange(
        self, connection: _Connection, origin: Origin, data: bytes, head: bytes, reused: bool
    ) -> Answer:
        try:
            connection.writer.write(data)
            await connection.writer.drain()
            status_line = await connection.reader.readline()
            if not status_line:
                raise ConnectionResetError("connection closed before the response")
            status = int(status_line.split()[1])
            headers, length, chunked, keep = await self._headers(connection.reader)
            bodiless = head.startswith(b"HEAD ")
            content = await self._body(connection.reader, status, length, chunked, bodiless)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            connection.close()
            if reused and isinstance(exc, (ConnectionError, asyncio.IncompleteReadError)):
                raise _StaleConnection from exc
            raise httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}") from exc
        if keep and (status in _NO_BODY or length is not None or chunked):
            self._release(origin, connection)
        else:
            connection.close()
        return Answer(status, headers, content)

    @staticmethod
    async def _headers(
        reader: asyncio.StreamReader,
    ) -> tuple[list[tuple[str, str]], int | None, bool, bool]:
        headers: list[tuple[str, str]] = []
        length: int | None = None
        chunked, keep = False, True
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip(), value.strip()
            headers.append((name, value))
            lowered = name.lower()
            if lowered == "content-length":
                length = int(value)
            elif lowered == "transfer-encoding":
                chunked = "chunked" in value.lower()
            elif lowered == "connection":
                keep = "close" not in value.lower()
        return headers, length, chunked, keep

    @staticmethod
    async def _body(
        reader: asyncio.StreamReader,
        status: int,
        length: int | None,
        chunked: bool,
        bodiless: bool,
    ) -> bytes:
        if status in _NO_BODY or bodiless or 100 <= status < 200:
            return b""
        if chunked:
            parts = []
            while size := int((await reader.readline()).split(b";")[0].strip(), 16):
                parts.append(await reader.readexactly(size))
                await reader.readline()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        if length is not None:
            return await reader.readexactly(length)
        return await reader.read()  # no length: the body ends with the connection
