"""Chat benchmark: end-to-end delivery next to the raw ceiling of the embedded store, one run.

What it measures (all on this machine, in one run, so the figures share its load):

1. The raw ceiling of SQLite as the chat uses it, by plain ``sqlite3`` in one thread (WAL,
   synchronous=FULL), for N readers: append a batch of 200 in one transaction, each of the N
   readers reads it back, then one transaction moves the N readers' cursors and deletes the
   batch. Its own CPU per message is printed too (the rest of its time is fsync waits).
   - with **1 reader** it is the issue's "batched SQLite append + read + delete";
   - with **N readers**, N the scenario's receivers, it is the like-for-like ceiling of a
     1 → N scenario: the store itself handing every message to N readers, each acknowledging
     (the chat must get every message to N receivers, acks included). The goal is judged
     against this one; the 1-reader figure is printed next to it.
2. The chat server (a real ``python -m servicebay.cli.chat serve`` process on the embedded
   store), 1 sender -> N receivers in one room over WebSocket, acks included. Three kinds of
   process: the server, the sender (this process) and the receivers (child processes of at
   most 50 receivers each), so that no one Python process does the work of all sides. The
   clients are ``lean_clients`` (the same as the RabbitMQ benchmark's):
   - saturated: the sender keeps up to 256 sends unanswered, in arrays as the client packs
     them; delivered messages/s is messages that reached EVERY receiver per second, plus
     deliveries/s, p50/p99 send->receive latency (CLOCK_MONOTONIC across processes);
   - paced: the sender offers a fixed rate (500 msg/s) and we report p50/p99 latency;
   - CPU of the server, the sender and the receivers separately (/proc, process_time): on two
     shared cores the load generator can be the bottleneck, and the table says which one was.

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

from lean_clients import ReceiverProcess, Sender, pct

from servicebay.chat.stores import Retention
from servicebay.chat.stores.sqlite import SQLiteChatStore

ROOM = "bench"

# 1. raw ceiling ---------------------------------------------------------------------------------


CEILING_BATCH = 200


@dataclass
class Ceiling:
    """One measurement of the raw ceiling: its rate, and its own CPU per message."""

    readers: int
    msgs_per_s: float
    cpu_us: float


def sqlite_ceiling(
    path: Path, readers: int = 1, messages: int = 60_000, batch: int = CEILING_BATCH
) -> Ceiling:
    """Messages/s through batched append + N reads + N cursor moves and delete, WAL, FULL."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE m (room TEXT, seq INTEGER, sender TEXT, key TEXT, body TEXT, ts REAL,"
        " PRIMARY KEY (room, seq)) WITHOUT ROWID"
    )
    conn.execute(
        "CREATE TABLE c (room TEXT, user TEXT, cursor INTEGER, PRIMARY KEY (room, user))"
        " WITHOUT ROWID"
    )
    users = [f"u{i}" for i in range(readers)]
    conn.executemany("INSERT INTO c VALUES ('r', ?, 0)", [(u,) for u in users])
    body = "x" * 64
    start, cpu = time.perf_counter(), time.process_time()
    for first in range(0, messages, batch):
        rows = [("r", s, "s", f"k{s}", body, time.time()) for s in range(first, first + batch)]
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO m VALUES (?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
        for _ in users:
            conn.execute("SELECT * FROM m WHERE room = 'r' AND seq >= ?", (first,)).fetchall()
        last = first + batch - 1
        conn.execute("BEGIN")
        moves = [(last, u) for u in users]
        conn.executemany("UPDATE c SET cursor = ? WHERE room = 'r' AND user = ?", moves)
        conn.execute("DELETE FROM m WHERE room = 'r' AND seq <= ?", (last,))
        conn.execute("COMMIT")
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    conn.close()
    return Ceiling(readers, messages / elapsed, 1e6 * cpu / messages)


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
    receiver_procs: int
    seconds: float = 0.0
    msgs_per_s: float = 0.0
    deliveries_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    sent_p50_ms: float = 0.0
    sent_p99_ms: float = 0.0
    server_cpu: float = 0.0
    bench_cpu: float = 0.0  # the sender's process
    receivers_cpu: float = 0.0  # the receivers' processes
    latencies: Any = field(default=None, repr=False)


async def seed(db: Path, receivers: int) -> tuple[str, list[str]]:
    store = SQLiteChatStore(db)
    await store.open()
    await store.put_room(ROOM, Retention(keep_seconds=0, keep_last=0))
    names = ["sender"] + [f"r{i:03d}" for i in range(receivers)]
    tokens = []
    for name in names:
        await store.put_user(name)
        await store.join(ROOM, name, cursor=0)
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


async def scenario(receivers: int, mode: str, messages: int, rate: float, procs: int) -> Run:
    """One server, one sender, ``receivers`` receivers spread over ``procs`` processes."""
    run = Run(receivers, mode, messages, procs)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "chat.db"
        sender_token, tokens = await seed(db, receivers)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        proc = start_server(db, port)
        children: list[ReceiverProcess] = []
        try:
            await wait_up(port)
            url = f"ws://127.0.0.1:{port}/ws"
            children = [
                ReceiverProcess(url, tokens[i::procs], messages, ROOM, Path(tmp) / f"r{i}.json")
                for i in range(procs)
            ]
            for child in children:
                await child.start()
            sender = Sender(url, sender_token, messages, ROOM)
            sending = asyncio.create_task(sender.run())
            await asyncio.wait_for(sender.ready.wait(), 30)
            start, cpu0 = time.perf_counter(), time.process_time()
            srv0 = cpu_of(proc.pid)
            answered = await asyncio.wait_for(sender.send_all(rate), 300)
            run.bench_cpu = time.process_time() - cpu0
            figures = [await child.figures() for child in children]
            run.server_cpu = cpu_of(proc.pid) - srv0  # includes the receivers' final acks
            run.seconds = max(f["last_arrival"] for f in figures) - start
            # The children's own count, from "ready" (their start-up before it is left out).
            run.receivers_cpu = sum(f["cpu"] for f in figures)
            sender.done.set()
            await sending
        finally:
            for child in children:
                child.kill()
            proc.terminate()
            proc.wait()
    # Flush what the scenario wrote, so that its writeback cannot land in the next scenario's
    # fsyncs (a paced run right after a saturated one once saw `sent` p99 1.4 s, where paced
    # runs alone, with an fsync probe beside them, saw at most 50 ms).
    os.sync()
    run.latencies = [lat for f in figures for lat in f["latencies"]]
    run.msgs_per_s = messages / run.seconds
    run.deliveries_per_s = messages * receivers / run.seconds
    run.p50_ms = pct(run.latencies, 50) * 1000
    run.p99_ms = pct(run.latencies, 99) * 1000
    run.sent_p50_ms, run.sent_p99_ms = pct(answered, 50) * 1000, pct(answered, 99) * 1000
    return run


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receivers", default="10,100")
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--saturated-messages", type=int, default=60_000)
    parser.add_argument("--paced-seconds", type=float, default=6.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", choices=["saturated", "paced"], help="one mode (iterating)")
    parser.add_argument(
        "--receivers-per-process",
        type=int,
        default=50,
        help="receivers share processes of at most this many (100 receivers: 2 processes)",
    )
    args = parser.parse_args()
    counts = [int(x) for x in args.receivers.split(",")]

    raws: dict[int, list[Ceiling]] = {n: [] for n in sorted({1, *counts})}
    stores: list[float] = []

    async def ceilings() -> None:
        # Measured around every scenario: fsync latency on a shared disk swings widely.
        with tempfile.TemporaryDirectory() as tmp:
            for n, values in raws.items():
                values.append(sqlite_ceiling(Path(tmp) / f"raw{n}.db", readers=n))
            stores.append(await store_ceiling(Path(tmp) / "store.db"))

    runs: list[Run] = []
    loads = [os.getloadavg()[0]]
    await ceilings()
    for n in counts:
        procs = -(-n // args.receivers_per_process)
        if args.only != "paced":
            runs.append(await scenario(n, "saturated", args.saturated_messages, 0, procs))
        if args.only != "saturated":
            paced = int(args.rate * args.paced_seconds)
            runs.append(await scenario(n, f"paced {args.rate:g}/s", paced, args.rate, procs))
        loads.append(os.getloadavg()[0])
        await ceilings()
    raw = {n: statistics.median(c.msgs_per_s for c in values) for n, values in raws.items()}
    store = statistics.median(stores)

    print(
        f"\nmachine: {os.cpu_count()} cores, load avg (1 min) {min(loads):.1f} to {max(loads):.1f}"
        f" during the run, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(
        f"SQLite raw ceiling (batches of {CEILING_BATCH}: append, N readers read, N cursors +"
        " delete; WAL, FULL), median of the runs:"
    )
    for n, values in raws.items():
        spread = ", ".join(f"{c.msgs_per_s:,.0f}" for c in values)
        cpu = statistics.median(c.cpu_us for c in values)
        print(f"  {n} reader(s): {raw[n]:,.0f} msg/s ({spread}); its CPU {cpu:.1f} µs/msg")
    spread = ", ".join(f"{r:,.0f}" for r in stores)
    print(f"SQLiteChatStore.append, 256 concurrent (group commit): median {store:,.0f} ({spread})")
    print(
        "| receivers (processes) | mode | msgs | delivered msg/s | deliveries/s "
        "| % of N-reader ceiling | % of 1-reader ceiling "
        "| p50 / p99 ms | send→sent p50 / p99 ms | CPU µs/msg: server / sender / receivers "
        "| receivers' share of the clients+server CPU |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        total_cpu = r.server_cpu + r.bench_cpu + r.receivers_cpu
        per = " / ".join(
            f"{1e6 * c / r.messages:,.0f}" for c in (r.server_cpu, r.bench_cpu, r.receivers_cpu)
        )
        print(
            f"| {r.receivers} ({r.receiver_procs}) | {r.mode} | {r.messages} | "
            f"{r.msgs_per_s:,.0f} | {r.deliveries_per_s:,.0f} | "
            f"{100 * r.msgs_per_s / raw[r.receivers]:.0f}% | {100 * r.msgs_per_s / raw[1]:.0f}% | "
            f"{r.p50_ms:.1f} / {r.p99_ms:.1f} | {r.sent_p50_ms:.1f} / {r.sent_p99_ms:.1f} | "
            f"{per} | {100 * r.receivers_cpu / max(total_cpu, 1e-9):.0f}% |"
        )
    if args.json:
        out: dict[str, Any] = {
            "sqlite_raw_msgs_per_s": raw,
            "sqlite_raw_runs": {n: [asdict(c) for c in values] for n, values in raws.items()},
            "store_append_msgs_per_s": store,
            "load_avg": loads,
            "runs": [
                {k: getattr(r, k) for k in Run.__dataclass_fields__ if k != "latencies"}
                for r in runs
            ],
        }
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
