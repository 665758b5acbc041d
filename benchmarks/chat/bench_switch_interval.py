"""The SQLite store's append latency beside a busy event loop, at a given GIL switch interval.

Why: the store's writer thread takes the GIL back after every call into SQLite; while the
server's event loop is busy (fanning a wake-up out to 100 receivers takes milliseconds), each
retake waits for the interpreter's switch interval. ``bay chat serve`` sets it to 0.5 ms (the
default is 5 ms); this measures what that buys, in one process, without sockets:

- the event loop runs a task that is busy in slices of ``--busy-ms`` and yields between them;
- appends are offered at ``--rate`` per second for ``--seconds``;
- printed: p50 / p99 of ``append`` (staged → committed with synchronous=FULL → answered).

Usage: python benchmarks/chat/bench_switch_interval.py [--interval 0.005 0.0005] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from lean_clients import paced, pct

from servicebay.chat.stores import Retention
from servicebay.chat.stores.sqlite import SQLiteChatStore


async def measure(rate: float, seconds: float, busy_ms: float) -> tuple[float, float]:
    """p50 / p99 seconds of ``append`` beside a busy loop."""
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteChatStore(Path(tmp) / "chat.db")
        await store.open()
        await store.put_room("r", Retention())
        await store.put_user("s")
        await store.join("r", "s")
        stop = asyncio.Event()

        async def busy() -> None:
            while not stop.is_set():
                start = time.perf_counter()
                while time.perf_counter() - start < busy_ms / 1000:
                    sum(range(200))
                await asyncio.sleep(0)

        latencies: list[float] = []

        async def one(i: int) -> None:
            start = time.perf_counter()
            await store.append("r", "s", f"k{i}", "x" * 64)
            latencies.append(time.perf_counter() - start)

        spinner = asyncio.create_task(busy())
        await paced(rate, seconds, one)
        stop.set()
        await spinner
        await store.close()
    return pct(latencies, 50), pct(latencies, 99)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--interval", type=float, nargs="+", default=[0.005, 0.0005])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--busy-ms", type=float, default=3.0)
    args = parser.parse_args()
    for _ in range(args.rounds):  # alternating, so that load from elsewhere hits every interval
        for interval in args.interval:
            sys.setswitchinterval(interval)
            p50, p99 = asyncio.run(measure(args.rate, args.seconds, args.busy_ms))
            print(
                f"switch interval {1000 * interval:g} ms: append p50 {1000 * p50:.1f} ms,"
                f" p99 {1000 * p99:.1f} ms",
                flush=True,
            )


if __name__ == "__main__":
    main()
