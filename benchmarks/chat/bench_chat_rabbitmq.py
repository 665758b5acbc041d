"""Chat on RabbitMQ: end-to-end delivery next to RabbitMQ's raw ceiling, measured in one run.

What it measures (one run, same machine, so the figures share its load):

1. Raw ceilings with aio-pika, publish-with-confirm (256 in flight on one channel) while
   consumers consume with manual acks:
   - one AMQP message per chat message (the issue's literal "aio-pika publish-with-confirm +
     consume-with-ack"), for the mappings one could choose: ``stream`` (one stream, what the
     chat uses: a stream per room), ``quorum``, ``classic``, and ``fanout x10`` (each message
     routed to 10 durable queues, a queue per member; a message counts once all 10 copies were
     consumed);
   - **packed, N consumers**: one stream whose entries hold 200 chat messages each (as the
     chat's store packs a batch into one entry, and as the SQLite ceiling commits 200 at a
     time), read by N consumers, each from the start, each acking; a message counts once every
     consumer has it. With N = the scenario's receivers this is the like-for-like ceiling of a
     1 → N scenario (the chat batches its writes and must reach N receivers); the goal is
     judged against it, the per-message figure is printed next to it.
2. Cursor writes: ``RabbitMQChatStore.ack`` (SQLite group commit) from 1,000 concurrent callers,
   next to the stream's confirmed publishes, for the choice of where cursors live.
3. The chat server (a real ``python -m servicebay.cli.chat serve --store rabbitmq:...`` process),
   1 sender → N receivers in one room over WebSocket, acks included: saturated (256 sends in
   flight; delivered msg/s = messages that reached EVERY receiver per second) and paced at
   ``--rate`` msg/s. The receivers run in processes of their own (at most 50 each) and the
   clients are ``lean_clients`` (the same as the SQLite benchmark's). Reported: p50/p99
   send→receive latency over all deliveries; p50/p99 send→``sent`` (the server's append,
   publisher confirm and metadata commit included); CPU per message of the chat server, of the
   sender, of the receivers and of RabbitMQ (``beam.smp``, when it runs on this machine), from
   /proc, since on two shared cores any of them can be the bottleneck; and the share of the run
   the server's threads spent runnable but without a CPU (/proc schedstat: the machine's other
   load).

It uses the RabbitMQ at ``--amqp`` (default the machine's, guest/guest), in a vhost of its own
created through the management API (``--management``) and deleted afterwards.

Usage: python benchmarks/chat/bench_chat_rabbitmq.py [--receivers 10,100] [--rate 500]
"""

from __future__ import annotations

import argparse
import asyncio
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
from lean_clients import ReceiverProcess, Sender, paced, pct

from servicebay import bindings
from servicebay.chat.stores import Retention, open_store

BODY = "x" * 64
ROOM = "b"
PACK = 200  # chat messages per stream entry in the packed ceiling (SQLite's batch)


# 1. raw ceilings --------------------------------------------------------------------------------


