"""Side-by-side benchmark: the servicebay sandbox broker against an openbrokerapi equivalent.

Both brokers run as real processes on loopback, measured in the same run by the same load
generator (``loadgen.py``): ``GET /v2/catalog`` and the full synchronous lifecycle
provision → bind → unbind → deprovision, at concurrency 1, 16 and 64. Ours keeps every record
in its durable store (SQLite file by default, or ``--db postgresql://...``); the peer keeps its
state in memory.

Run from the repository root (builds benchmarks/.venv with the peer's packages on first use):

    make bench-broker                   # or: python benchmarks/broker_sdk.py --seconds 5 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from loadgen import (
    LoadResult,
    catalog_scenario,
    lifecycle_scenario,
    osb_headers,
    run_load,
)

HERE = Path(__file__).parent
USER, PASSWORD = "bench", "bench-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_catalog(port: int, deadline_s: float = 30.0) -> dict[str, object]:
    """Poll the catalog until the broker answers; return it."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/catalog", headers=osb_headers(USER, PASSWORD)
    )
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
                return dict(json.load(response))
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def sync_plan_ids(catalog: dict[str, object]) -> tuple[str, str]:
    """The ids of service `sandbox`, plan `sync`."""
    for service in catalog["services"]:  # type: ignore[attr-defined]
        if service["name"] == "sandbox":
            for plan in service["plans"]:
                if plan["name"] == "sync":
                    return service["id"], plan["id"]
    raise LookupError("no sandbox/sync plan in the catalog")


