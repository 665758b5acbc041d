"""Chaos on the RabbitMQ store with RabbitMQ itself restarted: a private RabbitMQ node is stopped
and started again three times during the run while the chat server is SIGKILLed every 2 s and
clients drop at random; afterwards every sender-acknowledged message reached every member of its
room, in order, once (the issue's chaos test, "same while RabbitMQ itself is restarted")."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from chat_helpers import eventually

from servicebay.chat.client import ChatClient, ChatMessage
from support import chat_rabbitmq
from support.rabbitmq_node import RabbitMQNode, free_port

# The run's own deadlines (480 s for the sends, 120 s for the deliveries after them) are what
# bound it; the suite's 300 s default was passed at load 7-8 on the 2-core machine (251 s there,
# 2026-12-01), where each server restart takes seconds.
pytestmark = [pytest.mark.rabbitmq, pytest.mark.e2e, pytest.mark.timeout(720)]

CLIENTS, ROOMS, MESSAGES = 20, 5, 10_000
KILL_EVERY = 2.0
# RabbitMQ is restarted when these shares of the messages have been acknowledged to senders:
# tied to progress, not to time, so that a fast machine cannot finish the run between restarts.
RESTART_AT = (0.15, 0.45, 0.75)
ADMIN_TOKEN = "rabbitmq-chaos-admin-token"


def _rooms_of(i: int) -> list[str]:
    return [f"r{i % ROOMS}", f"r{(i + 1) % ROOMS}"]


class ChatProcess:
    """The chat server as a real process on the RabbitMQ store, killed and restarted."""

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

    async def ready(self, seconds: float = 180) -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}") as http:

            async def answers() -> bool:
                try:
                    return (await http.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(answers, seconds)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.kills += 1

    async def chaos(self, stop: asyncio.Event) -> None:
        # Ready means the store answers, so while RabbitMQ is down this waits for it too.
        while not stop.is_set():
            await self.ready()
            try:
                await asyncio.wait_for(stop.wait(), KILL_EVERY)
            except TimeoutError:
                self.kill()
                self.start()


async def restart_rabbitmq(node: RabbitMQNode, progress: Callable[[], int]) -> None:
    """Stop and start the private node as the run passes each share in RESTART_AT."""
    for share in RESTART_AT:
        target = share * MESSAGES

        def reached(target: float = target) -> bool:
            return progress() >= target

        await eventually(reached, 480)
        await node.shutdown()
        node.start()
        await node.ready()


async def _seed(http: httpx.AsyncClient) -> dict[str, str]:
    tokens = {}
    for r in range(ROOMS):
        retention = {"keep_seconds": 0, "keep_last": 0}
        (await http.put(f"/api/v1/rooms/r{r}", json=retention)).raise_for_status()
    for i in range(CLIENTS):
        name = f"c{i:02d}"
        (await http.post("/api/v1/users", json={"id": name})).raise_for_status()
        for room in _rooms_of(i):
            (await http.put(f"/api/v1/rooms/{room}/members/{name}")).raise_for_status()
        tokens[name] = (await http.post(f"/api/v1/users/{name}/tokens", json={})).json()["token"]
    return tokens


async def test_no_message_lost_reordered_or_duplicated_while_rabbitmq_restarts(
    tmp_path: Path,
) -> None:
    """20 clients, 10,000 messages, 5 rooms; RabbitMQ restarted 3 times, chat server SIGKILLed."""
    node = RabbitMQNode(tmp_path / "rabbitmq")
    node.start()
    port = free_port()
    server = ChatProcess(
        chat_rabbitmq.store_url(tmp_path, uri=node.uri), port, tmp_path / "server.log"
    )
    clients: dict[str, ChatClient] = {}
    try:
        await node.ready()
        server.start()
        await server.ready()
        admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=admin) as http:
            tokens = await _seed(http)
        url = f"ws://127.0.0.1:{port}/ws"
        clients = {name: ChatClient(url, token, retry_max=0.5) for name, token in tokens.items()}
        shown, acked, send_seconds = await _run(clients, server, node)
        # After the run: everything stored once (the heads add up to the messages sent).
        reader = {"authorization": f"Bearer {tokens['c00']}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=reader) as http:
            await server.ready()
            rooms = (await http.get("/api/v1/rooms")).json()["rooms"]
    finally:
        for client in clients.values():
            await client.close()
        if server.proc is not None:
            server.kill()
        node.stop()

    assert sum(len(seqs) for seqs in acked.values()) == MESSAGES
    assert node.stops == len(RESTART_AT), "RabbitMQ must have been restarted during the run"
    assert server.kills >= 2, "the chat server must have been killed during the run"
    for i, name in enumerate(sorted(clients)):
        for room in _rooms_of(i):
            seqs = [m.seq for m in shown[name][room]]
            assert seqs == list(range(1, len(seqs) + 1)), f"{name}/{room}: gap, order or duplicate"
            bodies = {m.seq: m.body for m in shown[name][room]}
            missing = [s for s, body in acked[room].items() if bodies.get(s) != body]
            assert missing == [], f"{name}/{room}: {len(missing)} acknowledged messages lost"
    assert sum(room["head"] for room in rooms) == MESSAGES
    resent = sum(c.stats.resent for c in clients.values())
    print(
        f"rabbitmq chaos: {MESSAGES} messages in {send_seconds:.1f}s, {node.stops} RabbitMQ "
        f"restarts, {server.kills} server kills, {resent} resends"
    )
    assert resent > 0, "the run never lost a send answer: it did not test recovery"


async def _run(
    clients: dict[str, ChatClient], server: ChatProcess, node: RabbitMQNode
) -> tuple[dict[str, dict[str, list[ChatMessage]]], dict[str, dict[int, str]], float]:
    shown: dict[str, dict[str, list[ChatMessage]]] = defaultdict(lambda: defaultdict(list))
    acked: dict[str, dict[int, str]] = defaultdict(dict)
    stop = asyncio.Event()
    rng = random.Random(7)

    async def consume(name: str, client: ChatClient) -> None:
        async for message in client.messages():
            shown[name][message.room].append(message)

    async def produce(i: int, name: str, client: ChatClient) -> None:
        gate = asyncio.Semaphore(10)

        async def one(n: int) -> None:
            async with gate:
                room = _rooms_of(i)[n % 2]
                body = f"{name}:{n}"
                seq = await client.send(room, body, key=f"{name}-{n}")
                assert acked[room].setdefault(seq, body) == body, "two messages got one seq"

        await asyncio.gather(*(one(n) for n in range(MESSAGES // CLIENTS)))

    async def disconnect_at_random() -> None:
        while not stop.is_set():
            await asyncio.sleep(rng.uniform(0.05, 0.4))
            await clients[rng.choice(list(clients))].reconnect()

    started = time.monotonic()
    for client in clients.values():
        await client.__aenter__()
    consumers = [asyncio.create_task(consume(n, c)) for n, c in clients.items()]
    chaos = [
        asyncio.create_task(server.chaos(stop)),
        asyncio.create_task(restart_rabbitmq(node, lambda: sum(map(len, acked.values())))),
        asyncio.create_task(disconnect_at_random()),
    ]
    try:
        async with asyncio.timeout(480):
            await asyncio.gather(
                *(produce(i, n, c) for i, (n, c) in enumerate(sorted(clients.items())))
            )
        send_seconds = time.monotonic() - started
        stop.set()
        await asyncio.gather(*chaos)

        def everyone_has_everything() -> bool:
            return all(
                len(shown[name][room]) >= max(acked[room], default=0)
                for i, name in enumerate(sorted(clients))
                for room in _rooms_of(i)
            )

        await eventually(everyone_has_everything, 120)
    finally:
        stop.set()
        for task in [*consumers, *chaos]:
            task.cancel()
    return shown, acked, send_seconds