async def ceiling(
    uri: str, kind: str, messages: int, copies: int = 1, consumers: int = 1, pack: int = 1
) -> float:
    """Messages/s through publish-with-confirm + consume-with-ack for one queue mapping.

    ``pack`` > 1: each AMQP message is an entry holding ``pack`` chat messages (a JSON array,
    as the chat's store writes them); ``consumers`` > 1 (streams): that many consumers read the
    one stream, each from its start, and a message counts once every consumer has it.
    """
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
    readers = [q for q in queues for _ in range(consumers)]
    received = [0] * len(readers)
    done = asyncio.Event()
    channels: list[aio_pika.abc.AbstractChannel] = []
    busy = [0]  # callbacks running (aio-pika runs each as a task)
    idle = asyncio.Event()

    async def consumer(index: int, queue_name: str) -> None:
        channel = await conn.channel()
        channels.append(channel)
        await channel.set_qos(prefetch_count=500)
        queue = await channel.get_queue(queue_name, ensure=False)
        extra: dict[str, Any] | None = {"x-stream-offset": "first"} if kind == "stream" else None

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            busy[0] += 1
            idle.clear()
            try:
                await take(message)
            finally:
                busy[0] -= 1
                if not busy[0]:
                    idle.set()

        async def take(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            before = received[index]
            if pack > 1:
                # Every reader gets every chat message, as SQLite's readers fetch every row.
                received[index] += len(orjson.loads(message.body))
            else:
                received[index] += 1
            if pack > 1:
                # Each entry on its own: aio-pika runs callbacks as tasks, and a cumulative
                # ack overtaken by a later one names an unknown tag (the channel closes).
                await message.ack()
            elif before // 100 != received[index] // 100 or received[index] >= messages:
                await message.ack(multiple=True)
            if min(received) >= messages:
                done.set()

        await queue.consume(on_message, arguments=extra)

    for index, q in enumerate(readers):
        await consumer(index, q)
    gate = asyncio.Semaphore(256)

    def entry(i: int) -> bytes:
        if pack == 1:
            return BODY.encode()
        rows = [["s", f"k{i * pack + j}", BODY, time.time()] for j in range(pack)]
        return orjson.dumps(rows)

    async def one(i: int) -> None:
        async with gate:
            message = aio_pika.Message(
                entry(i),
                headers={"seq": i * pack + 1, "count": pack},
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await exchange.publish(message, routing_key=routing)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(messages // pack)))
    await asyncio.wait_for(done.wait(), 300)
    elapsed = time.perf_counter() - start
    if busy[0]:  # an ack sent after its channel closed closes the whole connection
        await idle.wait()
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

    await paced(rate, seconds, one)
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


async def scenario(
    uri: str, receivers: int, mode: str, messages: int, rate: float, procs: int
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
        children: list[ReceiverProcess] = []
        try:
            await ready(port)
            ws = f"ws://127.0.0.1:{port}/ws"
            children = [
                ReceiverProcess(ws, tokens[i::procs], messages, ROOM, Path(tmp) / f"r{i}.json")
                for i in range(procs)
            ]
            for child in children:
                await child.start()
            sender = Sender(ws, sender_token, messages, ROOM)
            sending = asyncio.create_task(sender.run())
            await asyncio.wait_for(sender.ready.wait(), 30)
            start = time.perf_counter()
            cpu0, srv0 = time.process_time(), cpu_of(proc.pid)
            beam0 = cpu_of(beam) if beam else 0.0
            waited0 = waited_of(proc.pid)
            answered = await asyncio.wait_for(sender.send_all(rate), 600)
            run.sender_cpu = time.process_time() - cpu0
            figures = [await child.figures() for child in children]
            run.seconds = max(f["last_arrival"] for f in figures) - start
            run.receivers_cpu = sum(f["cpu"] for f in figures)
            run.server_cpu = cpu_of(proc.pid) - srv0
            run.server_waited = waited_of(proc.pid) - waited0
            run.rabbitmq_cpu = cpu_of(beam) - beam0 if beam else None
            sender.done.set()
            await sending
        finally:
            for child in children:
                child.kill()
            proc.terminate()
            await proc.wait()
    os.sync()  # the scenario's writes must not land in the next one's fsyncs (bench_chat.py)
    latencies = [lat for f in figures for lat in f["latencies"]]
    run.msgs_per_s = messages / run.seconds
    run.p50_ms, run.p99_ms = pct(latencies, 50) * 1000, pct(latencies, 99) * 1000
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
    parser.add_argument("--packed-messages", type=int, default=40_000)
    parser.add_argument("--saturated-messages", type=int, default=60_000)
    parser.add_argument("--paced-seconds", type=float, default=6.0)
    parser.add_argument(
        "--mappings",
        default="stream,quorum,classic,fanout",
        help="per-message raw ceilings to measure besides the packed stream's",
    )
    parser.add_argument(
        "--receivers-per-process",
        type=int,
        default=50,
        help="receivers share processes of at most this many (100 receivers: 2 processes)",
    )
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


def median(xs: list[float]) -> float:
    """The middle value (the upper one of an even count)."""
    return sorted(xs)[len(xs) // 2]


async def report(uri: str, args: argparse.Namespace) -> None:
    n = args.ceiling_messages
    counts = [int(x) for x in args.receivers.split(",")]
    ceilings: dict[str, list[float]] = {k: [] for k in args.mappings.split(",")}
    ceilings.setdefault("stream", [])
    packed: dict[int, list[float]] = {k: [] for k in sorted({1, *counts})}

    async def measure_ceilings() -> None:
        # Measured around every pair of scenarios: the shared machine's load swings widely.
        for kind in ceilings:
            if kind == "fanout":
                ceilings[kind].append(await ceiling(uri, "classic", n // 5, copies=10))
            else:
                ceilings[kind].append(await ceiling(uri, kind, n))
        for readers, values in packed.items():
            pack = PACK
            values.append(
                await ceiling(uri, "stream", args.packed_messages, consumers=readers, pack=pack)
            )

    loads = [os.getloadavg()[0]]
    await measure_ceilings()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "bindings"
        root.mkdir()
        bindings.write(bindings.Binding.from_credentials("mq", "rabbitmq", {"uri": uri}), root)
        url = f"rabbitmq:mq?root={quote(str(root))}&state={quote(tmp)}/m.db"
        acks = await ack_rate(url)
        p50, p99 = await append_latency(url, args.rate, args.paced_seconds)
    runs: list[Run] = []
    for receivers in counts:
        procs = -(-receivers // args.receivers_per_process)
        saturated = args.saturated_messages
        runs.append(await scenario(uri, receivers, "saturated", saturated, 0, procs))
        paced, mode = int(args.rate * args.paced_seconds), f"paced {args.rate:g}/s"
        runs.append(await scenario(uri, receivers, mode, paced, args.rate, procs))
        loads.append(os.getloadavg()[0])
        await measure_ceilings()

    print(
        f"\nmachine: {os.cpu_count()} cores, load avg (1 min) {min(loads):.1f} to {max(loads):.1f}"
        f" during the run, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(
        "| raw ceiling (aio-pika publish-with-confirm + consume-with-ack) | median msg/s | runs |"
    )
    print("|---|---|---|")
    for kind, values in ceilings.items():
        label = "fanout x10 (a durable queue per member)" if kind == "fanout" else kind
        spread = ", ".join(f"{v:,.0f}" for v in values)
        print(f"| {label}, one AMQP message per chat message | {median(values):,.0f} | {spread} |")
    for readers, values in packed.items():
        spread = ", ".join(f"{v:,.0f}" for v in values)
        print(
            f"| stream, {PACK} chat messages per entry, {readers} consumer(s) "
            f"| {median(values):,.0f} | {spread} |"
        )
    print(f"\ncursor writes (RabbitMQChatStore.ack, SQLite group commit): {acks:,.0f} acks/s")
    print(f"RabbitMQChatStore.append alone at {args.rate:g}/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    stream = median(ceilings["stream"])
    print(
        "\n| receivers (processes) | mode | msgs | delivered msg/s "
        "| % of packed N-consumer ceiling | % of per-message stream ceiling | p50 / p99 ms "
        "| send→sent p50 / p99 ms | CPU µs/msg: server / sender / receivers / RabbitMQ "
        "| receivers' share of the clients+server CPU | server runnable, no CPU |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")

    def per_msg(cpu: float | None, r: Run) -> str:
        return "—" if cpu is None else f"{1e6 * cpu / r.messages:,.0f}"

    for r in runs:
        cpus = [r.server_cpu, r.sender_cpu, r.receivers_cpu, r.rabbitmq_cpu]
        share = r.receivers_cpu / max(r.server_cpu + r.sender_cpu + r.receivers_cpu, 1e-9)
        procs = -(-r.receivers // args.receivers_per_process)
        print(
            f"| {r.receivers} ({procs}) | {r.mode} | {r.messages} | {r.msgs_per_s:,.0f} | "
            f"{100 * r.msgs_per_s / median(packed[r.receivers]):.0f}% | "
            f"{100 * r.msgs_per_s / stream:.0f}% | {r.p50_ms:.1f} / {r.p99_ms:.1f} | "
            f"{r.sent_p50_ms:.1f} / {r.sent_p99_ms:.1f} | "
            f"{' / '.join(per_msg(c, r) for c in cpus)} | {100 * share:.0f}% | "
            f"{100 * r.server_waited / r.seconds:.0f}% of the run |"
        )


if __name__ == "__main__":
    asyncio.run(main())
