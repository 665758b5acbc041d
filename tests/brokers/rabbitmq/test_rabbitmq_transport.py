"""The management API client's lean HTTP/1.1 transport, against a local server that answers in
every shape HTTP allows (chunked, until-close, no body) or misbehaves on purpose."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from servicebay.brokers.rabbitmq import ManagementAPI, ManagementAPIError
from servicebay.brokers.rabbitmq._management import VirtualHost
from servicebay.brokers.rabbitmq._transport import ManagementTransport

Answer = Callable[[bytes], bytes | None]  # request head+body → raw response (None: never answer)


class Server:
    """Answers each request with the next scripted raw response; counts connections."""

    def __init__(self, answers: list[Answer]) -> None:
        self.answers = answers
        self.connections = 0
        self.requests: list[bytes] = []
        self.close_after: set[int] = set()  # request numbers after which to drop the connection

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer = self.answers.pop(0)(request)
                if answer is None:
                    await asyncio.Event().wait()
                    return
                writer.write(answer)
                await writer.drain()
                if len(self.requests) in self.close_after or b"Connection: close" in answer:
                    break
        writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[list[Answer]], asyncio.Future[tuple[Server, str]]]]:
    servers: list[asyncio.Server] = []

    async def start(answers: list[Answer]) -> tuple[Server, str]:
        script = Server(answers)
        server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
        servers.append(server)
        return script, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()


def ok(body: bytes = b'{"ok":true}', extra: str = "") -> Answer:
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{extra}"
    return lambda _: f"{head}content-length: {len(body)}\r\n\r\n".encode() + body


async def test_requests_reuse_one_kept_alive_connection(serve: object) -> None:
    """Three requests, one connection; method, path, headers and body arrive intact."""
    script, url = await serve([ok(), ok(), ok()])  # type: ignore[operator]
    async with httpx.AsyncClient(base_url=url, transport=ManagementTransport()) as client:
        for _ in range(2):
            assert (await client.get("/api/vhosts/a%2Fb")).json() == {"ok": True}
        response = await client.put("/api/users/u", json={"password": "x"}, headers={"X-R": "1"})
        assert response.status_code == 200
    assert script.connections == 1
    assert script.requests[0].startswith(b"GET /api/vhosts/a%2Fb HTTP/1.1\r\n")
    assert b"X-R: 1" in script.requests[2] and script.requests[2].endswith(b'{"password":"x"}')


async def test_management_api_encodes_its_requests_for_the_lean_transport(serve: object) -> None:
    """ManagementAPI's own encoding: base path kept, names as one segment, Host, basic auth,
    JSON body with its length; a bodiless error answer is reported with its reason phrase."""
    missing = lambda _: b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"  # noqa: E731
    script, url = await serve([ok(b'{"name":"a/b"}'), ok(b""), missing])  # type: ignore[operator]
    async with ManagementAPI(url + "/rabbitmq/", "admin", "s3cret", attempts=1) as api:
        assert (await api.get_vhost("a/b")) == VirtualHost(name="a/b")
        await api.put_user("u", "pw")
        with pytest.raises(ManagementAPIError, match=r"503: Service Unavailable"):
            await api.delete_user("u")
    assert script.connections == 1
    get, put, delete = script.requests
    host = url.removeprefix("http://").encode()
    token = base64.b64encode(b"admin:s3cret")
    assert get.startswith(b"GET /rabbitmq/api/vhosts/a%2Fb HTTP/1.1\r\n")
    assert b"host: " + host + b"\r\n" in get and b"authorization: Basic " + token in get
    body = b'{"password": "pw", "tags": ""}'
    assert put.startswith(b"PUT /rabbitmq/api/users/u HTTP/1.1\r\n") and put.endswith(body)
    assert f"content-length: {len(body)}\r\n".encode() in put
    assert delete.startswith(b"DELETE /rabbitmq/api/users/u HTTP/1.1\r\n")


async def test_chunked_and_until_close_bodies_are_read_whole(serve: object) -> None:
    """A chunked body is reassembled; a body without length ends with the connection."""
    chunked = lambda _: (  # noqa: E731
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"4\r\n[1,2\r\n3;ext=1\r\n,3]\r\n0\r\n\r\n"
    )
    until_close = lambda _: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n[4,5]"  # noqa: E731
    script, url = await serve([chunked, until_close, ok()])  # type: ignore[operator]
    async with httpx.AsyncClient(base_url=url, transport=ManagementTransport()) as client:
        assert (await client.get("/a")).json() == [1, 2, 3]
        assert (await client.get("/b")).json() == [4, 5]
        assert (await client.get("/c")).status_code == 200
    assert script.connections == 2  # the until-close answer could not be kept


async def test_no_content_answer_keeps_the_connection(serve: object) -> None:
    """204 has no body: nothing is waited for, and the connection serves the next request."""
    no_content = lambda _: b"HTTP/1.1 204 No Content\r\n\r\n"  # noqa: E731
    script, url = await serve([no_content, ok()])  # type: ignore[operator]
    async with httpx.AsyncClient(base_url=url, transport=ManagementTransport()) as client:
        assert (await client.delete("/x")).status_code == 204
        assert (await client.get("/y")).status_code == 200
    assert script.connections == 1


async def test_connection_closed_by_the_server_is_replaced_transparently(serve: object) -> None:
    """The server drops a kept-alive connection after an answer: the next request reconnects."""
    script, url = await serve([ok(), ok()])  # type: ignore[operator]
    script.close_after = {1}
    async with httpx.AsyncClient(base_url=url, transport=ManagementTransport()) as client:
        assert (await client.get("/1")).status_code == 200
        await asyncio.sleep(0)  # let the close arrive (or not: both paths must work)
        assert (await client.get("/2")).status_code == 200
    assert script.connections == 2


async def test_silence_is_a_timeout_and_refusal_a_connect_error(
    serve: object, unused_tcp_port: int
) -> None:
    """No answer within the timeout → ReadTimeout; nothing listening → ConnectError."""
    _, url = await serve([lambda _: None])  # type: ignore[operator]
    transport = ManagementTransport(timeout=0.3)
    async with httpx.AsyncClient(base_url=url, transport=transport) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/slow")
    async with httpx.AsyncClient(transport=ManagementTransport()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{unused_tcp_port}/")


async def test_garbage_answer_is_a_protocol_error(serve: object) -> None:
    """Something that is not HTTP becomes RemoteProtocolError (retried by the client)."""
    _, url = await serve([lambda _: b"SSH-2.0-OpenSSH\r\n\r\n"])  # type: ignore[operator]
    async with httpx.AsyncClient(base_url=url, transport=ManagementTransport()) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/")


def _certificate_pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


async def test_https_trusts_the_given_ca_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    """Over TLS the transport verifies the server against the CA it was given."""
    ca, cert, key = _certificate_pair(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    script = Server([ok(), ok()])
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0, ssl=server_tls)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        trusting = ManagementTransport(verify=ssl.create_default_context(cafile=str(ca)))
        async with httpx.AsyncClient(base_url=url, transport=trusting) as client:
            assert (await client.get("/api/overview")).json() == {"ok": True}
        async with httpx.AsyncClient(base_url=url, transport=ManagementTransport()) as client:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.get("/api/overview")
    finally:
        server.close()
