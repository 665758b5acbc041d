"""Chat on RabbitMQ: end-to-end delivery next to RabbitMQ's raw ceiling, measured in one run.

What it measures (one run, same machine, so the figures share its load):

1. Raw ceilings with aio-pika, publish-with-confirm (256 in flight on one channel) while one
   consumer consumes with manual acks, for the mappings one could choose:
   - ``stream``: one stream (what the chat store uses: one stream per room);
   - ``quorum``: one quorum queue; ``classic``: one durable classic queue;
   - ``fanout x10``: each message routed to 10 durable queues (a queue per member), consumed
     from all 10 — messages/s counts a message once, when all 10 copies were consumed.
2. Cursor writes: ``RabbitMQChatStore.ack`` (SQLite group commit) from 1,000 concurrent callers,
   next to the stream's confirmed publishes, for the choice of where cursors live.
3. The chat server (a real ``python -m servicebay.cli.chat serve --store rabbitmq:...`` process),
   1 sender → N receivers in one room over WebSocket, acks included: saturated (256 sends in
   flight; delivered msg/s = messages that reached EVERY receiver per second) and paced at
   ``--rate`` msg/s; p50/p99 send→receive latency; CPU per message of the chat server process
   and of this process (the sender and the N receivers: the load generator), from /proc, since
   on two shared cores the load generator can be the bottleneck (RabbitMQ's own CPU is in
   neither).

It uses the RabbitMQ at ``--amqp`` (default the machine's, guest/guest), in a vhost of its own
created through the management API (``--management``) and deleted afterwards.

Usage: python benchmarks/chat/bench_chat_rabbitmq.py [--receivers 10,100] [--rate 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import httpx
from websockets.asyncio.client import connect

from servicebay import bindings
from servicebay.chat.client import ACK_EVERY, ChatClient
from servicebay.chat.stores import Retention, open_store

BODY = "x" * 64


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# 1. raw ceilings --------------------------------------------------------------------------------


async def ceiling(uri: str, kind: str, messages: int, copies: int = 1) -> float:
    """Messages/s through publish-with-confirm + consume-with-ack for one queue mapping."""
    conn = await aio_pika.connect(uri)
    pub = await conn.channel(publisher_confirms=True)
    name = f"bench-{kind}-{secrets.token_hex(3)}"
    arguments: dict[str, Any] = {"x-queue-type": kind} if kind in ("stream", "quorum") else {}
    exchange = pub.default_exchange
    routing = name
    queues = [f"{name}-{i}" for i in range(copies)] if copies > 1 else [name]
    for q in queues:
        await pub.declare_queue(q, durable=True, arguments=arguments)
    if copies > 1:
        exchange = await pub.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=True)
        for q in queues:
            await (await pub.get_queue(q)).bind(exchange)
        routing = ""
    received = [0] * len(queues)
    done = asyncio.Event()
    channels: list[aio_pika.abc.AbstractChannel] = []

    async def consumer(index: int, queue_name: str) -> None:
        channel = await conn.channel()
        channels.append(channel)
        await channel.set_qos(prefetch_count=500)
        queue = await channel.get_queue(queue_name, ensure=False)
        extra: dict[str, Any] | None = {"x-stream-offset": "first"} if kind == "stream" else None

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            received[index] += 1
            if received[index] % 100 == 0 or received[index] == messages:
                await message.ack(multiple=True)
            if min(received) >= messages:
                done.set()

        await queue.consume(on_message, arguments=extra)

    for index, q in enumerate(queues):
        await consumer(index, q)
    gate = asyncio.Semaphore(256)

    async def one(i: int) -> None:
        async with gate:
            message = aio_pika.Message(
                BODY.encode(), headers={"seq": i}, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            )
            await exchange.publish(message, routing_key=routing)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(messages)))
    await asyncio.wait_for(done.wait(), 300)
    elapsed = time.perf_counter() - start
    for channel in channels:
        await channel.close()
    for q in queues:
        await pub.queue_delete(q)
    if copies > 1:
        await pub.exchange_delete(name)
    await conn.close()
    return messages / elapsed


async def ack_rate(url: str, acks: int = 20_000) -> float:
    """Cursor writes/s through the RabbitMQ store's ack (SQLite group commit)."""
    store = open_store(url)
    await store.open()
    await store.put_room("acks", Retention())
    users = [f"u{i}" for i in range(100)]
    for user in users:
        await store.put_user(user)
        await store.join("acks", user, cursor=0)
    for i in range(200):
        await store.append("acks", users[0], f"k{i}", BODY)
    gate = asyncio.Semaphore(1000)

    async def one(i: int) -> None:
        async with gate:
            await store.ack("acks", users[i % 100], 1 + i // 100)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(acks)))
    elapsed = time.perf_counter() - start
    await store.close()
    return acks / elapsed


async def append_latency(url: str, rate: float, seconds: float) -> tuple[float, float]:
    """p50/p99 ms of ``RabbitMQChatStore.append`` alone (confirm + SQLite commit), paced."""
    store = open_store(url)
    await store.open()
    await store.put_room("paced", Retention())
    await store.put_user("s")
    await store.join("paced", "s")
    latencies: list[float] = []

    async def one(i: int) -> None:
        start = time.perf_counter()
        await store.append("paced", "s", f"k{i}", BODY)
        latencies.append(time.perf_counter() - start)

    tasks = []
    begin = time.perf_counter()
    for i in range(int(rate * seconds)):
        if (delay := begin + i / rate - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    await store.close()
    return pct(latencies, 50) * 1000, pct(latencies, 99) * 1000


# 2. end to end ----------------------------------------------------------------------------------


@dataclass
class Run:
    """One end-to-end scenario's figures."""

    receivers: int
    mode: str
    messages: int
    seconds: float = 0.0
    msgs_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    server_cpu: float = 0.0
    bench_cpu: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Receiver:
    """A lean protocol client: records arrival times, acks like servicebay.chat.client."""

    def __init__(self, url: str, token: str, total: int) -> None:
        self.url, self.token, self.total = url, token, total
        self.latencies: list[float] = []
        self.last = 0
        self.done = asyncio.Event()
        self.ready = asyncio.Event()

    async def run(self) -> None:
        async with connect(self.url, max_size=None, compression=None) as ws:
            await ws.send(json.dumps({"type": "hello", "token": self.token, "rooms": {"b": 0}}))
            acked, acked_at = 0, 0.0
            async for raw in ws:
                now = time.perf_counter()
                data = json.loads(raw)
                for frame in data if isinstance(data, list) else [data]:
                    if frame["type"] == "joined":
                        self.ready.set()
                    elif frame["type"] == "msg":
                        assert frame["seq"] == self.last + 1, "gap or duplicate"
                        self.last = frame["seq"]
                        self.latencies.append(now - float(frame["body"]))
                if self.last > acked and (now - acked_at >= ACK_EVERY or self.last >= self.total):
                    await ws.send(json.dumps({"type": "ack", "room": "b", "seq": self.last}))
                    acked, acked_at = self.last, now
                if self.last >= self.total:
                    self.done.set()
                    return


async def seed(url: str, receivers: int) -> tuple[str, list[str]]:
    store = open_store(url)
    await store.open()
    await store.put_room("b", Retention(keep_seconds=0, keep_last=0))
    tokens = []
    for name in ["sender"] + [f"r{i:03d}" for i in range(receivers)]:
        await store.put_user(name)
        await store.join("b", name, cursor=0)
        tokens.append((await store.issue_token(name)).token)
    await store.close()
    return tokens[0], tokens[1:]


async def send_all(sender: ChatClient, messages: int, rate: float) -> None:
    """Saturated (rate 0: 256 in flight) or paced at ``rate`` per second."""
    gate = asyncio.Semaphore(256)
    start = time.perf_counter()

    async def one(i: int) -> None:
        try:
            await sender.send("b", repr(time.perf_counter()), key=f"k{i}")
        finally:
            gate.release()

    tasks = []
    for i in range(messages):
        if rate and (delay := start + i / rate - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        await gate.acquire()
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)


async def scenario(uri: str, receivers: int, mode: str, messages: int, rate: float) -> Run:
    run = Run(receivers, mode, messages)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "bindings"
        root.mkdir()
        bindings.write(bindings.Binding.from_credentials("mq", "rabbitmq", {"uri": uri}), root)
        url = f"rabbitmq:mq?root={quote(str(root))}&state={quote(tmp)}/meta.db"
        sender_token, tokens = await seed(url, receivers)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = [sys.executable, "-m", "servicebay.cli.chat", "serve", "--store", url]
        cmd += ["--port", str(port), "--log-level", "warning"]
        env = {**os.environ, "SERVICEBAY_CHAT_ADMIN_TOKEN": secrets.token_urlsafe(16)}
        proc = await asyncio.create_subprocess_exec(
            *cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            await ready(port)
            ws = f"ws://127.0.0.1:{port}/ws"
            rs = [Receiver(ws, t, messages) for t in tokens]
            tasks = [asyncio.create_task(r.run()) for r in rs]
            await asyncio.gather(*(r.ready.wait() for r in rs))
            async with ChatClient(ws, sender_token) as sender:
                await sender.ready.wait()
                start, cpu0, srv0 = time.perf_counter(), time.process_time(), cpu_of(proc.pid)
                await send_all(sender, messages, rate)
                await asyncio.wait_for(asyncio.gather(*(r.done.wait() for r in rs)), 300)
                run.seconds = time.perf_counter() - start
                run.bench_cpu = time.process_time() - cpu0
                run.server_cpu = cpu_of(proc.pid) - srv0
            await asyncio.gather(*tasks)
        finally:
            proc.terminate()
            await proc.wait()
    run.latencies = [lat for r in rs for lat in r.latencies]
    run.msgs_per_s = messages / run.seconds
    run.p50_ms = pct(run.latencies, 50) * 1000
    run.p99_ms = pct(run.latencies, 99) * 1000
    return run


async def ready(port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if (await http.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("chat server did not become ready")


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672")
    parser.add_argument("--management", default="http://127.0.0.1:15672")
    parser.add_argument("--receivers", default="10,100")
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--ceiling-messages", type=int, default=5000)
    parser.add_argument("--saturated-messages", type=int, default=3000)
    parser.add_argument("--paced-seconds", type=float, default=6.0)
    args = parser.parse_args()

    vhost = f"bench-chat-{secrets.token_hex(3)}"
    api = f"{args.management}/api"
    auth = ("guest", "guest")
    async with httpx.AsyncClient(auth=auth) as http:
        (await http.put(f"{api}/vhosts/{vhost}")).raise_for_status()
        perms = {"configure": ".*", "write": ".*", "read": ".*"}
        (await http.put(f"{api}/permissions/{vhost}/guest", json=perms)).raise_for_status()
    uri = f"{args.amqp}/{vhost}"
    try:
        await report(uri, args)
    finally:
        async with httpx.AsyncClient(auth=auth) as http:
            await http.delete(f"{api}/vhosts/{vhost}")


async def report(uri: str, args: argparse.Namespace) -> None:
    n = args.ceiling_messages
    ceilings: dict[str, list[float]] = {"stream": [], "quorum": [], "classic": [], "fanout": []}

    async def measure_ceilings() -> None:
        # Measured around every scenario: the shared machine's load swings widely.
        ceilings["stream"].append(await ceiling(uri, "stream", n))
        ceilings["quorum"].append(await ceiling(uri, "quorum", n))
        ceilings["classic"].append(await ceiling(uri, "classic", n))
        ceilings["fanout"].append(await ceiling(uri, "classic", n // 5, copies=10))

    await measure_ceilings()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "bindings"
        root.mkdir()
        bindings.write(bindings.Binding.from_credentials("mq", "rabbitmq", {"uri": uri}), root)
        url = f"rabbitmq:mq?root={quote(str(root))}&state={quote(tmp)}/m.db"
        acks = await ack_rate(url)
        p50, p99 = await append_latency(url, args.rate, args.paced_seconds)
    runs: list[Run] = []
    for receivers in [int(x) for x in args.receivers.split(",")]:
        runs.append(await scenario(uri, receivers, "saturated", args.saturated_messages, 0))
        paced = int(args.rate * args.paced_seconds)
        runs.append(await scenario(uri, receivers, f"paced {args.rate:g}/s", paced, args.rate))
        await measure_ceilings()

    def median(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    print(f"\nmachine: {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}")
    print("| raw ceiling (publish-with-confirm + consume-with-ack) | median msg/s | runs |")
    print("|---|---|---|")
    for kind, values in ceilings.items():
        label = "fanout x10 (a durable queue per member)" if kind == "fanout" else kind
        spread = ", ".join(f"{v:,.0f}" for v in values)
        print(f"| {label} | {median(values):,.0f} | {spread} |")
    print(f"\ncursor writes (RabbitMQChatStore.ack, SQLite group commit): {acks:,.0f} acks/s")
    print(f"RabbitMQChatStore.append alone at {args.rate:g}/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    stream = median(ceilings["stream"])
    print(
        "\n| receivers | mode | msgs | delivered msg/s | % of stream ceiling | p50 ms | p99 ms "
        "| server CPU µs/msg | clients CPU µs/msg |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r.receivers} | {r.mode} | {r.messages} | {r.msgs_per_s:,.0f} | "
            f"{100 * r.msgs_per_s / stream:.0f}% | {r.p50_ms:.1f} | {r.p99_ms:.1f} | "
            f"{1e6 * r.server_cpu / r.messages:,.0f} | {1e6 * r.bench_cpu / r.messages:,.0f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
