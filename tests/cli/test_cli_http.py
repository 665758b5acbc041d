"""`bay broker serve`'s HTTP/1.1 protocol over real sockets: keep-alive, pipelining, refusals,
limits, disconnects, graceful shutdown, and the sandbox broker behind it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from servicebay.broker import BrokerSettings, create_app
from servicebay.cli._http import MAX_HEAD_BYTES, MAX_HEADERS, HttpProtocol
from servicebay.examples.sandbox import SERVICE_ID, broker, plan_id

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Probe:
    """A test app whose endpoints misbehave on request, and what it saw."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    finished: list[str] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path == "/boom":
            raise RuntimeError("the app broke")
        if path == "/nothing":
            return
        if path == "/early":  # answers without reading the body
            await _answer(send, 413, b"too large")
            return
        if path == "/slow":
            self.entered.set()
            await self.release.wait()
            await _answer(send, 200, b"done")
            self.finished.append(path)
            return
        if path == "/disconnect":
            while (message := await receive())["type"] != "http.disconnect":
                self.received.append(message)
            self.finished.append(path)
            return
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for part in (b"one,", b"two,", b""):
                await send({"type": "http.response.body", "body": part, "more_body": bool(part)})
            return
        if path == "/late-boom":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            raise RuntimeError("broke while answering")
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        echo = {"method": scope["method"], "path": path, "query": scope["query_string"].decode()}
        await _answer(send, 200, json.dumps({**echo, "body": body.decode()}).encode())


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain"), (b"x-probe", b"yes")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@dataclass
class Served:
    port: int
    server: uvicorn.Server
    task: asyncio.Task[None]

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


