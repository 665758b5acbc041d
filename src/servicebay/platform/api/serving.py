"""How ``bay server`` writes its HTTP answers: one write per answer, not two.

uvicorn writes an answer's status line and headers as soon as the app starts the response, and
the body in a second write when it comes. With ``TCP_NODELAY`` that is two segments, and the
client may wake up twice, for every API answer; where system calls are costly (containers,
sandboxed kernels) that is a measurable share of a request. :class:`OneWriteHttpProtocol` is
uvicorn's protocol with its transport wrapped so that a header block waits for the body that
follows it; a header block with no body right behind it (a streamed or file answer) is sent
at the event loop's next turn, so nothing waits longer than that.

It relies on how uvicorn's httptools protocol writes (the head in one ``write``, every later
byte through ``write`` or ``writelines``), so ``pyproject.toml`` bounds uvicorn's version and
``tests/platform/test_platform_serving.py`` checks answers over a real socket.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _HeadWithBody:
    """A transport that holds a written header block until the next write (or loop turn)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._head is not None:
            data, self._head = self._head + bytes(data), None
        elif bytes(data[-4:]) == b"\r\n\r\n" and bytes(data[:5]) == b"HTTP/":
            self._head = bytes(data)
            asyncio.get_running_loop().call_soon(self._flush)
            return
        self._transport.write(data)

    def _flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            if not self._transport.is_closing():
                self._transport.write(head)

    def writelines(self, chunks: Any) -> None:  # one path for every byte, held head first
        self.write(b"".join(bytes(chunk) for chunk in chunks))

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing each answer's headers together with its body."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_HeadWithBody(transport))  # type: ignore[arg-type]


def uvicorn_options() -> dict[str, Any]:
    """How ``bay server`` runs uvicorn (the tests serve with the same).

    ``proxy_headers`` is off: uvicorn would otherwise take the client's address from an
    ``X-Forwarded-For`` header sent from 127.0.0.1, so anyone on the host could name a new
    address with every request and escape the failed-authentication throttle, which counts
    per address (it reads the header itself, from ``trusted_proxies`` only).
    """
    return {"access_log": False, "http": OneWriteHttpProtocol, "proxy_headers": False}
