"""Chat benchmark: end-to-end delivery next to the raw ceiling of the embedded store, one run.

What it measures (all on this machine, in one run, so the figures share its load):

1. The raw ceiling of SQLite as the chat uses it: batched append (one transaction per batch,
   WAL, synchronous=FULL) + read back + delete, by plain ``sqlite3`` in one thread.
2. The chat server (a real ``python -m servicebay.cli.chat serve`` process on the embedded
   store), 1 sender → N receivers in one room over WebSocket, acks included (sender and
   receivers share this process: measured faster than a separate receivers process on the
   shared 2-core machine, and it can only slow the chat down, never flatter it):
   - saturated: the sender keeps up to 256 sends in flight; delivered messages/s is messages that
     reached EVERY receiver per second, plus deliveries/s, p50/p99 send→receive latency;
   - paced: the sender offers a fixed rate (500 msg/s) and we report p50/p99 latency;
   - CPU of the server process and of this process (the sender and the N receivers: the load
     generator) separately, from /proc: on two shared cores the load generator can be the
     bottleneck, and the table says which one it was.

Usage: python benchmarks/chat/bench_chat.py [--receivers 10,100] [--rate 500] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from servicebay.chat.client import ACK_EVERY, ChatClient
from servicebay.chat.stores import Retention
from servicebay.chat.stores.sqlite import SQLiteChatStore


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# 1. raw ceiling ---------------------------------------------------------------------------------


def sqlite_ceiling(path: Path, messages: int = 20_000, batch: int = 200) -> float:
    """Messages/s through batched append + read + delete, synchronous=FULL, WAL."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE m (room TEXT, seq INTEGER, sender TEXT, key TEXT, body TEXT, ts REAL,"
        " PRIMARY KEY (room, seq)) WITHOUT ROWID"
    )
    body = "x" * 64
    start = time.perf_counter()
    for first in range(0, messages, batch):
        rows = [("r", s, "s", f"k{s}", body, time.time()) for s in range(first, first + batch)]
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO m VALUES (?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
        conn.execute("SELECT * FROM m WHERE room = 'r' AND seq >= ?", (first,)).fetchall()
        conn.execute("BEGIN")
        conn.execute("DELETE FROM m WHERE room = 'r' AND seq < ?", (first + batch,))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return messages / elapsed


async def store_ceiling(path: Path, messages: int = 10_000, concurrency: int = 256) -> float:
    """Messages/s through ``SQLiteChatStore.append`` from concurrent callers (group commit)."""
    store = SQLiteChatStore(path)
    await store.open()
    await store.put_room("r", Retention())
    await store.put_user("s")
    await store.join("r", "s")
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await store.append("r", "s", f"k{i}", "x" * 64)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(messages)))
    elapsed = time.perf_counter() - start
    await store.close()
    return messages / elapsed


# 2. end to end ----------------------------------------------------------------------------------


@dataclass
class Run:
    """One end-to-end scenario's figures."""

    receivers: int
    mode: str
    messages: int
    seconds: float = 0.0
    msgs_per_s: float = 0.0
    deliveries_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    server_cpu: float = 0.0
    bench_cpu: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)