@contextlib.asynccontextmanager
async def serving(app: Any, **config: Any) -> AsyncIterator[Served]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(
            app, http=HttpProtocol, lifespan="auto", **{"log_level": "warning", **config}
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = time.monotonic() + 10
    while not server.started:
        assert not task.done() and time.monotonic() < deadline, "the server did not start"
        await asyncio.sleep(0.01)
    try:
        yield Served(sock.getsockname()[1], server, task)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def read_answer(reader: asyncio.StreamReader, *, head: bool = False) -> Answer:
    """One HTTP/1.1 answer: Content-Length or chunked body, none for HEAD (1xx answers are
    returned too)."""
    line = await asyncio.wait_for(reader.readline(), 10)
    if not line:
        raise ConnectionError("closed")
    status = int(line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        assert name.lower().strip() not in headers, f"header {name} twice"
        headers[name.lower().strip()] = value.strip()
    if head:
        body = b""
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readline()).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()
    else:
        body = b""
    return Answer(status, headers, body)


async def closed(reader: asyncio.StreamReader) -> bool:
    """True once the server has closed the connection (nothing more to read)."""
    try:
        return await asyncio.wait_for(reader.read(), 10) == b""
    except ConnectionResetError:
        return True


def request(method: str, target: str, body: bytes = b"", *extra: str) -> bytes:
    head = [f"{method} {target} HTTP/1.1", "Host: test", *extra]
    if body:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.fixture
async def probe() -> AsyncIterator[tuple[Probe, Served]]:
    app = Probe()
    async with serving(app, timeout_keep_alive=5) as served:
        yield app, served


async def test_kept_alive_connection_answers_requests_one_after_another(
    probe: tuple[Probe, Served],
) -> None:
    """Requests on one HTTP/1.1 connection are answered in turn with a Content-Length and the
    app's headers, and the connection stays open."""
    _, served = probe
    reader, writer = await served.connect()
    for i in range(3):
        writer.write(request("POST", f"/echo?n={i}", b"hello %d" % i))
        answer = await read_answer(reader)
        assert answer.status == 200 and answer.headers["x-probe"] == "yes"
        assert json.loads(answer.body) == {
            "method": "POST", "path": "/echo", "query": f"n={i}", "body": f"hello {i}",
        }  # fmt: skip
        assert int(answer.headers["content-length"]) == len(answer.body)
        assert "connection" not in answer.headers and "date" in answer.headers
    writer.close()


async def test_pipelined_requests_are_answered_in_order(probe: tuple[Probe, Served]) -> None:
    """Requests sent back to back before any answer get their answers in the same order."""
    _, served = probe
    reader, writer = await served.connect()
    writer.write(b"".join(request("PUT", f"/echo/{i}", b"x" * i) for i in range(1, 6)))
    for i in range(1, 6):
        answer = await read_answer(reader)
        assert json.loads(answer.body)["path"] == f"/echo/{i}"
        assert json.loads(answer.body)["body"] == "x" * i
    writer.close()


async def test_a_malformed_request_behind_valid_ones_is_400_in_its_turn(
    probe: tuple[Probe, Served],
) -> None:
    """Pipelined valid requests followed by a broken one: the valid ones are answered first,
    in order, then the broken one with 400, and the connection closes."""
    _, served = probe
    reader, writer = await served.connect()
    writer.write(request("GET", "/echo/1") + request("GET", "/echo/2") + b"BROKEN\r\n\r\n")
    assert json.loads((await read_answer(reader)).body)["path"] == "/echo/1"
    assert json.loads((await read_answer(reader)).body)["path"] == "/echo/2"
    assert (await read_answer(reader)).status == 400
    assert await closed(reader)


async def test_upgrade_requests_are_answered_over_http11_then_closed(
    probe: tuple[Probe, Served],
) -> None:
    """No protocol upgrade is offered: the request is answered as any other, then closed."""
    _, served = probe
    reader, writer = await served.connect()
    writer.write(request("GET", "/echo", b"", "Connection: Upgrade", "Upgrade: h2c"))
    answer = await read_answer(reader)
    assert answer.status == 200 and answer.headers["connection"] == "close"
    assert await closed(reader)


async def test_connection_close_and_http10_close_after_the_answer(
    probe: tuple[Probe, Served],
) -> None:
    """`Connection: close`, and HTTP/1.0 without keep-alive, end the connection after the
    answer, which says `connection: close`."""
    _, served = probe
    for raw in (
        request("GET", "/echo", b"", "Connection: close"),
        b"GET /echo HTTP/1.0\r\n\r\n",
    ):
        reader, writer = await served.connect()
        writer.write(raw)
        answer = await read_answer(reader)
        assert answer.status == 200 and answer.headers["connection"] == "close"
        assert await closed(reader)
        writer.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"NONSENSE\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello on the plain port
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_malformed_requests_are_400_and_the_server_goes_on(
    probe: tuple[Probe, Served], raw: bytes
) -> None:
    """What cannot be parsed is answered 400 and the connection closed; the server keeps
    serving other connections."""
    _, served = probe
    reader, writer = await served.connect()
    writer.write(raw)
    answer = await read_answer(reader)
    assert answer.status == 400 and answer.headers["connection"] == "close"
    assert await closed(reader)
    reader, writer = await served.connect()
    writer.write(request("GET", "/echo"))
    assert (await read_answer(reader)).status == 200
    writer.close()


async def test_oversized_or_too_many_headers_are_431(probe: tuple[Probe, Served]) -> None:
    """A request head past MAX_HEAD_BYTES, or with more than MAX_HEADERS fields, is refused
    with 431 before the app sees it, and the connection closed."""
    app, served = probe
    big = "X-Big: " + "a" * MAX_HEAD_BYTES
    many = [f"X-{i}: {i}" for i in range(MAX_HEADERS + 1)]
    long_url = "/echo?" + "q" * MAX_HEAD_BYTES
    for raw in (request("GET", "/echo", b"", big), request("GET", "/echo", b"", *many)):
        reader, writer = await served.connect()
        writer.write(raw)
        answer = await read_answer(reader)
        assert answer.status == 431 and await closed(reader)
    reader, writer = await served.connect()
    writer.write(request("GET", long_url))
    assert (await read_answer(reader)).status == 431
    assert app.received == []


async def test_a_header_growing_past_the_limit_is_431_before_it_ends(
    probe: tuple[Probe, Served],
) -> None:
    """One header line still unfinished past MAX_HEAD_BYTES, sent in chunks, is refused with
    431 at once (the parser is not fed it to its end), and the server goes on serving; a head
    just under the limit arriving in parts, with a body behind it, is served."""
    app, served = probe
    reader, writer = await served.connect()
    writer.write(b"GET /echo HTTP/1.1\r\nHost: a\r\nX: ")
    with contextlib.suppress(ConnectionError):
        for _ in range(32):  # 512 KiB of one header value, never ended
            writer.write(b"a" * 16384)
            await writer.drain()
            await asyncio.sleep(0.001)
    started = time.monotonic()
    answer = await asyncio.wait_for(read_answer(reader), 2)
    assert answer.status == 431 and time.monotonic() - started < 2
    assert await closed(reader) and app.received == []
    reader, writer = await served.connect()
    near = ("X-Near: " + "n" * (MAX_HEAD_BYTES - 200)).encode()
    raw = request("POST", "/echo", b"b" * 100_000, near.decode())
    cut = raw.index(b"X-Near") + 1000
    writer.write(raw[:cut])
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(raw[cut:])
    answer = await read_answer(reader)
    assert answer.status == 200 and json.loads(answer.body)["body"] == "b" * 100_000
    writer.close()


async def test_an_answer_before_the_whole_body_closes_the_connection(
    probe: tuple[Probe, Served],
) -> None:
    """An app answering without reading a large body: the answer arrives, says
    `connection: close`, and the connection closes without reading the rest."""
    _, served = probe
    reader, writer = await served.connect()
    writer.write(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
    writer.write(b"x" * 200_000)
    answer = await read_answer(reader)
    assert answer.status == 413 and answer.headers["connection"] == "close"
    assert await closed(reader)


async def test_chunked_request_body_and_expect_continue(probe: tuple[Probe, Served]) -> None:
    """A chunked request body reaches the app whole; `Expect: 100-continue` is answered with
    100 Continue before the client sends its body."""
    _, served = probe
    reader, writer = await served.connect()
    writer.write(
        b"PUT /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    assert json.loads((await read_answer(reader)).body)["body"] == "hello world"
    writer.write(request("PUT", "/echo", b"", "Expect: 100-continue", "Content-Length: 4"))
    interim = await read_answer(reader)
    assert interim.status == 100
    writer.write(b"body")
    assert json.loads((await read_answer(reader)).body)["body"] == "body"


async def test_streamed_answer_is_chunked_and_head_has_no_body(
    probe: tuple[Probe, Served],
) -> None:
    """An answer sent in parts without a length goes out chunked; a HEAD answer keeps its
    Content-Length but carries no body, and the connection goes on after both."""
    _, served = probe
    reader, writer = await served.connect()
    writer.write(request("GET", "/stream"))
    answer = await read_answer(reader)
    assert answer.headers["transfer-encoding"] == "chunked" and answer.body == b"one,two,"
    writer.write(request("HEAD", "/slow-not", b"") + request("GET", "/echo"))
    head = await read_answer(
        reader, head=True
    )  # the echo app answers HEAD with its GET body's length
    assert head.status == 200 and int(head.headers["content-length"]) > 0 and head.body == b""
    assert (await read_answer(reader)).status == 200


async def test_app_errors_are_500_or_a_closed_connection(probe: tuple[Probe, Served]) -> None:
    """An app raising before its answer (or returning none) is a 500 and a closed connection;
    raising after its answer started closes the connection; others are served meanwhile."""
    _, served = probe
    for path in ("/boom", "/nothing"):
        reader, writer = await served.connect()
        writer.write(request("GET", path))
        answer = await read_answer(reader)
        assert answer.status == 500 and answer.headers["connection"] == "close"
        assert await closed(reader)
    reader, writer = await served.connect()
    writer.write(request("GET", "/late-boom"))
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError, ValueError)):
        await read_answer(reader)
    reader, writer = await served.connect()
    writer.write(request("GET", "/echo"))
    assert (await read_answer(reader)).status == 200


async def test_client_gone_mid_request_is_told_to_the_app(probe: tuple[Probe, Served]) -> None:
    """A client that sends part of a body and leaves: the app receives what came, then
    `http.disconnect`, and finishes; a client leaving during a slow answer does not stop it."""
    app, served = probe
    _, writer = await served.connect()
    writer.write(b"POST /disconnect HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
    await writer.drain()
    await _until(lambda: app.received)
    writer.close()
    await _until(lambda: "/disconnect" in app.finished)
    assert app.received == [{"type": "http.request", "body": b"0123456789", "more_body": True}]
    _, writer = await served.connect()
    writer.write(request("GET", "/slow"))
    await asyncio.wait_for(app.entered.wait(), 10)
    writer.close()
    app.release.set()
    await _until(lambda: "/slow" in app.finished)


async def test_idle_kept_alive_connection_closes_after_the_timeout() -> None:
    """A kept-alive connection with nothing to do, or stalled within a request head, is closed
    after `timeout_keep_alive`."""
    async with serving(Probe(), timeout_keep_alive=1) as served:
        reader, writer = await served.connect()
        writer.write(request("GET", "/echo"))
        assert (await read_answer(reader)).status == 200
        started = time.monotonic()
        assert await closed(reader)
        assert 0.5 < time.monotonic() - started < 5
        reader, writer = await served.connect()
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n")  # and then nothing
        started = time.monotonic()
        assert await closed(reader)
        assert 0.5 < time.monotonic() - started < 5


async def test_a_trickled_head_is_cut_at_its_deadline() -> None:
    """A request head sent a byte at a time is closed `timeout_keep_alive` after it began,
    however often a byte comes."""
    async with serving(Probe(), timeout_keep_alive=1) as served:
        reader, writer = await served.connect()
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        started = time.monotonic()

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                while time.monotonic() - started < 6:
                    await asyncio.sleep(0.1)
                    writer.write(b"a")
                    await writer.drain()

        dripping = asyncio.create_task(trickle())
        try:
            assert await closed(reader)
            assert 0.5 < time.monotonic() - started < 3
        finally:
            dripping.cancel()
            writer.close()


async def test_a_stalled_request_body_ends_in_a_disconnect() -> None:
    """A body that stops coming for `timeout_keep_alive` seconds: the app receives what came,
    then `http.disconnect`, and the connection is closed; a body that keeps coming, however
    slowly, is read to its end."""
    app = Probe()
    async with serving(app, timeout_keep_alive=1) as served:
        reader, writer = await served.connect()
        writer.write(b"POST /disconnect HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01")
        started = time.monotonic()
        await _until(lambda: "/disconnect" in app.finished, 3)
        assert 0.5 < time.monotonic() - started < 3
        assert app.received == [{"type": "http.request", "body": b"01", "more_body": True}]
        assert await closed(reader)
        reader, writer = await served.connect()
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n")
        for byte in b"slowly":  # 2.4 s in all, 0.4 s between bytes
            await asyncio.sleep(0.4)
            writer.write(bytes([byte]))
        answer = await read_answer(reader)
        assert answer.status == 200 and json.loads(answer.body)["body"] == "slowly"
        writer.close()


async def test_graceful_shutdown_finishes_the_request_in_flight() -> None:
    """On shutdown an idle connection closes at once, no connection is accepted any more, and
    the request in flight gets its whole answer (`connection: close`) before the server ends."""
    app = Probe()
    async with serving(app, timeout_keep_alive=30, timeout_graceful_shutdown=10) as served:
        idle_reader, idle_writer = await served.connect()
        idle_writer.write(request("GET", "/echo"))
        assert (await read_answer(idle_reader)).status == 200
        reader, writer = await served.connect()
        writer.write(request("GET", "/slow"))
        await asyncio.wait_for(app.entered.wait(), 10)
        served.server.should_exit = True
        assert await closed(idle_reader)
        with pytest.raises(OSError):
            await served.connect()
        assert not served.task.done()
        app.release.set()
        answer = await read_answer(reader)
        assert answer.status == 200 and answer.body == b"done"
        assert answer.headers["connection"] == "close" and await closed(reader)
        await asyncio.wait_for(served.task, 10)
    assert app.finished == ["/slow"]


async def test_access_log_has_a_line_per_answer(caplog: pytest.LogCaptureFixture) -> None:
    """With the access log on, each answer is one `uvicorn.access` line: client, request line
    with its query, status (the same shape as uvicorn's)."""
    async with serving(Probe(), access_log=True, log_level="info", log_config=None) as served:
        with caplog.at_level(logging.INFO, logger="uvicorn.access"):
            reader, writer = await served.connect()
            writer.write(request("GET", "/echo?x=1") + request("GET", "/boom"))
            assert (await read_answer(reader)).status == 200
            assert (await read_answer(reader)).status == 500
    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert len(lines) == 2
    assert lines[0].startswith("127.0.0.1:") and lines[0].endswith(
        ' - "GET /echo?x=1 HTTP/1.1" 200'
    )
    assert lines[1].endswith(' - "GET /boom HTTP/1.1" 500')


async def test_sandbox_broker_lifecycle_and_refusals_over_the_protocol(tmp_path: Path) -> None:
    """The sandbox broker behind this protocol: a full lifecycle on one kept-alive connection,
    the request identity echoed, an oversized body answered 400, then the connection closed."""
    settings = BrokerSettings(username="u", password="p", db=f"sqlite:///{tmp_path / 'b.db'}")
    auth = base64.b64encode(b"u:p").decode()
    osb = ("X-Broker-API-Version: 2.17", f"Authorization: Basic {auth}")
    provision = json.dumps(
        {"service_id": SERVICE_ID, "plan_id": plan_id("sync"), "organization_guid": "o",
         "space_guid": "s"}
    ).encode()  # fmt: skip
    query = f"service_id={SERVICE_ID}&plan_id={plan_id('sync')}"
    base = "/v2/service_instances/i-1"
    async with serving(create_app(broker, settings=settings)) as served:
        reader, writer = await served.connect()
        steps = [
            (request("PUT", base, provision, *osb, "X-Broker-API-Request-Identity: r-1"), 201),
            (request("PUT", base + "/service_bindings/b-1", provision, *osb), 201),
            (request("DELETE", f"{base}/service_bindings/b-1?{query}", b"", *osb), 200),
            (request("DELETE", f"{base}?{query}", b"", *osb), 200),
            (request("GET", "/v2/catalog"), 401),
            (request("GET", "/metrics", b"", osb[1]), 200),
        ]
        answers = []
        for raw, status in steps:
            writer.write(raw)
            answers.append(await read_answer(reader))
            assert answers[-1].status == status, answers[-1].body
        assert answers[0].headers["x-broker-api-request-identity"] == "r-1"
        assert (
            b'requests_total{endpoint="/v2/service_instances/{instance_id:osb_id}",'
            b'method="PUT",status="201"} 1' in answers[-1].body
        )
        big = b'{"service_id": "' + b"x" * 2_000_000 + b'"}'
        writer.write(request("PUT", "/v2/service_instances/i-2", big, *osb))
        answer = await read_answer(reader)
        assert answer.status == 400 and b"exceeds" in answer.body
        assert answer.headers["connection"] == "close" and await closed(reader)


async def _until(condition: Callable[[], object], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
