"""A real `bay broker serve` process killed (-9) in the middle of a provision and of a bind:
after a restart on the same store, the retries end in the right state and nothing is left over.

The broker reaches the management API through a small TCP proxy that can hold a request
forever, so the kill lands exactly between two management calls (vhost created / limits not
set; user created / permissions not granted).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import aio_pika
import httpx
import pytest

from servicebay.brokers.rabbitmq import PLANS, SERVICE_ID
from servicebay.testing import serve_broker

pytestmark = [pytest.mark.rabbitmq, pytest.mark.e2e]

STANDARD = {"service_id": SERVICE_ID, "plan_id": PLANS[0].plan_id}


class HoldingProxy:
    """TCP proxy to the management API that swallows requests starting with a marker."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.marker: bytes | None = None
        self.held = threading.Event()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hold(self, marker: bytes | None) -> None:
        """Hold every request whose first line starts with ``marker`` (None: pass all)."""
        self.held.clear()
        self.marker = marker

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            while data := await src.read(65536):
                if up and self.marker is not None and data.startswith(self.marker):
                    self.held.set()
                    await asyncio.Event().wait()  # never forwarded: the broker waits for it
                dst.write(data)
                await dst.drain()
            dst.close()

        with contextlib.suppress(Exception):
            await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    def __enter__(self) -> HoldingProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)


def osb_client(served: Any) -> httpx.Client:
    return httpx.Client(
        base_url=served.url,
        auth=(served.username, served.password),
        headers={"X-Broker-API-Version": "2.17"},
        timeout=30,
    )


def killed_during(served: Any, proxy: HoldingProxy, marker: bytes, request: Any) -> None:
    """Send ``request`` in the background, kill -9 the broker once it is held at ``marker``."""
    proxy.hold(marker)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            request()
        except httpx.HTTPError as exc:  # the broker died under the request
            errors.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    assert proxy.held.wait(30), "the broker never reached the held management call"
    served.kill()
    sender.join(30)
    assert errors, "the request should have died with the broker"
    proxy.hold(None)


def retried(call: Any, deadline_s: float = 170.0) -> httpx.Response:
    """Repeat ``call`` while the SDK still sees the killed attempt as running (422)."""
    deadline = time.monotonic() + deadline_s
    while True:
        response: httpx.Response = call()
        if response.status_code != 422 or time.monotonic() > deadline:
            return response
        time.sleep(1)


@pytest.fixture
def proxy() -> Iterator[HoldingProxy]:
    with HoldingProxy(("127.0.0.1", 15672)) as p:
        yield p


def test_provision_and_bind_killed_half_way_end_right_after_restart(
    proxy: HoldingProxy, rabbitmq_prefix: str, rabbitmq_names: Any, new_id: Any
) -> None:
    """Kill -9 between vhost and limits, and between user and permissions; restart; the
    retries succeed, the credentials work, and deprovision leaves nothing."""
    env = {
        "SERVICEBAY_RABBITMQ_MANAGEMENT_URL": proxy.url,
        "SERVICEBAY_RABBITMQ_PREFIX": rabbitmq_prefix,
        # The SDK treats an interrupted synchronous operation as abandoned after this long.
        "SERVICEBAY_BROKER_SYNC_ABANDONED_AFTER": "3",
    }
    a, b, binding = new_id(), new_id(), new_id()
    with serve_broker("servicebay.brokers.rabbitmq:broker", env=env) as served:
        client = osb_client(served)
        body = {**STANDARD, "parameters": {"max_connections": 3}}
        killed_during(
            served,
            proxy,
            b"PUT /api/parameters/vhost-limits/",
            lambda: client.put(f"/v2/service_instances/{a}", json=body),
        )
        assert rabbitmq_names(rabbitmq_prefix) == {rabbitmq_prefix + a}  # vhost, no limits
        served.restart()

        assert client.put(f"/v2/service_instances/{b}", json=STANDARD).status_code == 201
        bind_path = f"/v2/service_instances/{b}/service_bindings/{binding}"
        killed_during(
            served, proxy, b"PUT /api/permissions/", lambda: client.put(bind_path, json=STANDARD)
        )
        half = rabbitmq_names(rabbitmq_prefix) - {rabbitmq_prefix + a, rabbitmq_prefix + b}
        assert len(half) == 1  # the user, without permissions
        served.restart()

        response = retried(lambda: client.put(f"/v2/service_instances/{a}", json=body))
        assert response.status_code == 201, response.text
        limits = httpx.get(
            f"http://127.0.0.1:15672/api/vhost-limits/{rabbitmq_prefix}{a}", auth=("guest", "guest")
        ).json()
        assert limits[0]["value"] == {"max-connections": 3, "max-queues": 1000}

        response = retried(lambda: client.put(bind_path, json=STANDARD))
        assert response.status_code == 201, response.text
        credentials = response.json()["credentials"]
        assert {credentials["username"]} == half

        async def connect() -> None:
            await (await aio_pika.connect(credentials["uri"])).close()

        asyncio.run(connect())

        query = {"params": STANDARD}
        assert client.delete(bind_path, **query).status_code == 200
        for instance in (a, b):
            assert client.delete(f"/v2/service_instances/{instance}", **query).status_code == 200
    assert rabbitmq_names(rabbitmq_prefix) == set()
