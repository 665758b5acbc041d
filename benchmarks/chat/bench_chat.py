"""Chat benchmark: end-to-end delivery next to the raw ceiling of the embedded store, one run.

What it measures (all on this machine, in one run, so the figures share its load):

1. The raw ceiling of SQLite as the chat uses it: batched append (one transaction per batch of
   200, WAL, synchronous=FULL) + read back + delete, by plain ``sqlite3`` in one thread; its own
   CPU per message is printed too (the rest of its time is fsync waits).
2. The chat server (a real ``python -m servicebay.cli.chat serve`` process on the embedded
   store), 1 sender -> N receivers in one room over WebSocket, acks included. Three processes:
   the server, the sender (this process) and the N receivers (a child process), so that no
   one Python process does the work of all sides:
   - saturated: the sender keeps up to 256 sends unanswered, in arrays as the client packs
     them; delivered messages/s is messages that reached EVERY receiver per second, plus
     deliveries/s, p50/p99 send->receive latency (CLOCK_MONOTONIC across processes);
   - paced: the sender offers a fixed rate (500 msg/s) and we report p50/p99 latency;
   - receivers decode every frame (orjson), check each seq follows the previous one, and ack
     cumulatively every 50 ms like ``servicebay.chat.client``; the sender is a member too and
     acks its own copies the same way;
   - CPU of the server, the sender and the receivers separately (/proc, process_time): on two
     shared cores the load generator can be the bottleneck, and the table says which one was.

Usage: python benchmarks/chat/bench_chat.py [--receivers 10,100] [--rate 500] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from servicebay.chat.client import ACK_EVERY
from servicebay.chat.stores import Retention
from servicebay.chat.stores.sqlite import SQLiteChatStore


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# 1. raw ceiling ---------------------------------------------------------------------------------


CEILING_BATCH = 200


@dataclass
class Ceiling:
    """One measurement of the raw ceiling: its rate, and its own CPU per message."""

    msgs_per_s: float
    cpu_us: float


def sqlite_ceiling(path: Path, messages: int = 20_000, batch: int = CEILING_BATCH) -> Ceiling:
    """Messages/s through batched append + read + delete, synchronous=FULL, WAL."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE m (room TEXT, seq INTEGER, sender TEXT, key TEXT, body TEXT, ts REAL,"
        " PRIMARY KEY (room, seq)) WITHOUT ROWID"
    )
    body = "x" * 64
    start, cpu = time.perf_counter(), time.process_time()
    for first in range(0, messages, batch):
        rows = [("r", s, "s", f"k{s}", body, time.time()) for s in range(first, first + batch)]
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO m VALUES (?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
        conn.execute("SELECT * FROM m WHERE room = 'r' AND seq >= ?", (first,)).fetchall()
        conn.execute("BEGIN")
        conn.execute("DELETE FROM m WHERE room = 'r' AND seq < ?", (first + batch,))
        conn.execute("COMMIT")
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    conn.close()
    return Ceiling(messages / elapsed, 1e6 * cpu / messages)


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
    server_cpu: float = 0.0
    bench_cpu: float = 0.0  # the sender's process
    receivers_cpu: float = 0.0  # the receivers' process
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


class Acker:
    """Cumulative acks as ``servicebay.chat.client`` sends them: ACK_EVERY after the first
    unacknowledged message, never more often (a timer, not "on the next arrival": a receiver
    whose window is full gets no next arrival, and would stall until some other frame came).
    """

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.last = self.acked = 0
        self._timer: asyncio.TimerHandle | None = None
        self._sends: set[asyncio.Task[None]] = set()

    def shown(self, seq: int) -> None:
        """Messages up to ``seq`` were handled; ack them within ACK_EVERY."""
        self.last = seq
        if self._timer is None and seq > self.acked:
            self._timer = asyncio.get_running_loop().call_later(ACK_EVERY, self.now)

    def now(self) -> None:
        """Ack what was handled, at once."""
        self._timer = None
        if self.last > self.acked:
            self.acked = self.last
            ack = orjson.dumps({"type": "ack", "room": "bench", "seq": self.last}).decode()
            task = asyncio.create_task(self._send(ack))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def _send(self, ack: str) -> None:
        with contextlib.suppress(ConnectionClosed):  # the run is over
            await self.ws.send(ack)

    async def close(self) -> None:
        """Send what is still due, stop the timer."""
        if self._timer is not None:
            self._timer.cancel()
        self.now()
        await asyncio.gather(*self._sends)


class Receiver:
    """A lean protocol client: checks order, records arrival latency, acks like the client.

    A real client decodes every frame; this one does it with orjson (as a fast client would)
    and keeps nothing but the order check and the latency of each ``msg``.
    """

    def __init__(self, url: str, token: str, total: int) -> None:
        self.url, self.token, self.total = url, token, total
        self.latencies: list[float] = []
        self.last = 0
        self.done_at = 0.0
        self.ready = asyncio.Event()

    async def run(self) -> None:
        async with connect(self.url, max_size=None, compression=None) as ws:
            hello = {"type": "hello", "token": self.token, "rooms": {"bench": 0}}
            await ws.send(orjson.dumps(hello).decode())
            acker, last, lat = Acker(ws), 0, self.latencies
            async for raw in ws:
                now = time.perf_counter()
                data = orjson.loads(raw)
                for frame in data if type(data) is list else [data]:
                    if frame["type"] == "msg":
                        seq = frame["seq"]
                        if seq != last + 1:
                            raise AssertionError(f"gap or duplicate: {seq} after {last}")
                        last = seq
                        lat.append(now - float(frame["body"]))
                    elif frame["type"] == "joined":
                        self.ready.set()
                acker.shown(last)
                if last >= self.total:
                    break
            self.last, self.done_at = last, time.perf_counter()
            await acker.close()


async def receivers_process(url: str, tokens: list[str], total: int, out: Path) -> None:
    """The receivers' side (a process of its own): say "ready", receive, write the figures."""
    rs = [Receiver(url, t, total) for t in tokens]
    tasks = [asyncio.create_task(r.run()) for r in rs]
    await asyncio.gather(*(r.ready.wait() for r in rs))
    print("ready", flush=True)
    cpu0 = time.process_time()
    await asyncio.gather(*tasks)
    figures = {
        "done_at": max(r.done_at for r in rs),
        "cpu": time.process_time() - cpu0,
        "latencies": [lat for r in rs for lat in r.latencies],
    }
    await asyncio.to_thread(out.write_bytes, orjson.dumps(figures))


class Sender:
    """A lean sender: batches of ``send`` frames, at most ``WINDOW`` unanswered, or paced.

    It sends exactly what ``servicebay.chat.client`` would (arrays of ``send`` frames, one key
    each) and counts the ``sent`` answers; the body is the send time for the receivers.
    """

    WINDOW = 256

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.answered = 0
        self.moved = asyncio.Event()
        self.acker: Acker | None = None

    async def run(self, messages: int, rate: float, started: asyncio.Event) -> None:
        async with connect(self.url, max_size=None, compression=None) as ws:
            await ws.send(orjson.dumps({"type": "hello", "token": self.token}).decode())
            reader = asyncio.create_task(self._read(ws))
            await started.wait()
            start, sent = time.perf_counter(), 0
            while sent < messages:
                if rate:
                    due = min(messages, int((time.perf_counter() - start) * rate) + 1)
                    if due <= sent:
                        await asyncio.sleep(start + sent / rate - time.perf_counter())
                        continue
                else:
                    due = min(messages, self.answered + self.WINDOW)
                    if due <= sent:
                        self.moved.clear()
                        await self.moved.wait()
                        continue
                body = repr(time.perf_counter())
                frames = [
                    {"type": "send", "room": "bench", "key": f"k{i}", "body": body}
                    for i in range(sent, due)
                ]
                await ws.send(orjson.dumps(frames[0] if len(frames) == 1 else frames).decode())
                sent = due
            while self.answered < messages:
                self.moved.clear()
                await self.moved.wait()
            reader.cancel()
            if self.acker is not None:
                await self.acker.close()

    async def _read(self, ws: Any) -> None:
        # The sender is a member too: it gets its own messages and acks them like the client.
        acker = self.acker = Acker(ws)
        async for raw in ws:
            data = orjson.loads(raw)
            for frame in data if type(data) is list else [data]:
                kind = frame["type"]
                if kind == "sent":
                    self.answered += 1
                    self.moved.set()
                elif kind == "msg":
                    acker.shown(frame["seq"])
                elif kind == "error":
                    raise RuntimeError(f"the server refused a frame: {frame}")


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
        rprocs: list[asyncio.subprocess.Process] = []
        try:
            await wait_up(port)
            url = f"ws://127.0.0.1:{port}/ws"
            outs = [Path(tmp) / f"receivers{i}.json" for i in range(procs)]
            for i, out in enumerate(outs):
                (Path(tmp) / f"tokens{i}.json").write_bytes(orjson.dumps(tokens[i::procs]))
                rprocs.append(
                    await asyncio.create_subprocess_exec(
                        *[sys.executable, __file__, "--role", "receivers", "--url", url],
                        *["--tokens", str(Path(tmp) / f"tokens{i}.json"), "--out", str(out)],
                        *["--total", str(messages)],
                        stdout=asyncio.subprocess.PIPE,
                    )
                )
            for rproc in rprocs:
                assert rproc.stdout is not None
                if (await asyncio.wait_for(rproc.stdout.readline(), 120)).strip() != b"ready":
                    raise RuntimeError("the receivers did not start")
            sender, started = Sender(url, sender_token), asyncio.Event()
            sending = asyncio.create_task(sender.run(messages, rate, started))
            await asyncio.sleep(0.2)  # the sender's hello is answered
            start, cpu0 = time.perf_counter(), time.process_time()
            srv0 = cpu_of(proc.pid)
            started.set()
            await asyncio.wait_for(sending, 300)
            run.bench_cpu = time.process_time() - cpu0
            for rproc in rprocs:
                if await asyncio.wait_for(rproc.wait(), 300) != 0:
                    raise RuntimeError("the receivers failed")
            run.server_cpu = cpu_of(proc.pid) - srv0  # includes the receivers' final acks
            figures = [orjson.loads(out.read_bytes()) for out in outs]
            run.seconds = max(f["done_at"] for f in figures) - start
            run.receivers_cpu = sum(f["cpu"] for f in figures)
        finally:
            for rproc in rprocs:
                if rproc.returncode is None:
                    rproc.kill()
                    await rproc.wait()
            proc.terminate()
            proc.wait()
    run.latencies = [lat for f in figures for lat in f["latencies"]]
    run.msgs_per_s = messages / run.seconds
    run.deliveries_per_s = messages * receivers / run.seconds
    run.p50_ms = pct(run.latencies, 50) * 1000
    run.p99_ms = pct(run.latencies, 99) * 1000
    return run


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receivers", default="10,100")
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--saturated-messages", type=int, default=3000)
    parser.add_argument("--paced-seconds", type=float, default=6.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", choices=["saturated", "paced"], help="one mode (iterating)")
    parser.add_argument(
        "--receivers-per-process",
        type=int,
        default=50,
        help="receivers share processes of at most this many (100 receivers: 2 processes)",
    )
    parser.add_argument("--role", default="main", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--total", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "receivers":
        tokens = orjson.loads(args.tokens.read_bytes())
        return await receivers_process(args.url, tokens, args.total, args.out)

    raws: list[Ceiling] = []
    stores: list[float] = []

    async def ceilings() -> None:
        # Measured around every scenario: fsync latency on a shared disk swings widely.
        with tempfile.TemporaryDirectory() as tmp:
            raws.append(sqlite_ceiling(Path(tmp) / "raw.db"))
            stores.append(await store_ceiling(Path(tmp) / "store.db"))

    runs: list[Run] = []
    loads = [os.getloadavg()[0]]
    await ceilings()
    for n in [int(x) for x in args.receivers.split(",")]:
        procs = -(-n // args.receivers_per_process)
        if args.only != "paced":
            runs.append(await scenario(n, "saturated", args.saturated_messages, 0, procs))
        if args.only != "saturated":
            paced = int(args.rate * args.paced_seconds)
            runs.append(await scenario(n, f"paced {args.rate:g}/s", paced, args.rate, procs))
        loads.append(os.getloadavg()[0])
        await ceilings()
    raw = statistics.median(c.msgs_per_s for c in raws)
    store = statistics.median(stores)

    print(
        f"\nmachine: {os.cpu_count()} cores, load avg (1 min) {min(loads):.1f} to {max(loads):.1f}"
        f" during the run, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    spread = ", ".join(f"{c.msgs_per_s:,.0f}" for c in raws)
    cpu = statistics.median(c.cpu_us for c in raws)
    print(
        f"SQLite raw ceiling (batches of {CEILING_BATCH}: append+read+delete, WAL, FULL): median"
        f" {raw:,.0f} msg/s ({spread}); its CPU {cpu:.1f} µs/msg, the rest is fsync waits"
    )
    spread = ", ".join(f"{r:,.0f}" for r in stores)
    print(f"SQLiteChatStore.append, 256 concurrent (group commit): median {store:,.0f} ({spread})")
    print(
        "| receivers (processes) | mode | msgs | delivered msg/s | deliveries/s | % of raw "
        "| p50 ms | p99 ms | server CPU µs/msg | server CPU-bound msg/s "
        "| sender CPU µs/msg | receivers CPU µs/msg |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r.receivers} ({r.receiver_procs}) | {r.mode} | {r.messages} | "
            f"{r.msgs_per_s:,.0f} | "
            f"{r.deliveries_per_s:,.0f} | {100 * r.msgs_per_s / raw:.0f}% | "
            f"{r.p50_ms:.1f} | {r.p99_ms:.1f} | {1e6 * r.server_cpu / r.messages:,.0f} | "
            f"{r.messages / max(r.server_cpu, 1e-9):,.0f} | "
            f"{1e6 * r.bench_cpu / r.messages:,.0f} | {1e6 * r.receivers_cpu / r.messages:,.0f} |"
        )
    if args.json:
        out: dict[str, Any] = {
            "sqlite_raw_msgs_per_s": raw,
            "sqlite_raw_runs": [asdict(c) for c in raws],
            "store_append_msgs_per_s": store,
            "load_avg": loads,
            "runs": [{k: v for k, v in asdict(r).items() if k != "latencies"} for r in runs],
        }
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
