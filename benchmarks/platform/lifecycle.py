"""Platform overhead, side by side in one run: the same lifecycle through the platform and
straight to the broker; then listing 10,000 instances through the API.

1. The sandbox broker runs as a real ``bay broker serve`` process (SQLite store).
2. *Direct*: ``--concurrency`` clients each run provision → bind → unbind → deprovision (plan
   ``sync``) against the broker over OSB, ``--cycles`` lifecycles in all.
3. *Platform*: a real platform process (``bay server``, in-process worker, SQLite by default or
   ``--db``) with the broker registered; the same clients run the same lifecycle through
   ``/api/v1``, each step waiting for its operation (``GET /operations/{id}?wait=``), so a
   cycle ends when the broker did all four calls, as in the direct path.
4. *Listing*: ``--list`` instances are inserted into the platform database, then
   ``GET /api/v1/instances`` is timed for the first page (default limit 500) and for all of
   them in one call (``limit=10000``). ``--pg URL`` repeats the listing on PostgreSQL.

Both paths use the same HTTP client (httpx) and run on the same machine in the same run.

    .venv/bin/python benchmarks/platform/lifecycle.py --cycles 200 --concurrency 16 \
        --pg postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from servicebay.examples.sandbox import SERVICE_ID, plan_id
from servicebay.platform.store import tables
from servicebay.testing import ServedBroker, serve_broker

TOKEN = "bench-token-0123456789"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
OSB = {"X-Broker-API-Version": "2.17"}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def run_cycles(
    cycles: int, concurrency: int, cycle: Callable[[int], Awaitable[None]]
) -> tuple[float, list[float]]:
    """Run ``cycles`` lifecycles, ``concurrency`` at a time; (wall seconds, per-cycle ms)."""
    latencies: list[float] = []
    queue = iter(range(cycles))

    async def user() -> None:
        for n in queue:
            start = time.perf_counter()
            await cycle(n)
            latencies.append((time.perf_counter() - start) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies


async def direct(broker: ServedBroker, cycles: int, concurrency: int) -> tuple[float, list[float]]:
    """The lifecycle sent straight to the broker."""
    plan = plan_id("sync")
    query = {"service_id": SERVICE_ID, "plan_id": plan}
    async with httpx.AsyncClient(
        base_url=broker.url,
        auth=(broker.username, broker.password),
        headers=OSB,
        timeout=60,
        limits=httpx.Limits(max_connections=concurrency),
    ) as c:

        async def cycle(n: int) -> None:
            iid, bid = str(uuid.uuid4()), str(uuid.uuid4())
            body = {"service_id": SERVICE_ID, "plan_id": plan, "context": {"platform": "bench"}}
            inst = f"/v2/service_instances/{iid}"
            for method, path, payload, params, ok in (
                ("PUT", inst, body, {"accepts_incomplete": "true"}, 201),
                ("PUT", f"{inst}/service_bindings/{bid}", body, {}, 201),
                ("DELETE", f"{inst}/service_bindings/{bid}", None, query, 200),
                ("DELETE", inst, None, {**query, "accepts_incomplete": "true"}, 200),
            ):
                r = await c.request(method, path, json=payload, params=params)
                assert r.status_code == ok, (method, path, r.status_code, r.text)

        return await run_cycles(cycles, concurrency, cycle)


async def through_platform(
    url: str, cycles: int, concurrency: int, poll: bool = False
) -> tuple[float, list[float]]:
    """The same lifecycle through the platform API, waiting for each operation."""
    async with httpx.AsyncClient(
        base_url=f"{url}/api/v1",
        headers=HEADERS,
        timeout=60,
        limits=httpx.Limits(max_connections=concurrency),
    ) as c:

        async def done(r: httpx.Response) -> None:
            assert r.status_code == 202, r.text
            op = r.json()["operation"]
            while op["state"] not in ("succeeded", "failed"):
                op = (await c.get(f"/operations/{op['id']}", params={"wait": 30})).json()
            assert op["state"] == "succeeded", op

        # Each write waits for its operation in the same request (``?wait=``), as the direct
        # path's one request per step does; ``--poll`` waits with a second request instead.
        wait = {} if poll else {"wait": 30}

        async def cycle(n: int) -> None:
            name = f"c{n}-{uuid.uuid4().hex[:6]}"
            body = {"service": "sandbox", "plan": "sync", "name": name}
            await done(await c.post("/instances", json=body, params=wait))
            bind = {"instance": name, "app": "app"}
            await done(await c.post("/bindings", json=bind, params=wait))
            await done(await c.delete(f"/bindings/{name}-app", params=wait))
            await done(await c.delete(f"/instances/{name}", params=wait))

        return await run_cycles(cycles, concurrency, cycle)


@contextlib.contextmanager
def platform_process(db: str, home: Path, concurrency: int) -> Iterator[tuple[str, int]]:
    """A real platform process on a free port; yields its URL."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "SERVICEBAY_HOME": str(home),
        "SERVICEBAY_PLATFORM_TOKENS": f"admin={TOKEN}",
    }
    log = (home / f"platform-{port}.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            *(
                ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]]
                if "BENCH_PROFILE" in os.environ
                else []
            ),
            "-m",
            "servicebay.cli.server",
            "server",
            "--port",
            str(port),
            "--db",
            db,
            "--worker-concurrency",
            str(concurrency),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/v1/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("platform did not start; see " + log.name)
            time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def cpu_seconds(pgid: int) -> float:
    """User+system CPU seconds used so far by every live process of a process group."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process just ended
        if int(fields[2]) == pgid:  # pgrp
            total += sum(int(v) for v in fields[11:13])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def register(url: str, broker: ServedBroker) -> None:
    r = httpx.post(
        f"{url}/api/v1/brokers",
        headers=HEADERS,
        json={
            "name": "sandbox",
            "url": broker.url,
            "username": broker.username,
            "password": broker.password,
        },
        timeout=30,
    )
    assert r.status_code == 201, r.text


def insert_instances(db: str, count: int) -> None:
    """Put ``count`` ready instances of sandbox/sync straight into the platform database, each
    with the succeeded provision as its last operation (as the API leaves them); then refresh
    the planner's statistics, as autovacuum would after a bulk load."""
    url = make_url(db)
    if url.get_backend_name() == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    engine = sa.create_engine(url)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        plan_pk = conn.scalar(sa.select(tables.plans.c.id).where(tables.plans.c.name == "sync"))
        instances, operations = [], []
        for n in range(count):
            instance_id, operation_id, name = (
                str(uuid.uuid4()),
                str(uuid.uuid4()),
                f"listed-{n:05d}",
            )
            operations.append(
                {
                    "id": operation_id,
                    "kind": "provision",
                    "state": "succeeded",
                    "description": "provisioned",
                    "namespace": "default",
                    "instance_id": instance_id,
                    "instance_name": name,
                    "phase": "send",
                    "attempts": 1,
                    "next_attempt_at": now,
                    "created_by": "admin",
                    "created_at": now,
                    "updated_at": now,
                    "finished_at": now,
                }
            )
            instances.append(
                {
                    "id": instance_id,
                    "namespace": "default",
                    "name": name,
                    "plan_pk": plan_pk,
                    "state": "ready",
                    "parameters": None,
                    "parameters_shown": {"size": 1},
                    "dashboard_url": None,
                    "maintenance_info": None,
                    "last_operation_id": operation_id,
                    "created_by": "admin",
                    "created_at": now,
                    "updated_at": now,
                }
            )
        conn.execute(tables.operations.insert(), operations)
        conn.execute(tables.instances.insert(), instances)
    with engine.connect() as conn:
        conn.execute(sa.text("ANALYZE"))
        conn.commit()
    engine.dispose()