@contextlib.contextmanager
def process(
    cmd: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` for the duration of the block; its output goes to ``log`` (never a pipe that
    could fill up and stall the server under load)."""
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def servicebay_cmd(port: int, db: str, workers: int) -> list[str]:
    return [
        sys.executable, "-m", "servicebay", "broker", "serve",
        "servicebay.examples.sandbox:broker",
        "--host", "127.0.0.1", "--port", str(port),
        "--username", USER, "--password", PASSWORD,
        "--db", db, "--workers", str(workers), "--log-level", "warning",
    ]  # fmt: skip


def peer_cmd(port: int, server: str) -> list[str]:
    script = HERE / "peers" / "openbrokerapi_sandbox.py"
    return [sys.executable, str(script), str(port), USER, PASSWORD, server]


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and its live children (uvicorn workers).

    Linux /proc only; 0.0 elsewhere, and the column then reads nan.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / tick


async def measure(
    port: int, pid: int, scenario_name: str, concurrency: int, seconds: float
) -> LoadResult:
    """Warm up for 1 s, then load ``port`` for ``seconds``, noting the server's CPU meanwhile."""
    headers = osb_headers(USER, PASSWORD)
    if scenario_name == "catalog":
        scenario = catalog_scenario
    else:
        scenario = lifecycle_scenario(*sync_plan_ids(wait_for_catalog(port)))
    await run_load("127.0.0.1", port, scenario, concurrency=concurrency, seconds=1, headers=headers)
    before = server_cpu(pid)
    result = await run_load(
        "127.0.0.1", port, scenario, concurrency=concurrency, seconds=seconds, headers=headers
    )
    result.server_cpu_s = server_cpu(pid) - before
    return result


def median_row(name: str, scenario: str, c: int, runs: list[LoadResult], ratio: str) -> str:
    """One table row: the median over rounds of req/s, p50 and p99 (and errors, if any)."""
    errors = sum(r.errors for r in runs)
    first_error = next((r.first_error for r in runs if r.first_error), "")
    note = f" ({errors} errors: {first_error[:80]})" if errors else ""
    rps = statistics.median(r.rps for r in runs)
    p50 = statistics.median(r.percentile(50) for r in runs)
    p99 = statistics.median(r.percentile(99) for r in runs)
    spread = f"{min(r.rps for r in runs):,.0f} to {max(r.rps for r in runs):,.0f}"
    cpu = statistics.median(r.cpu_ms_per_request for r in runs)
    cells = [name, scenario, str(c), f"{rps:,.0f}", spread, f"{p50:.2f}", f"{p99:.2f}"]
    cells += [f"{cpu:.3f}", ratio]
    return "| " + " | ".join(cells) + f" |{note}"


async def asgi_call(app: Any, method: str, path: str, body: bytes, query: bytes) -> int:
    """One request straight into the ASGI app (no HTTP, no client): the SDK's own cost."""
    headers = [(k.lower().encode(), v.encode()) for k, v in osb_headers(USER, PASSWORD).items()]
    if body:
        headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 1), "server": ("x", 80),
    }  # fmt: skip
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    return status[0]


class DictStore:
    """A zero-cost store (dicts, no durability) to split the SDK's cost from its store's.

    Benchmark-only: it implements just enough of ``servicebay.broker.Store`` for synchronous
    lifecycles; never serve a real broker with it.
    """

    def __init__(self) -> None:
        self.instances: dict[str, Any] = {}
        self.bindings: dict[tuple[str, str], Any] = {}
        self.operations: dict[str, Any] = {}

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def get_instance(self, instance_id: str) -> Any:
        return copy.copy(self.instances.get(instance_id))

    async def put_instance(self, record: Any) -> None:
        self.instances[record.instance_id] = copy.copy(record)

    async def create_instance(self, record: Any) -> bool:
        if record.instance_id in self.instances:
            return False
        self.instances[record.instance_id] = copy.copy(record)
        return True

    async def delete_instance(self, instance_id: str) -> None:
        self.instances.pop(instance_id, None)
        self.bindings = {k: v for k, v in self.bindings.items() if k[0] != instance_id}

    async def get_binding(self, instance_id: str, binding_id: str) -> Any:
        return copy.copy(self.bindings.get((instance_id, binding_id)))

    async def create_binding(self, record: Any) -> bool:
        key = (record.instance_id, record.binding_id)
        if key in self.bindings:
            return False
        self.bindings[key] = copy.copy(record)
        return True

    async def put_binding(self, record: Any) -> None:
        self.bindings[(record.instance_id, record.binding_id)] = copy.copy(record)

    async def delete_binding(self, instance_id: str, binding_id: str) -> None:
        self.bindings.pop((instance_id, binding_id), None)

    async def list_bindings(self, instance_id: str) -> list[Any]:
        return [v for k, v in self.bindings.items() if k[0] == instance_id]

    async def create_operation(self, record: Any) -> None:
        self.operations[record.operation_id] = record

    async def put_operation(self, record: Any) -> None:
        self.operations[record.operation_id] = record

    async def get_operation(self, operation_id: str) -> Any:
        return self.operations.get(operation_id)

    async def latest_operation(self, instance_id: str, binding_id: str | None = None) -> Any:
        return None

    async def unfinished_operations(self) -> list[Any]:
        return []

    async def claim_operation(self, operation_id: str, owner: str, stale_after: float) -> bool:
        return True

    async def heartbeat(self, operation_id: str, owner: str) -> bool:
        return True


async def profile_asgi(lifecycles: int, db: str, profile: bool, dict_store: bool) -> None:
    """Sequential lifecycles through the raw ASGI app; print ms/request (and a profile)."""
    from servicebay.broker import BrokerSettings, create_app
    from servicebay.examples.sandbox import SERVICE_ID, broker, plan_id

    settings = BrokerSettings(username=USER, password=PASSWORD, db=db, log_level="warning")
    app = create_app(broker, settings=settings, store=DictStore() if dict_store else None)
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    lifespan = asyncio.create_task(app({"type": "lifespan", "state": {}}, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    print((await outbox.get())["type"])
    requests = lifecycle_scenario(SERVICE_ID, plan_id("sync"))

    async def run(n: int) -> None:
        for _ in range(n):
            for method, target, body, expected in requests():
                path, _, query = target.partition("?")
                got = await asgi_call(app, method, path, body or b"", query.encode())
                assert got == expected, (method, target, got)

    await run(30)  # warm-up: imports, caches, the first SQLite pages
    profiler = None
    if profile:
        from pyinstrument import Profiler  # benchmarks/.venv only

        profiler = Profiler(async_mode="enabled")
        profiler.start()
    start, cpu_start = time.perf_counter(), time.process_time()
    await run(lifecycles)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if profiler is not None:
        profiler.stop()
        print(profiler.output_text(color=False))
    store = "dict store (no durability)" if dict_store else db.split(":")[0]
    # CPU time (all threads of this process) is steadier than wall time on a shared machine.
    per = 4 * lifecycles
    print(
        f"raw ASGI lifecycle, {store}: {elapsed / per * 1000:.3f} ms/request wall, "
        f"{cpu / per * 1000:.3f} ms/request CPU"
    )
    await inbox.put({"type": "lifespan.shutdown"})
    await outbox.get()
    await lifespan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per cell and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument(
        "--scenarios", nargs="+", default=["catalog", "lifecycle"], choices=["catalog", "lifecycle"]
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="servicebay worker processes sharing the store (default: 1; on this 2-core machine "
        "shared with other jobs and the load generator, a second worker cost more CPU per "
        "request and a higher p99 than it won in parallelism: benchmarks/README.md)",
    )
    parser.add_argument("--db", default="", help="our store URL (default: a fresh SQLite file)")
    parser.add_argument("--peer-server", default="waitress", choices=["waitress", "gevent"])
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="also measure ours served with these extra `bay broker serve` flags (its own SQLite "
        "file), in the same alternating rounds; e.g. 'uvicorn=--http uvicorn' or "
        "'2 workers=--workers 2'; repeatable",
    )
    parser.add_argument(
        "--asgi",
        type=int,
        metavar="N",
        help="instead: N sequential lifecycles straight into the ASGI app (the SDK's own cost)",
    )
    parser.add_argument("--profile", action="store_true", help="with --asgi: pyinstrument it")
    parser.add_argument(
        "--dict-store", action="store_true", help="with --asgi: a zero-cost store (SDK cost only)"
    )
    args = parser.parse_args()
    if args.asgi:
        tmp = Path(tempfile.mkdtemp(prefix="sb-bench-asgi-"))
        db = args.db or f"sqlite:///{tmp / 'b.db'}"
        asyncio.run(profile_asgi(args.asgi, db, args.profile, args.dict_store))
        return

    tmp = Path(tempfile.mkdtemp(prefix="sb-bench-"))
    db = args.db or f"sqlite:///{tmp / 'broker.db'}"
    # Our store's encryption key file is created next to the SQLite file (mode 0600).
    env = dict(os.environ)
    ours_port, peer_port = free_port(), free_port()
    variants = [v.partition("=")[::2] for v in args.variant]
    print(
        f"servicebay: {args.workers} worker(s), store {db.split('://')[0]}"
        + "".join(f"; variant {name!r}: {flags}" for name, flags in variants)
        + "; "
        f"peer: openbrokerapi under {args.peer_server}, in memory; "
        f"{args.rounds} alternating rounds of {args.seconds:.0f}s a cell"
    )
    print(
        "\n| broker | scenario | concurrency | requests/s (median) | range over rounds "
        "| p50 ms | p99 ms | server CPU ms/request | ours vs peer |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    with contextlib.ExitStack() as stack:

        def serve(name: str, port: int, cmd: list[str], log: str) -> None:
            brokers[name] = (port, stack.enter_context(process(cmd, tmp / log, env)))

        brokers: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
        serve("servicebay", ours_port, servicebay_cmd(ours_port, db, args.workers), "ours.log")
        serve("openbrokerapi", peer_port, peer_cmd(peer_port, args.peer_server), "peer.log")
        for i, (name, flags) in enumerate(variants):
            port, variant_db = free_port(), f"sqlite:///{tmp / f'variant{i}.db'}"
            cmd = servicebay_cmd(port, variant_db, args.workers) + shlex.split(flags)
            serve(f"servicebay ({name})", port, cmd, f"variant{i}.log")
        for port, _ in brokers.values():
            wait_for_catalog(port)
        for scenario in args.scenarios:
            for c in args.concurrency:
                # Rounds alternate the brokers, so a burst of load from elsewhere on a shared
                # machine hits each; the median over rounds is what is reported.
                runs: dict[str, list[LoadResult]] = {name: [] for name in brokers}
                for _ in range(args.rounds):
                    for name, (port, proc) in brokers.items():
                        runs[name].append(
                            asyncio.run(measure(port, proc.pid, scenario, c, args.seconds))
                        )
                peer = runs["openbrokerapi"]
                for name, ours in runs.items():
                    ratio = "" if ours is peer else versus(ours, peer)
                    print(median_row(name, scenario, c, ours, ratio), flush=True)


def versus(ours: list[LoadResult], peer: list[LoadResult]) -> str:
    """The last column: our requests/s and CPU efficiency as multiples of the peer's."""
    rps = statistics.median(r.rps for r in ours) / max(statistics.median(r.rps for r in peer), 1e-9)
    # CPU efficiency: how many of our requests fit in the CPU one peer request takes.
    cpu = statistics.median(r.cpu_ms_per_request for r in peer) / max(
        statistics.median(r.cpu_ms_per_request for r in ours), 1e-9
    )
    return f"**{rps:.2f}x** req/s, {cpu:.2f}x CPU efficiency"


if __name__ == "__main__":
    main()
