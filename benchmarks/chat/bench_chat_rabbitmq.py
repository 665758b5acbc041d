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
   ``--rate`` msg/s. The N receivers run in a process of their own (``--receivers-in same``: in
   this one, as before 2026-12-01 05:00), so that their work neither delays the sender's pacing
   nor stamps arrival times late in the sender's event loop; sender and receivers are lean
   protocol clients (websockets' sans-I/O protocol, orjson) that send and ack what
   ``servicebay.chat.client`` would, so that the load generator takes little of the two cores.
   Reported: p50/p99 send→receive latency over all deliveries; p50/p99 send→``sent`` (the
   sender's answer: the server's append, publisher confirm and metadata commit included); CPU
   per message of the chat server, of the sender, of the receivers and of RabbitMQ
   (``beam.smp``, when it runs on this machine), from /proc, since on two shared cores any of
   them can be the bottleneck; and the share of the run the server's threads spent runnable
   but without a CPU (/proc schedstat: the machine's other load).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import httpx
import orjson
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from servicebay import bindings
from servicebay.chat.client import ACK_EVERY
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
    sent_p50_ms: float = 0.0
    sent_p99_ms: float = 0.0
    server_cpu: float = 0.0
    sender_cpu: float = 0.0
    receivers_cpu: float = 0.0
    rabbitmq_cpu: float | None = None
    server_waited: float = 0.0


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def waited_of(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a CPU (/proc schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def rabbitmq_pid() -> int | None:
    """The local RabbitMQ node's Erlang VM (``beam.smp`` running ``rabbit``), if there is one."""
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"beam.smp" in cmdline and b"rabbit" in cmdline and b"-sname" not in cmdline:
            return int(entry.name)
    return None


class Receiver(asyncio.Protocol):
    """A lean protocol client: records arrival times, acks like servicebay.chat.client.

    Written on websockets' sans-I/O protocol over an asyncio ``Protocol`` (no task, future or
    queue per WebSocket message), so that 100 of them in one process cost the machine little
    next to the server they measure.
    """

    def __init__(self, url: str, token: str, total: int) -> None:
        self.url, self.token, self.total = url, token, total
        self.ws = ClientProtocol(parse_uri(url), max_size=None)
        self.transport: asyncio.Transport | None = None
        self.latencies: list[float] = []
        self.arrivals: list[float] = []  # per seq (index seq - 1)
        self.last = 0
        self.acked, self.acked_at = 0, 0.0
        self.done = asyncio.Event()
        self.ready = asyncio.Event()
        self.failure: Exception | None = None
        self.done_with_all = True  # stop once every message arrived

    async def run(self) -> None:
        uri = parse_uri(self.url)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(lambda: self, uri.host, uri.port)
        try:
            await self.done.wait()
        finally:
            transport.close()
        if self.failure is not None:
            raise self.failure

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.ws.send_request(self.ws.connect())
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.is_set():
            self.failure = RuntimeError(f"receiver lost its connection at seq {self.last}: {exc}")
            self.done.set()

    def _flush(self) -> None:
        assert self.transport is not None
        for data in self.ws.data_to_send():
            if data:
                self.transport.write(data)

    def _send(self, frame: dict[str, Any] | list[dict[str, Any]]) -> None:
        self.ws.send_text(orjson.dumps(frame))

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Response):
                if self.ws.handshake_exc is not None:
                    raise self.ws.handshake_exc
                self._send({"type": "hello", "v": 1, "token": self.token, "rooms": {"b": 0}})
            elif isinstance(event, Frame) and event.opcode == Opcode.TEXT:
                assert event.fin, "the server sends whole messages"
                self._on_text(event.data, now)
        if self.last > self.acked and (now - self.acked_at >= ACK_EVERY or self.last >= self.total):
            self._send({"type": "ack", "room": "b", "seq": self.last})
            self.acked, self.acked_at = self.last, now
        self._flush()
        if self.last >= self.total and self.done_with_all:
            self.done.set()

    def _on_text(self, text: bytes | bytearray | memoryview, now: float) -> None:
        data = orjson.loads(text)
        for frame in data if isinstance(data, list) else [data]:
            if frame["type"] == "joined":
                self.ready.set()
            elif frame["type"] == "msg":
                assert frame["seq"] == self.last + 1, "gap or duplicate"
                self.last = frame["seq"]
                self.latencies.append(now - float(frame["body"]))
                self.arrivals.append(now)


async def receive(url: str, tokens: list[str], total: int) -> dict[str, Any]:
    """Run the receivers; say ``ready`` on stdout once all joined; return their figures."""
    rs = [Receiver(url, t, total) for t in tokens]
    tasks = [asyncio.create_task(r.run()) for r in rs]
    await asyncio.gather(*(r.ready.wait() for r in rs))
    print("ready", flush=True)
    await asyncio.wait_for(asyncio.gather(*tasks), 600)
    cpu = time.process_time()
    latencies = [lat for r in rs for lat in r.latencies]
    return {
        "p50": pct(latencies, 50),
        "p99": pct(latencies, 99),
        "last_arrival": max(r.arrivals[-1] for r in rs),
        "cpu": cpu,
    }


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


class Sender(Receiver):
    """A lean sender: what ``servicebay.chat.client`` sends, without its bookkeeping.

    Saturated: at most ``WINDOW`` sends unanswered, the due ones as one array frame; paced: the
    sends due at each moment (one, mostly). The body is the send time for the receivers. It is
    a member of the room, so it also gets every message and acks it, like the client.
    """

    WINDOW = 256

    def __init__(self, url: str, token: str, total: int) -> None:
        super().__init__(url, token, total)
        self.done_with_all = False  # the scenario stops it, once every send was answered
        self.sent_at: dict[str, float] = {}
        self.answered: list[float] = []
        self.moved = asyncio.Event()

    async def send_all(self, rate: float) -> list[float]:
        """Send ``total`` messages (saturated when ``rate`` is 0); send→sent seconds."""
        start, sent = time.perf_counter(), 0
        while sent < self.total:
            if rate:
                due = min(self.total, int((time.perf_counter() - start) * rate) + 1)
                if due <= sent:
                    await asyncio.sleep(start + sent / rate - time.perf_counter())
                    continue
            else:
                due = min(self.total, len(self.answered) + self.WINDOW)
                if due <= sent:
                    self.moved.clear()
                    await self.moved.wait()
                    continue
            now = time.perf_counter()
            frames = [
                {"type": "send", "room": "b", "key": f"k{i}", "body": repr(now)}
                for i in range(sent, due)
            ]
            for frame in frames:
                self.sent_at[frame["key"]] = now
            self._send(frames[0] if len(frames) == 1 else frames)
            self._flush()
            sent = due
        while len(self.answered) < self.total:
            self.moved.clear()
            await self.moved.wait()
        return self.answered

    def _on_text(self, text: bytes | bytearray | memoryview, now: float) -> None:
        data = orjson.loads(text)
        for frame in data if isinstance(data, list) else [data]:
            kind = frame["type"]
            if kind == "sent":
                self.answered.append(now - self.sent_at.pop(frame["key"]))
                self.moved.set()
            elif kind == "joined":
                self.ready.set()
            elif kind == "msg":
                self.last = frame["seq"]
            elif kind == "error":
                raise RuntimeError(f"the server refused a frame: {frame}")


def read_tokens(path: str) -> list[str]:
    """The receivers' tokens, as the parent wrote them."""
    tokens: list[str] = json.loads(Path(path).read_text())
    return tokens


class ReceiverProcess:
    """The receivers in a child process (this script with ``--receive``)."""

    def __init__(self, url: str, tokens: list[str], total: int, folder: str) -> None:
        self.args = [url, str(total), str(Path(folder) / "tokens.json")]
        Path(self.args[2]).write_text(json.dumps(tokens))
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> int:
        """Start it; return its pid once every receiver joined."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--receive", *self.args, stdout=subprocess.PIPE
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 120)
        if line.strip() != b"ready":
            raise RuntimeError(f"receivers did not start: {line!r}")
        return self.proc.pid

    async def figures(self) -> dict[str, Any]:
        """Wait for every receiver to have every message; their figures."""
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 600)
        await self.proc.wait()
        figures: dict[str, Any] = json.loads(line)
        return figures


async def scenario(
    uri: str, receivers: int, mode: str, messages: int, rate: float, same_process: bool
) -> Run:
    run = Run(receivers, mode, messages)
    beam = rabbitmq_pid()
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
            child = ReceiverProcess(ws, tokens, messages, tmp)
            if same_process:
                rs = [Receiver(ws, t, messages) for t in tokens]
                tasks = [asyncio.create_task(r.run()) for r in rs]
                await asyncio.gather(*(r.ready.wait() for r in rs))
                receivers_pid = os.getpid()
            else:
                receivers_pid = await child.start()
            sender = Sender(ws, sender_token, messages)
            sending = asyncio.create_task(sender.run())
            await sender.ready.wait()
            start = time.perf_counter()
            cpu0, srv0, rcv0 = time.process_time(), cpu_of(proc.pid), cpu_of(receivers_pid)
            beam0 = cpu_of(beam) if beam else 0.0
            waited0 = waited_of(proc.pid)
            answered = await sender.send_all(rate)
            run.sender_cpu = time.process_time() - cpu0
            if same_process:
                await asyncio.wait_for(asyncio.gather(*tasks), 600)
                run.seconds = time.perf_counter() - start
                run.receivers_cpu = run.sender_cpu  # one process: both in one figure
                lats = [lat for r in rs for lat in r.latencies]
                got = {"p50": pct(lats, 50), "p99": pct(lats, 99)}
            else:
                got = await child.figures()
                run.seconds = got["last_arrival"] - start
                run.receivers_cpu = got["cpu"] - rcv0
            run.server_cpu = cpu_of(proc.pid) - srv0
            run.server_waited = waited_of(proc.pid) - waited0
            run.rabbitmq_cpu = cpu_of(beam) - beam0 if beam else None
            sender.done.set()
            await sending
        finally:
            proc.terminate()
            await proc.wait()
    run.msgs_per_s = messages / run.seconds
    run.p50_ms, run.p99_ms = got["p50"] * 1000, got["p99"] * 1000
    run.sent_p50_ms, run.sent_p99_ms = pct(answered, 50) * 1000, pct(answered, 99) * 1000
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
    parser.add_argument(
        "--mappings",
        default="stream,quorum,classic,fanout",
        help="raw ceilings to measure (the chat is compared with the stream's)",
    )
    parser.add_argument(
        "--receivers-in",
        choices=["process", "same"],
        default="process",
        help="the receivers' own process (default) or this one, with the sender",
    )
    parser.add_argument("--receive", nargs=3, help=argparse.SUPPRESS)  # the child's mode
    args = parser.parse_args()
    if args.receive:
        url, total, tokens = args.receive
        figures = await receive(url, read_tokens(tokens), int(total))
        print(json.dumps(figures), flush=True)
        return

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
    ceilings: dict[str, list[float]] = {k: [] for k in args.mappings.split(",")}
    ceilings.setdefault("stream", [])
    same = args.receivers_in == "same"

    async def measure_ceilings() -> None:
        # Measured around every pair of scenarios: the shared machine's load swings widely.
        for kind in ceilings:
            if kind == "fanout":
                ceilings[kind].append(await ceiling(uri, "classic", n // 5, copies=10))
            else:
                ceilings[kind].append(await ceiling(uri, kind, n))

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
        saturated = args.saturated_messages
        runs.append(await scenario(uri, receivers, "saturated", saturated, 0, same))
        paced, mode = int(args.rate * args.paced_seconds), f"paced {args.rate:g}/s"
        runs.append(await scenario(uri, receivers, mode, paced, args.rate, same))
        await measure_ceilings()

    def median(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    where = "with the sender" if same else "in a process of their own"
    print(f"\nmachine: {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}")
    print(f"receivers {where}")
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
        "\n| receivers | mode | msgs | delivered msg/s | % of stream ceiling | p50 / p99 ms "
        "| send→sent p50 / p99 ms | CPU µs/msg: server / sender / receivers / RabbitMQ "
        "| server runnable, no CPU |"
    )
    print("|---|---|---|---|---|---|---|---|---|")

    def per_msg(cpu: float | None, r: Run) -> str:
        return "—" if cpu is None else f"{1e6 * cpu / r.messages:,.0f}"

    for r in runs:
        cpus = [r.server_cpu, r.sender_cpu, None if same else r.receivers_cpu, r.rabbitmq_cpu]
        print(
            f"| {r.receivers} | {r.mode} | {r.messages} | {r.msgs_per_s:,.0f} | "
            f"{100 * r.msgs_per_s / stream:.0f}% | {r.p50_ms:.1f} / {r.p99_ms:.1f} | "
            f"{r.sent_p50_ms:.1f} / {r.sent_p99_ms:.1f} | "
            f"{' / '.join(per_msg(c, r) for c in cpus)} | "
            f"{100 * r.server_waited / r.seconds:.0f}% of the run |"
        )


if __name__ == "__main__":
    asyncio.run(main())
