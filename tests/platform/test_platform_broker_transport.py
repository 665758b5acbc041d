"""The broker link's default transport against real sockets: answers in every HTTP/1.1 framing,
kept-alive connections reused and dropped, and failures raised as the httpx errors the link
classifies."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import cast

import httpx
import pytest

from servicebay.platform.broker_link import BrokerEndpoint, BrokerLink, Verdict
from servicebay.platform.broker_transport import BrokerTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def tcp_server(handler: Handler) -> AsyncIterator[str]:
    """A raw TCP server on a free port; yields its base URL."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The request head and body (by Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


def get(url: str) -> httpx.Request:
    return httpx.Request("GET", url, extensions={"timeout": httpx.Timeout(5).as_dict()})


async def test_answers_with_length_chunked_and_until_close_are_read_whole() -> None:
    """Content-Length, chunked and close-delimited answers all arrive complete."""
    answers = [
        b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"a": "xy"}',
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4\r\n{"b"\r\n4\r\n: 1}\r\n0\r\n\r\n',
        b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"c": true}',
    ]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await read_request(reader)
            writer.write(answer)
            await writer.drain()
        writer.close()

    transport = BrokerTransport()
    async with tcp_server(handler) as url:
        bodies = []
        statuses = []
        for _ in answers:
            response = await transport.handle_async_request(get(url + "/x"))
            statuses.append(response.status_code)
            bodies.append(response.json())
    await transport.aclose()
    assert statuses == [200, 201, 200]
    assert bodies == [{"a": "xy"}, {"b": 1}, {"c": True}]