def time_listing(url: str, limit: int, runs: int) -> list[float]:
    timings = []
    with httpx.Client(headers=HEADERS, timeout=60) as c:
        for _ in range(runs):
            start = time.perf_counter()
            r = c.get(f"{url}/api/v1/instances", params={"limit": limit})
            timings.append((time.perf_counter() - start) * 1000)
            assert r.status_code == 200, r.text[:200]
    return timings


def listing(db: str, home: Path, broker: ServedBroker, count: int, label: str) -> None:
    with platform_process(db, home, 4) as (url, _pid):
        register(url, broker)
        insert_instances(db, count)
        page = time_listing(url, 500, 50)
        full = time_listing(url, min(count, 10000), 20)
    print(
        f"list {count} instances [{label}]: first page (500) p50 {statistics.median(page):.1f} ms"
        f" p95 {pct(page, 95):.1f} ms | all in one call p50 {statistics.median(full):.1f} ms"
        f" p95 {pct(full, 95):.1f} ms"
    )


def fresh_pg(base: str) -> tuple[str, Callable[[], None]]:
    url = make_url(base)
    name = f"sb_bench_{uuid.uuid4().hex[:8]}"
    kwargs: dict[str, Any] = {"host": url.host, "port": url.port or 5432, "user": url.username}
    with psycopg.connect(dbname=url.database, autocommit=True, **kwargs) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(dbname=url.database, autocommit=True, **kwargs) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return url.set(database=name).render_as_string(hide_password=False), drop


