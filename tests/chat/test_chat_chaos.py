"""Chaos with real processes: the server is SIGKILLed every 2 s and clients drop at random, yet
every sender-acknowledged message reaches every member of its room, in order, once."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from chat_helpers import BACKENDS, eventually

from servicebay.chat.client import ChatClient, ChatMessage

pytestmark = pytest.mark.e2e

CLIENTS, ROOMS, MESSAGES = 20, 5, 10_000
KILL_EVERY = 2.0
# Sends are spread over at least this long, so a fast server still meets several kills mid-run
# (unpaced, 10,000 messages can be stored in about 4 s: one kill, or none).
SEND_SPREAD = 9.0
ADMIN_TOKEN = "chaos-admin-token"


def _rooms_of(i: int) -> list[str]:
    return [f"r{i % ROOMS}", f"r{(i + 1) % ROOMS}"]


async def _seed(http: httpx.AsyncClient) -> dict[str, str]:
    """Through the admin API (any backend): rooms that delete as soon as retention allows (so
    deletion is under test too), users in two rooms each, one token per user."""
    tokens = {}
    retention = {"keep_seconds": 0, "keep_last": 0}
    for r in range(ROOMS):
        (await http.put(f"/api/v1/rooms/r{r}", json=retention)).raise_for_status()
    for i in range(CLIENTS):
        name = f"c{i:02d}"
        (await http.post("/api/v1/users", json={"id": name})).raise_for_status()
        for room in _rooms_of(i):
            (await http.put(f"/api/v1/rooms/{room}/members/{name}")).raise_for_status()
        issued = await http.post(f"/api/v1/users/{name}/tokens", json={})
        tokens[name] = issued.json()["token"]
    return tokens


async def _heads(http: httpx.AsyncClient) -> dict[str, int]:
    rooms = (await http.get("/api/v1/rooms")).json()["rooms"]
    return {room["id"]: room["head"] for room in rooms}


class Server:
    """The chat server as a real process, killed and restarted on the same port."""

    def __init__(self, store: str, port: int, log: Path) -> None:
        self.store, self.port, self.log = store, port, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        env = {
            **os.environ,
            "SERVICEBAY_CHAT_COMPACT_EVERY": "1",
            "SERVICEBAY_CHAT_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        cmd = [sys.executable, "-m", "servicebay.cli.chat", "serve", "--store", self.store]
        cmd += ["--port", str(self.port), "--log-level", "warning"]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=env)

    async def ready(self) -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}") as http:

            async def answers() -> bool:
                try:
                    return (await http.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(answers, 60)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.kills += 1

    async def chaos(self, stop: asyncio.Event) -> None:
        # The kill comes 2 s after the server is ready again, not 2 s after it was started:
        # on a loaded machine a Python start-up alone can take longer than 2 s.
        while not stop.is_set():
            await self.ready()
            try:
                await asyncio.wait_for(stop.wait(), KILL_EVERY)
            except TimeoutError:
                self.kill()
                self.start()


# A RabbitMQ backend's entry in chat_helpers.BACKENDS runs here too; it adds a variant that also
# restarts RabbitMQ itself.
STORES = BACKENDS


@pytest.mark.parametrize("store", STORES)
async def test_no_message_lost_reordered_or_duplicated_under_kills(
    tmp_path: Path, store: Callable[[Path], str]
) -> None:
    """20 clients, 10,000 messages, 5 rooms; SIGKILL every 2 s; random disconnects."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = Server(store(tmp_path), port, tmp_path / "server.log")
    server.start()
    await server.ready()
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=admin) as http:
        tokens = await _seed(http)
    url = f"ws://127.0.0.1:{port}/ws"
    clients = {name: ChatClient(url, token, retry_max=0.5) for name, token in tokens.items()}
    shown: dict[str, dict[str, list[ChatMessage]]] = defaultdict(lambda: defaultdict(list))
    acked: dict[str, dict[int, str]] = defaultdict(dict)
    stop = asyncio.Event()
    rng = random.Random(5)

    async def consume(name: str, client: ChatClient) -> None:
        async for message in client.messages():
            shown[name][message.room].append(message)

    async def produce(i: int, name: str, client: ChatClient) -> None:
        per_client = MESSAGES // CLIENTS
        gate = asyncio.Semaphore(10)

        async def one(n: int) -> None:
            due = started + n * SEND_SPREAD / per_client - time.monotonic()
            if due > 0:
                await asyncio.sleep(due)
            async with gate:
                room = _rooms_of(i)[n % 2]
                body = f"{name}:{n}"
                seq = await client.send(room, body, key=f"{name}-{n}")
                assert acked[room].setdefault(seq, body) == body, "two messages got one seq"

        await asyncio.gather(*(one(n) for n in range(per_client)))

    async def disconnect_at_random() -> None:
        while not stop.is_set():
            await asyncio.sleep(rng.uniform(0.05, 0.4))
            await clients[rng.choice(list(clients))].reconnect()

    started = time.monotonic()
    for client in clients.values():
        await client.__aenter__()
    consumers = [asyncio.create_task(consume(n, c)) for n, c in clients.items()]
    chaos = [asyncio.create_task(server.chaos(stop)), asyncio.create_task(disconnect_at_random())]
    try:
        async with asyncio.timeout(150):
            await asyncio.gather(
                *(produce(i, n, c) for i, (n, c) in enumerate(sorted(clients.items())))
            )
        stop.set()
        await asyncio.gather(*chaos)
        send_seconds = time.monotonic() - started

        def everyone_has_everything() -> bool:
            return all(
                len(shown[name][room]) >= max(acked[room], default=0)
                for i, name in enumerate(sorted(clients))
                for room in _rooms_of(i)
            )

        await eventually(everyone_has_everything, 60)
    finally:
        stop.set()
        for task in consumers:
            task.cancel()
        for client in clients.values():
            await client.close()
        if server.proc is not None:
            server.kill()

    assert sum(len(seqs) for seqs in acked.values()) == MESSAGES
    assert server.kills >= 3, f"the server must be killed several times mid-run ({server.kills})"
    for i, name in enumerate(sorted(clients)):
        for room in _rooms_of(i):
            seqs = [m.seq for m in shown[name][room]]
            assert seqs == list(range(1, len(seqs) + 1)), f"{name}/{room}: gap, order or duplicate"
            bodies = {m.seq: m.body for m in shown[name][room]}
            missing = [s for s, body in acked[room].items() if bodies.get(s) != body]
            assert missing == [], f"{name}/{room}: {len(missing)} acknowledged messages lost"
    # Stored once each: the heads add up to exactly the messages sent (no resend stored twice).
    server.start()
    try:
        await server.ready()
        reader = {"authorization": f"Bearer {tokens['c00']}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=reader) as http:
            heads = await _heads(http)
    finally:
        server.kill()
    assert sum(heads.values()) == MESSAGES
    resent = sum(c.stats.resent for c in clients.values())
    dropped = sum(c.stats.duplicates_dropped for c in clients.values())
    connects = sum(c.stats.connects for c in clients.values())
    print(
        f"chaos: {MESSAGES} messages in {send_seconds:.1f}s, {server.kills} kills, "
        f"{connects} connects, {resent} resends, {dropped} redelivered duplicates dropped"
    )
    assert resent > 0, "the run never lost a send answer: it did not test recovery"
