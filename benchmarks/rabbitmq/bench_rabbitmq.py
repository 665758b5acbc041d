"""The RabbitMQ broker against the raw management API calls it must make, in one run.

One cycle is provision → bind → unbind → deprovision of a fresh instance. Through the broker
that is four OSB requests to a real ``bay broker serve servicebay.brokers.rabbitmq:broker``
process (durable SQLite store, basic auth). Raw, it is the eight management API requests the
broker makes for the same work, in its order: create the vhost, set its limits (one request for
both), create the user, grant it the vhost, delete the user, close its connections, list the
users (names and tags: how deprovision finds users of the instance that interrupted
binds left), delete the vhost. ``--no-listing`` leaves the listing out of the raw side (what a
script that remembers every user it created would send). Both sides are driven by the same lean
load generator (``benchmarks/loadgen.py``) against the same local RabbitMQ, one after the other
at each concurrency, and the ratio raw/broker is the broker's overhead.

Run from the repository root (needs the local RabbitMQ with its management plugin):

    .venv/bin/python benchmarks/rabbitmq/bench_rabbitmq.py --rounds 4 --seconds 5 --concurrency 1 4
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).parent.parent))

from loadgen import LoadResult, Request, osb_headers, run_load

USER, PASSWORD = "bench", "bench-secret"
STANDARD_PLAN = "ce5488e8-404a-40fe-a920-722a579758f2"
SERVICE = "660c461d-3d52-44cc-8e27-1fe3ae415742"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raw_scenario(prefix: str, listing: bool = True) -> Sequence[Request]:
    """The management API requests the broker makes in one cycle, in its order (the list
    tests/brokers/rabbitmq/test_rabbitmq_calls.py pins for the broker)."""
    vhost, user = quote(prefix + uuid.uuid4().hex, safe=""), quote(prefix + "u" + uuid.uuid4().hex)
    limits = json.dumps({"value": {"max-connections": 1000, "max-queues": 1000}}).encode()
    user_body = json.dumps({"password": uuid.uuid4().hex, "tags": ""}).encode()
    grant = json.dumps({"configure": ".*", "write": ".*", "read": ".*"}).encode()
    vhost_body = json.dumps(
        {
            "description": "bench",
            "tags": "servicebay",
            "default_queue_type": "classic",
            "defaultqueuetype": "classic",
        }
    ).encode()
    requests: list[Request] = [
        ("PUT", f"/api/vhosts/{vhost}", vhost_body, 201),
        ("PUT", f"/api/parameters/vhost-limits/{vhost}/limits", limits, 201),
        ("PUT", f"/api/users/{user}", user_body, 201),
        ("PUT", f"/api/permissions/{vhost}/{user}", grant, 201),
        ("DELETE", f"/api/users/{user}", None, 204),
        ("DELETE", f"/api/connections/username/{user}", None, 204),
        ("GET", "/api/users?columns=name,tags", None, 200),
        ("DELETE", f"/api/vhosts/{vhost}", None, 204),
    ]
    return requests if listing else [r for r in requests if r[0] != "GET"]


def broker_scenario() -> Sequence[Request]:
    """The OSB requests of one cycle, plan standard with its default limits."""
    provision = json.dumps({"service_id": SERVICE, "plan_id": STANDARD_PLAN}).encode()
    instance, binding = uuid.uuid4().hex, uuid.uuid4().hex
    base, query = (
        f"/v2/service_instances/{instance}",
        f"service_id={SERVICE}&plan_id={STANDARD_PLAN}",
    )
    return [
        ("PUT", base, provision, 201),
        ("PUT", f"{base}/service_bindings/{binding}", provision, 201),
        ("DELETE", f"{base}/service_bindings/{binding}?{query}", None, 200),
        ("DELETE", f"{base}?{query}", None, 200),
    ]


@contextlib.contextmanager
def broker_process(
    port: int, env: dict[str, str], log: Path, db: str, workers: int
) -> Iterator[int]:
    """``bay broker serve`` for the duration of the block (output to a file, not a pipe)."""
    cmd = [
        # `bay broker serve`, run as a module so it works from a source checkout too.
        sys.executable, "-m", "servicebay.cli.broker", "serve",
        "servicebay.brokers.rabbitmq:broker",
        "--host", "127.0.0.1", "--port", str(port),
        "--username", USER, "--password", PASSWORD, "--db", db, "--log-level", "warning",
        "--workers", str(workers),
    ]  # fmt: skip
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for_catalog(port, proc, log)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_catalog(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/catalog", headers=osb_headers(USER, PASSWORD)
    )
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the broker exited:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(request, timeout=2):  # noqa: S310
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def cleanup(management_url: str, admin: tuple[str, str], prefix: str) -> None:
    """Remove whatever an interrupted run left (only names carrying this run's prefix)."""
    with httpx.Client(base_url=management_url + "/api", auth=admin, timeout=30) as api:
        for kind in ("users", "vhosts"):
            for item in api.get(f"/{kind}", params={"columns": "name"}).json():
                if item["name"].startswith(prefix):
                    api.delete(f"/{kind}/{quote(item['name'], safe='')}")


async def cell(
    host: str, port: int, scenario: object, headers: dict[str, str], c: int, seconds: float
) -> LoadResult:
    """One measured run of ``scenario`` at concurrency ``c``."""
    return await run_load(host, port, scenario, concurrency=c, seconds=seconds, headers=headers)  # type: ignore[arg-type]


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _pids(match: Callable[[int, str, int], bool]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                head, _, rest = (entry / "stat").read_text().rpartition(")")
                comm, ppid = head.split("(", 1)[1], int(rest.split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if match(int(entry.name), comm, ppid):
                found.append(int(entry.name))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds used so far by these processes (Linux /proc); 0 where unreadable."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += _cpu_of(pid)
    return total


def merge(results: list[LoadResult]) -> LoadResult:
    """Several cells of one side as one result (their requests over their summed time)."""
    total = LoadResult()
    for r in results:
        total.requests += r.requests
        total.errors += r.errors
        total.seconds += r.seconds
        total.latencies_ms += r.latencies_ms
        total.first_error = total.first_error or r.first_error
    return total


async def httpx_cell(
    management_url: str, admin: tuple[str, str], prefix: str, listing: bool, c: int, seconds: float
) -> LoadResult:
    """The raw calls again, sent with httpx (the HTTP client the broker itself uses)."""
    result = LoadResult()
    deadline = time.perf_counter() + seconds

    async def user(api: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            for method, path, body, expected in raw_scenario(prefix, listing):
                start = time.perf_counter()
                try:
                    response = await api.request(method, path, content=body)
                except httpx.RemoteProtocolError:  # RabbitMQ closed a kept-alive connection
                    response = await api.request(method, path, content=body)
                result.latencies_ms.append((time.perf_counter() - start) * 1000)
                result.requests += 1
                if response.status_code != expected:
                    result.errors += 1
                    result.first_error = result.first_error or f"{method} {path} -> {response}"

    started = time.perf_counter()
    async with httpx.AsyncClient(
        base_url=management_url,
        auth=admin,
        headers={"content-type": "application/json"},
        timeout=30,
    ) as api:
        await asyncio.gather(*(user(api) for _ in range(c)))
    result.seconds = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one cell")
    parser.add_argument("--rounds", type=int, default=4, help="alternating cells per side")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--management-url", default="http://127.0.0.1:15672")
    parser.add_argument("--admin", default="guest:guest", help="management API user:password")
    parser.add_argument("--workers", type=int, default=1, help="broker worker processes")
    parser.add_argument(
        "--no-listing",
        dest="listing",
        action="store_false",
        help="leave deprovision's user listing out of the raw side",
    )
    args = parser.parse_args()
    raw_calls = len(raw_scenario("", args.listing))
    # name → OSB or management API requests per cycle
    sides = {"raw API, lean client": raw_calls, "raw API, httpx": raw_calls, "broker": 4}

    run = f"sbbench-{uuid.uuid4().hex[:6]}-"
    auth = "Basic " + base64.b64encode(args.admin.encode()).decode()
    api = urlsplit(args.management_url)
    api_host, api_port = api.hostname or "127.0.0.1", api.port or 15672
    user, _, password = args.admin.partition(":")
    tmp = Path(tempfile.mkdtemp(prefix="sb-bench-rabbitmq-"))
    env = {
        **os.environ,
        "SERVICEBAY_RABBITMQ_MANAGEMENT_URL": args.management_url,
        "SERVICEBAY_RABBITMQ_MANAGEMENT_USERNAME": user,
        "SERVICEBAY_RABBITMQ_MANAGEMENT_PASSWORD": password,
        "SERVICEBAY_RABBITMQ_PREFIX": run,
    }
    port = free_port()
    print(
        f"RabbitMQ at {args.management_url}; broker: {args.workers} worker(s), SQLite store; "
        f"{args.rounds} alternating {args.seconds:.0f}s cells per side; "
        "one cycle = provision+bind+unbind+deprovision"
    )
    print(
        "\n| path | concurrency | cycles/s | p50 ms/request | RabbitMQ CPU ms/cycle "
        "| broker CPU ms/cycle | client CPU ms/cycle | errors |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    raw_headers = {"Authorization": auth}  # loadgen adds Content-Type to bodies
    try:
        db = f"sqlite:///{tmp / 'broker.db'}"
        with broker_process(port, env, tmp / "broker.log", db, args.workers) as pid:
            rabbitmq = _pids(lambda _pid, comm, _ppid: comm == "beam.smp")
            broker = [pid, *_pids(lambda _pid, _comm, ppid: ppid == pid)]
            for c in args.concurrency:
                cells: dict[str, Callable[[float], Any]] = {
                    "raw API, lean client": lambda s, c=c: cell(
                        api_host,
                        api_port,
                        lambda: raw_scenario(run + "raw-", args.listing),
                        raw_headers,
                        c,
                        s,
                    ),
                    "raw API, httpx": lambda s, c=c: httpx_cell(
                        args.management_url, (user, password), run + "raw-", args.listing, c, s
                    ),
                    "broker": lambda s, c=c: cell(
                        "127.0.0.1", port, broker_scenario, osb_headers(USER, PASSWORD), c, s
                    ),
                }
                for make in cells.values():  # warm-up: connections, caches
                    asyncio.run(make(1.0))
                # The machine is shared: alternate short cells so every side sees the same load.
                results: dict[str, list[LoadResult]] = {name: [] for name in sides}
                cpu = {name: [0.0, 0.0, 0.0] for name in sides}
                for _ in range(args.rounds):
                    for name, make in cells.items():
                        before = (cpu_seconds(rabbitmq), cpu_seconds(broker), time.process_time())
                        results[name].append(asyncio.run(make(args.seconds)))
                        after = (cpu_seconds(rabbitmq), cpu_seconds(broker), time.process_time())
                        for i in range(3):
                            cpu[name][i] += after[i] - before[i]
                cycles = {}
                for name, per_cycle in sides.items():
                    r = merge(results[name])
                    cycles[name] = r.rps / per_cycle
                    n = max(1.0, r.requests / per_cycle)
                    rmq, brk, gen = (1000 * x / n for x in cpu[name])
                    error = f" {r.first_error[:80]}" if r.errors else ""
                    print(
                        f"| {name} | {c} | {cycles[name]:.1f} | {r.percentile(50):.1f} | "
                        f"{rmq:.0f} | {brk:.0f} | {gen:.0f} | {r.errors}{error} |",
                        flush=True,
                    )
                for baseline in ("raw API, lean client", "raw API, httpx"):
                    per_round = ", ".join(
                        f"{(a.rps / raw_calls) / max(b.rps / 4, 1e-9):.2f}"
                        for a, b in zip(results[baseline], results["broker"], strict=True)
                    )
                    print(
                        f"| **broker overhead** vs {baseline} | {c} | "
                        f"**{cycles[baseline] / cycles['broker']:.2f}x** | rounds: {per_round} "
                        "| | | | |",
                        flush=True,
                    )
    finally:
        cleanup(args.management_url, (user, password), run)


if __name__ == "__main__":
    main()