async def seed(db: Path, receivers: int) -> tuple[str, list[str]]:
    store = SQLiteChatStore(db)
    await store.open()
    await store.put_room("bench", Retention(keep_seconds=0, keep_last=0))
    names = ["sender"] + [f"r{i:03d}" for i in range(receivers)]
    tokens = []
    for name in names:
        await store.put_user(name)
        await store.join("bench", name, cursor=0)
        tokens.append((await store.issue_token(name)).token)
    await store.close()
    return tokens[0], tokens[1:]


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(db: Path, port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "servicebay.cli.chat", "serve", "--store", f"sqlite:{db}"]
    cmd += ["--port", str(port), "--log-level", "warning"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def wait_up(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError("chat server did not start")


class Receiver:
    """A lean protocol client: records arrival latency, acks like ``servicebay.chat.client``."""

    def __init__(self, url: str, token: str, total: int) -> None:
        self.url, self.token, self.total = url, token, total
        self.latencies: list[float] = []
        self.last = 0
        self.done = asyncio.Event()
        self.ready = asyncio.Event()

    async def run(self) -> None:
        async with connect(self.url, max_size=None, compression=None) as ws:
            hello = {"type": "hello", "token": self.token, "rooms": {"bench": 0}}
            await ws.send(json.dumps(hello))
            acked, acked_at = 0, 0.0
            async for raw in ws:
                now = time.perf_counter()
                data = json.loads(raw)
                for frame in data if isinstance(data, list) else [data]:
                    if frame["type"] == "joined":
                        self.ready.set()
                    elif frame["type"] == "msg":
                        seq = frame["seq"]
                        assert seq == self.last + 1, "gap or duplicate"
                        self.last = seq
                        self.latencies.append(now - float(frame["body"]))
                # Cumulative acks at most every ACK_EVERY, as servicebay.chat.client sends them
                # (checked on arrival: no timer per receiver), and one for the last message.
                if self.last > acked and (now - acked_at >= ACK_EVERY or self.last >= self.total):
                    await ws.send(json.dumps({"type": "ack", "room": "bench", "seq": self.last}))
                    acked, acked_at = self.last, now
                if self.last >= self.total:
                    break
            self.done.set()


async def scenario(receivers: int, mode: str, messages: int, rate: float) -> Run:
    run = Run(receivers, mode, messages)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "chat.db"
        sender_token, tokens = await seed(db, receivers)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        proc = start_server(db, port)
        try:
            await wait_up(port)
            url = f"ws://127.0.0.1:{port}/ws"
            rs = [Receiver(url, t, messages) for t in tokens]
            tasks = [asyncio.create_task(r.run()) for r in rs]
            await asyncio.gather(*(r.ready.wait() for r in rs))
            async with ChatClient(url, sender_token) as sender:
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
            proc.wait()
    run.latencies = [lat for r in rs for lat in r.latencies]
    run.msgs_per_s = messages / run.seconds
    run.deliveries_per_s = messages * receivers / run.seconds
    run.p50_ms = pct(run.latencies, 50) * 1000
    run.p99_ms = pct(run.latencies, 99) * 1000
    return run


async def send_all(sender: ChatClient, messages: int, rate: float) -> None:
    """Send ``messages``; saturated (rate 0: 256 in flight) or paced at ``rate`` per second."""
    gate = asyncio.Semaphore(256)
    start = time.perf_counter()

    async def one(i: int) -> None:
        try:
            await sender.send("bench", repr(time.perf_counter()), key=f"k{i}")
        finally:
            gate.release()

    tasks = []
    for i in range(messages):
        if rate:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await gate.acquire()
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receivers", default="10,100")
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--saturated-messages", type=int, default=3000)
    parser.add_argument("--paced-seconds", type=float, default=6.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    raws: list[float] = []
    stores: list[float] = []

    async def ceilings() -> None:
        # Measured around every scenario: fsync latency on a shared disk swings widely.
        with tempfile.TemporaryDirectory() as tmp:
            raws.append(sqlite_ceiling(Path(tmp) / "raw.db"))
            stores.append(await store_ceiling(Path(tmp) / "store.db"))

    runs: list[Run] = []
    await ceilings()
    for n in [int(x) for x in args.receivers.split(",")]:
        runs.append(await scenario(n, "saturated", args.saturated_messages, 0))
        paced = int(args.rate * args.paced_seconds)
        runs.append(await scenario(n, f"paced {args.rate:g}/s", paced, args.rate))
        await ceilings()
    raw, store = statistics.median(raws), statistics.median(stores)

    cpu = os.cpu_count()
    print(f"\nmachine: {cpu} cores, load avg {os.getloadavg()[0]:.1f}")
    spread = ", ".join(f"{r:,.0f}" for r in raws)
    print(
        f"SQLite raw ceiling (batched append+read+delete, FULL): median {raw:,.0f} msg/s ({spread})"
    )
    spread = ", ".join(f"{r:,.0f}" for r in stores)
    print(f"SQLiteChatStore.append, 256 concurrent (group commit): median {store:,.0f} ({spread})")
    print(
        "| receivers | mode | msgs | delivered msg/s | deliveries/s | % of raw "
        "| p50 ms | p99 ms | server CPU µs/msg | server CPU-bound msg/s | clients CPU µs/msg |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r.receivers} | {r.mode} | {r.messages} | {r.msgs_per_s:,.0f} | "
            f"{r.deliveries_per_s:,.0f} | {100 * r.msgs_per_s / raw:.0f}% | "
            f"{r.p50_ms:.1f} | {r.p99_ms:.1f} | {1e6 * r.server_cpu / r.messages:,.0f} | "
            f"{r.messages / max(r.server_cpu, 1e-9):,.0f} | {1e6 * r.bench_cpu / r.messages:,.0f} |"
        )
    if args.json:
        out: dict[str, Any] = {
            "sqlite_raw_msgs_per_s": raw,
            "store_append_msgs_per_s": store,
            "runs": [{k: v for k, v in asdict(r).items() if k != "latencies"} for r in runs],
            "median_latency_ms": {
                f"{r.receivers}/{r.mode}": statistics.median(r.latencies) * 1000 for r in runs
            },
        }
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