Round = dict[str, float]


def lifecycle_round(broker: ServedBroker, url: str, pid: int, args: argparse.Namespace) -> Round:
    """One direct run then one platform run: wall, p50 and CPU ms per lifecycle of each."""
    broker_pid, n = broker.process.pid, args.cycles
    b0, c0 = cpu_seconds(broker_pid), time.process_time()
    d_wall, d_lat = asyncio.run(direct(broker, n, args.concurrency))
    b1, p0, c1 = cpu_seconds(broker_pid), cpu_seconds(pid), time.process_time()
    p_wall, p_lat = asyncio.run(through_platform(url, n, args.concurrency, args.poll))
    b2, p1, c2 = cpu_seconds(broker_pid), cpu_seconds(pid), time.process_time()
    row = {
        "d_rate": n / d_wall,
        "d_p50": statistics.median(d_lat),
        "d_broker": (b1 - b0) * 1000 / n,
        "p_rate": n / p_wall,
        "p_p50": statistics.median(p_lat),
        "p_platform": (p1 - p0) * 1000 / n,
        "p_broker": (b2 - b1) * 1000 / n,
        "ratio": p_wall / d_wall,
        "d_client": (c1 - c0) * 1000 / n,
        "p_client": (c2 - c1) * 1000 / n,
    }
    print(
        f"  round: direct {row['d_rate']:6.1f}/s p50 {row['d_p50']:6.1f} ms broker CPU "
        f"{row['d_broker']:.1f} ms | platform {row['p_rate']:6.1f}/s p50 {row['p_p50']:6.1f} ms "
        f"CPU platform {row['p_platform']:.1f} + broker {row['p_broker']:.1f} ms | "
        f"{row['ratio']:.2f}x | client CPU {row['d_client']:.1f} / {row['p_client']:.1f} ms",
        flush=True,
    )
    return row


def report(rounds: list[Round], cycles: int) -> None:
    def span(key: str, fmt: str = ".1f") -> str:
        values = sorted(r[key] for r in rounds)
        return f"{values[0]:{fmt}} to {values[-1]:{fmt}} (median {statistics.median(values):{fmt}})"

    print(f"  direct:   lifecycles/s {span('d_rate')}, cycle p50 ms {span('d_p50', '.0f')}")
    print(f"            broker CPU ms/lifecycle {span('d_broker')}")
    print(f"  platform: lifecycles/s {span('p_rate')}, cycle p50 ms {span('p_p50', '.0f')}")
    print(f"            CPU ms/lifecycle: platform {span('p_platform')}, broker {span('p_broker')}")
    print(
        f"  client (this process) CPU ms/lifecycle: direct {span('d_client')}, "
        f"platform {span('p_client')}"
    )
    print(f"  overhead: platform wall time / direct wall time {span('ratio', '.2f')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--db", default="", help="platform database (default: SQLite file)")
    parser.add_argument("--list", type=int, default=10000, help="instances for the listing")
    parser.add_argument("--pg", default="", help="also run the listing on this PostgreSQL")
    parser.add_argument("--rounds", type=int, default=3, help="alternating direct/platform rounds")
    parser.add_argument(
        "--poll", action="store_true", help="wait with GET /operations/{id}?wait= after each write"
    )
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="sb-bench-") as tmp,
        serve_broker("servicebay.examples.sandbox:broker") as broker,
    ):
        home = Path(tmp)
        db = args.db or f"sqlite:///{home / 'platform.db'}"
        print(
            f"lifecycle x{args.cycles} at concurrency {args.concurrency} (sandbox plan sync), "
            f"{args.rounds} alternating rounds, {'wait by polling' if args.poll else '?wait='}"
        )
        with platform_process(db, home, args.concurrency) as (url, pid):
            register(url, broker)
            asyncio.run(through_platform(url, 16, args.concurrency, args.poll))  # warm up
            rounds = [lifecycle_round(broker, url, pid, args) for _ in range(args.rounds)]
        report(rounds, args.cycles)
        listing(f"sqlite:///{home / 'listing.db'}", home, broker, args.list, "SQLite")
        if args.pg:
            pg, drop = fresh_pg(args.pg)
            try:
                listing(pg, home, broker, args.list, "PostgreSQL")
            finally:
                drop()


if __name__ == "__main__":
    main()