async def test_kept_alive_connection_is_reused_and_request_is_one_write() -> None:
    """Two requests share one connection; the body arrives with its length and headers."""
    connections = 0
    seen: list[tuple[bytes, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while not reader.at_eof():
            try:
                seen.append(await read_request(reader))
            except asyncio.IncompleteReadError:
                break
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()

    link = BrokerLink(timeout=5)
    async with tcp_server(handler) as url:
        endpoint = BrokerEndpoint(url=url, username="u", password="secret-pw")
        for n in range(2):
            reply = await link.provision(endpoint, f"i{n}", {"service_id": "s"}, "alice")
            assert reply.status == 200 and reply.verdict is Verdict.DONE
    await link.close()
    assert connections == 1
    head, body = seen[0]
    assert head.startswith(b"PUT /v2/service_instances/i0?accepts_incomplete=true HTTP/1.1")
    assert b"X-Broker-API-Version: 2.17" in head and b"Authorization: Basic " in head
    assert json.loads(body) == {"service_id": "s"}


async def test_connection_dropped_by_the_broker_is_replaced() -> None:
    """The broker closes every connection after answering: each request still succeeds."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    link = BrokerLink(timeout=5)
    async with tcp_server(handler) as url:
        endpoint = BrokerEndpoint(url=url)
        for n in range(3):
            reply = await link.deprovision(endpoint, f"i{n}", "s", "p", "alice")
            assert reply.verdict is Verdict.DONE, reply
    await link.close()


async def test_nothing_listening_is_a_connect_error() -> None:
    """A refused connection is httpx.ConnectError (the link answers RETRY: never sent)."""
    async with tcp_server(read_request) as url:
        pass  # the port is closed again
    with pytest.raises(httpx.ConnectError):
        await BrokerTransport().handle_async_request(get(url))
    reply = await BrokerLink(timeout=5).provision(BrokerEndpoint(url=url), "i", {}, "alice")
    assert reply.verdict is Verdict.RETRY


async def test_silent_broker_is_a_read_timeout() -> None:
    """No answer within the read timeout is httpx.ReadTimeout (a provision then needs orphan
    mitigation, per the spec's table)."""
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    async with tcp_server(handler) as url:
        request = httpx.Request(
            "GET", url, extensions={"timeout": httpx.Timeout(5, read=0.2).as_dict()}
        )
        with pytest.raises(httpx.ReadTimeout):
            await BrokerTransport().handle_async_request(request)
        reply = await BrokerLink(timeout=0.2).provision(BrokerEndpoint(url=url), "i", {}, "al")
        release.set()
    assert reply.verdict is Verdict.FAILED and reply.orphan_mitigation


async def test_malformed_answer_is_a_protocol_error() -> None:
    """Bytes that are not HTTP are httpx.RemoteProtocolError."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()

    async with tcp_server(handler) as url:
        with pytest.raises(httpx.RemoteProtocolError):
            await BrokerTransport().handle_async_request(get(url))


async def test_header_with_line_break_is_refused_before_anything_is_sent() -> None:
    """A header value carrying CR/LF (a bearer token pasted with a newline, say) would split
    into extra headers or a second request: it is refused, and the error names the header but
    never quotes the value (it may be a credential)."""
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError):
            heads.append((await read_request(reader))[0])
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
        writer.close()

    transport = BrokerTransport()
    async with tcp_server(handler) as url:
        request = get(url + "/x")
        request.headers["Authorization"] = "Bearer s3cret\r\nX-Injected: 1"
        with pytest.raises(httpx.LocalProtocolError) as caught:
            await transport.handle_async_request(request)
        await asyncio.sleep(0.05)
    await transport.aclose()
    assert heads == []
    assert "Authorization" in str(caught.value)
    assert "s3cret" not in str(caught.value)


async def test_interim_1xx_answer_is_skipped_for_the_final_one() -> None:
    """An interim answer (103 Early Hints, 100 Continue) precedes the real one: the request's
    answer is the final one, and the next request on the connection gets its own answer."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{"n": 1}')
        await writer.drain()
        await read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{"n": 2}')
        await writer.drain()
        writer.close()

    transport = BrokerTransport()
    async with tcp_server(handler) as url:
        first = await transport.handle_async_request(get(url + "/x"))
        second = await transport.handle_async_request(get(url + "/x"))
    await transport.aclose()
    assert (first.status_code, first.json()) == (200, {"n": 1})
    assert "link" not in first.headers
    assert (second.status_code, second.json()) == (200, {"n": 2})


async def test_request_refused_before_sending_needs_no_orphan_mitigation() -> None:
    """A provision whose headers cannot be sent never reached the broker: it fails without
    orphan mitigation (which would fail the same way, again and again) and without quoting
    the credential."""
    link = BrokerLink(timeout=2)
    broker = BrokerEndpoint("http://127.0.0.1:9", None, None, "s3cret\r\nX-Injected: 1")
    reply = await link.provision(broker, "i-1", {"service_id": "s", "plan_id": "p"}, "alice")
    await link.close()
    assert reply.verdict is Verdict.FAILED
    assert not reply.orphan_mitigation
    assert "s3cret" not in reply.description


@pytest.mark.parametrize("framing", ["length", "chunked", "until-close", "headers"])
async def test_answer_past_its_bound_fails_and_is_not_kept(framing: str) -> None:
    """A broker that sends more than the bound (a body of any framing, or headers without end)
    fails the request with RemoteProtocolError as soon as the bound is passed: the platform
    stops reading instead of holding the answer in memory, and the connection is not reused."""
    sent = 0
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_request(reader)
        heads = {
            "length": b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n",
            "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "until-close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
            "headers": b"HTTP/1.1 200 OK\r\n",
        }
        writer.write(heads[framing])
        piece = b"x" * 4096
        try:
            while sent < 50_000_000:  # far past the bound; the client must hang up first
                if framing == "chunked":
                    writer.write(b"1000\r\n" + piece + b"\r\n")
                elif framing == "headers":
                    writer.write(b"X-Filler: " + piece + b"\r\n")
                else:
                    writer.write(piece)
                sent += len(piece)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            closed.set()
            writer.close()

    transport = BrokerTransport(max_body_bytes=64 * 1024)
    async with tcp_server(handler) as url:
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            await transport.handle_async_request(get(url + "/x"))
        await asyncio.wait_for(closed.wait(), 10)
    await transport.aclose()
    assert "bytes" in str(caught.value)
    assert sent < 5_000_000  # stopped near the bound, not after the broker's 50 MB


async def test_https_answers_have_the_same_bound() -> None:
    """``https`` goes through httpx's own transport; its streamed answer is read up to the same
    bound (stand-in for the TLS transport: an endless stream, counted as it is pulled)."""
    pulled = 0

    class EndlessStream(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            nonlocal pulled
            while True:
                pulled += 4096
                yield b"x" * 4096

    class Endless(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, stream=EndlessStream())

    transport = BrokerTransport(max_body_bytes=64 * 1024)
    transport._tls = cast(httpx.AsyncHTTPTransport, Endless())
    with pytest.raises(httpx.RemoteProtocolError):
        await transport.handle_async_request(get("https://broker.example/v2/catalog"))
    assert 64 * 1024 < pulled <= 64 * 1024 + 4096

    small = BrokerTransport()
    small._tls = cast(
        httpx.AsyncHTTPTransport, httpx.MockTransport(lambda _: httpx.Response(200, json={"ok": 1}))
    )
    answer = await small.handle_async_request(get("https://broker.example/v2/catalog"))
    assert answer.status_code == 200 and answer.json() == {"ok": 1}


async def test_requests_ask_for_no_compression_and_a_compressed_answer_is_refused() -> None:
    """The bound is on bytes read, so a compressed answer (16 MiB of gzip inflates to
    gigabytes) is refused; requests say they accept only the identity encoding."""
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append((await read_request(reader))[0])
        body = gzip.compress(b"{}" + b" " * 100_000)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        await writer.drain()
        writer.close()

    transport = BrokerTransport()
    async with tcp_server(handler) as url:
        request = get(url + "/x")
        request.headers["Accept-Encoding"] = "gzip, deflate"  # what httpx puts by default
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            await transport.handle_async_request(request)
    await transport.aclose()
    assert "compressed" in str(caught.value)
    (head,) = heads
    encodings = [line for line in head.lower().split(b"\r\n") if b"accept-encoding" in line]
    assert encodings == [b"accept-encoding: identity"]


async def test_a_header_line_without_end_is_cut_at_the_bound() -> None:
    """One header line that never ends is buffered by the parser, not by on_header: the bytes
    read before the headers end count against the bound too."""
    sent = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        try:
            while sent < 50_000_000:
                writer.write(b"y" * 4096)
                sent += 4096
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    transport = BrokerTransport()
    async with tcp_server(handler) as url:
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            await transport.handle_async_request(get(url + "/x"))
    await transport.aclose()
    assert "headers" in str(caught.value)
    assert sent < 5_000_000


async def test_https_asks_for_no_compression_and_refuses_it() -> None:
    """The https path (httpx's transport; a stand-in here) gets the same rule."""
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers["accept-encoding"])
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"\x1f\x8b")

    transport = BrokerTransport()
    transport._tls = cast(httpx.AsyncHTTPTransport, httpx.MockTransport(answer))
    with pytest.raises(httpx.RemoteProtocolError):
        await transport.handle_async_request(get("https://broker.example/v2/catalog"))
    assert asked == ["identity"]
