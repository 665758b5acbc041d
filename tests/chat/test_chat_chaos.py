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
from pathlib import Path

import pytest
from chat_helpers import eventually

from servicebay.chat.client import ChatClient, ChatMessage
from servicebay.chat.stores import Retention
from servicebay.chat.stores.sqlite import SQLiteChatStore

pytestmark = pytest.mark.e2e

CLIENTS, ROOMS, MESSAGES = 20, 5, 10_000
KILL_EVERY = 2.0


def _rooms_of(i: int) -> list[str]:
    return [f"r{i % ROOMS}", f"r{(i + 1) % ROOMS}"]


async def _seed(db: Path) -> dict[str, str]:
    """Rooms that delete as soon as retention allows (so deletion is under test too), users."""
    store = SQLiteChatStore(db)
    await store.open()
    tokens = {}
    for r in range(ROOMS):
        await store.put_room(f"r{r}", Retention(keep_seconds=0, keep_last=0))
    for i in range(CLIENTS):
        name = f"c{i:02d}"
        await store.put_user(name)
        for room in _rooms_of(i):
            await store.join(room, name, cursor=0)
        tokens[name] = (await store.issue_token(name)).token
    await store.close()
    return tokens


class Server:
    """The chat server as a real process, killed and restarted on the same port."""

    def __init__(self, db: Path, port: int, log: Path) -> None:
        self.db, self.port, self.log = db, port, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        env = {**os.environ, "SERVICEBAY_CHAT_COMPACT_EVERY": "1"}
        cmd = [sys.executable, "-m", "servicebay.cli.chat", "serve", "--store", f"sqlite:{self.db}"]
        cmd += ["--port", str(self.port), "--log-level", "warning"]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=env)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.kills += 1

    async def chaos(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), KILL_EVERY)
            except TimeoutError:
                self.kill()
                self.start()


async def test_no_message_lost_reordered_or_duplicated_under_kills(tmp_path: Path) -> None:
    """20 clients, 10,000 messages, 5 rooms; SIGKILL every 2 s; random disconnects."""
    db = tmp_path / "chat.db"
    tokens = await _seed(db)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = Server(db, port, tmp_path / "server.log")
    server.start()
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
    assert server.kills >= 2, "the server must have been killed during the run"
    for i, name in enumerate(sorted(clients)):
        for room in _rooms_of(i):
            seqs = [m.seq for m in shown[name][room]]
            assert seqs == list(range(1, len(seqs) + 1)), f"{name}/{room}: gap, order or duplicate"
            bodies = {m.seq: m.body for m in shown[name][room]}
            missing = [s for s, body in acked[room].items() if bodies.get(s) != body]
            assert missing == [], f"{name}/{room}: {len(missing)} acknowledged messages lost"
    # Stored once each: the heads add up to exactly the messages sent (no duplicate stored).
    store = SQLiteChatStore(db)
    await store.open()
    try:
        heads = [(await store.get_room(f"r{r}")).head for r in range(ROOMS)]  # type: ignore[union-attr]
    finally:
        await store.close()
    assert sum(heads) == MESSAGES
    resent = sum(c.stats.resent for c in clients.values())
    dropped = sum(c.stats.duplicates_dropped for c in clients.values())
    connects = sum(c.stats.connects for c in clients.values())
    print(
        f"chaos: {MESSAGES} messages in {send_seconds:.1f}s, {server.kills} kills, "
        f"{connects} connects, {resent} resends, {dropped} redelivered duplicates dropped"
    )
    assert resent > 0, "the run never lost a send answer: it did not test recovery"
