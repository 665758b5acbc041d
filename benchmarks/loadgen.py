"""A lean HTTP/1.1 load generator for the benchmarks: fixed concurrency, kept-alive connections.

Each virtual user owns one TCP connection and runs a scenario (a list of requests, repeated)
for a fixed duration; every response's latency is recorded. The client is a few lines over
asyncio streams rather than a general HTTP library so that the generator spends as little of
the shared CPU as possible: both sides of a side-by-side comparison pay the same small cost.

Usage as a library: ``await run_load(host, port, scenario, concurrency=16, seconds=10)``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Request = tuple[str, str, bytes | None, int]  # method, path, body, expected status


@dataclass
class LoadResult:
    """What one load run measured."""

    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    first_error: str = ""
    server_cpu_s: float = 0.0  # CPU the server process(es) spent meanwhile, if measured

    @property
    def cpu_ms_per_request(self) -> float:
        """Server CPU per answered request: steady even when other jobs load the machine."""
        return self.server_cpu_s / self.requests * 1000 if self.requests else float("nan")

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
        return ordered[k]


class Connection:
    """One kept-alive HTTP/1.1 connection speaking just enough of the protocol."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        fixed = {"Host": f"{host}:{port}", "Connection": "keep-alive", **headers}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    async def request(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        if self._writer is None or self._reader is None:
            await self.open()
        assert self._writer is not None and self._reader is not None
        head = f"{method} {path} HTTP/1.1\r\n{self._fixed}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self._writer.write(head.encode() + b"\r\n" + (body or b""))
        status_line = await self._reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length, chunked, closing = 0, False, False
        while True:
            line = await self._reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name == "connection" and "close" in value.lower():
                closing = True
        payload = await self._read_chunked() if chunked else await self._reader.readexactly(length)
        if closing:
            await self.close()
            self._reader = self._writer = None
        return status, payload

    async def _read_chunked(self) -> bytes:
        assert self._reader is not None
        parts = []
        while True:
            size = int((await self._reader.readline()).strip(), 16)
            if size == 0:
                await self._reader.readline()
                return b"".join(parts)
            parts.append(await self._reader.readexactly(size))
            await self._reader.readline()


Scenario = Callable[[], Sequence[Request]]


async def _user(conn: Connection, scenario: Scenario, deadline: float, result: LoadResult) -> None:
    await conn.open()
    try:
        while time.perf_counter() < deadline:
            for method, path, body, expected in scenario():
                start = time.perf_counter()
                try:
                    status, payload = await conn.request(method, path, body)
                except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
                    result.errors += 1
                    result.first_error = result.first_error or repr(exc)
                    await conn.close()
                    await conn.open()
                    continue
                result.latencies_ms.append((time.perf_counter() - start) * 1000)
                result.requests += 1
                if status != expected:
                    result.errors += 1
                    result.first_error = (
                        result.first_error or f"{method} {path} -> {status} {payload[:200]!r}"
                    )
    finally:
        await conn.close()


async def run_load(
    host: str,
    port: int,
    scenario: Scenario,
    *,
    concurrency: int,
    seconds: float,
    headers: dict[str, str],
) -> LoadResult:
    """Run ``scenario`` with ``concurrency`` users for ``seconds``; return what was measured."""
    result = LoadResult()
    start = time.perf_counter()
    deadline = start + seconds
    conns = [Connection(host, port, headers) for _ in range(concurrency)]
    await asyncio.gather(*(_user(c, scenario, deadline, result) for c in conns))
    result.seconds = time.perf_counter() - start
    return result


def osb_headers(username: str, password: str) -> dict[str, str]:
    """The headers every OSB request carries: version and basic auth."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"X-Broker-API-Version": "2.17", "Authorization": f"Basic {token}"}


def catalog_scenario() -> Sequence[Request]:
    """One request: the catalog."""
    return [("GET", "/v2/catalog", None, 200)]


def lifecycle_scenario(service_id: str, plan_id: str) -> Scenario:
    """Provision → bind → unbind → deprovision of a fresh instance, synchronously."""
    provision = json.dumps(
        {
            "service_id": service_id,
            "plan_id": plan_id,
            "organization_guid": "org",
            "space_guid": "space",
            "parameters": {"size": 2},
        }
    ).encode()
    bind = json.dumps({"service_id": service_id, "plan_id": plan_id}).encode()
    query = f"service_id={service_id}&plan_id={plan_id}"

    def scenario() -> Sequence[Request]:
        instance, binding = uuid.uuid4().hex, uuid.uuid4().hex
        base = f"/v2/service_instances/{instance}"
        return [
            ("PUT", base, provision, 201),
            ("PUT", f"{base}/service_bindings/{binding}", bind, 201),
            ("DELETE", f"{base}/service_bindings/{binding}?{query}", None, 200),
            ("DELETE", f"{base}?{query}", None, 200),
        ]

    return scenario
