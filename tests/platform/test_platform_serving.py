"""``bay server`` writes each HTTP answer once: headers together with the body that follows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from conftest import served
from servicebay.platform.api.serving import OneWriteHttpProtocol, _HeadWithBody

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class _Recording(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def test_headers_and_body_leave_in_one_write() -> None:
    """The header block waits for the body written right after it: one write per answer."""
    recording = _Recording()
    transport = _HeadWithBody(recording)
    transport.write(HEAD)
    transport.write(b"{}")
    transport.write(HEAD)
    transport.write(b"[]")
    await asyncio.sleep(0)
    assert recording.writes == [HEAD + b"{}", HEAD + b"[]"]


async def test_headers_without_a_body_behind_them_leave_at_the_next_loop_turn() -> None:
    """A streamed answer whose body comes later still gets its headers out at once, and
    closing the connection sends a header block still held."""
    recording = _Recording()
    transport = _HeadWithBody(recording)
    transport.write(HEAD)
    assert recording.writes == []
    await asyncio.sleep(0)
    assert recording.writes == [HEAD]
    transport.write(HEAD)
    transport.close()
    assert recording.writes == [HEAD, HEAD]
    assert recording.closed


async def test_writelines_goes_through_the_held_head() -> None:
    """A body sent with writelines still follows its head (never overtakes it)."""
    recording = _Recording()
    transport = _HeadWithBody(recording)
    transport.write(HEAD)
    transport.writelines([b"{", b"}"])
    assert recording.writes == [HEAD + b"{}"]


async def test_answers_over_a_real_socket() -> None:
    """Through uvicorn with the one-write protocol: kept-alive requests, HEAD, a large body,
    a streamed answer whose first chunk arrives before the rest is produced, 204, pipelining."""
    release = asyncio.Event()

    async def small(request: Request) -> Response:
        return JSONResponse({"ok": 1})

    async def big(request: Request) -> Response:
        return Response(b"x" * (4 * 1024 * 1024), media_type="application/octet-stream")

    async def stream(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first\n"
            await release.wait()
            yield b"second\n"

        return StreamingResponse(chunks())

    async def empty(request: Request) -> Response:
        return Response(status_code=204)

    app = Starlette(
        routes=[
            Route("/s", small, methods=["GET", "HEAD"]),
            Route("/b", big),
            Route("/st", stream),
            Route("/n", empty),
        ]
    )
    async with served(app, http=OneWriteHttpProtocol) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            for _ in range(3):
                assert (await client.get("/s")).json() == {"ok": 1}
            head = await client.head("/s")
            assert (head.status_code, head.content) == (200, b"")
            assert len((await client.get("/b")).content) == 4 * 1024 * 1024
            async with client.stream("GET", "/st") as streamed:
                chunks = streamed.aiter_raw()
                assert await asyncio.wait_for(anext(chunks), 5) == b"first\n"
                release.set()
                assert b"".join([c async for c in chunks]) == b"second\n"
            assert (await client.get("/n")).status_code == 204
            assert (await client.get("/s")).json() == {"ok": 1}
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        writer.write(
            b"GET /s HTTP/1.1\r\nHost: x\r\n\r\nHEAD /s HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert data.count(b"HTTP/1.1 200") == 3
        assert data.count(b'{"ok":1}') == 2
