"""Side-by-side benchmark: the servicebay sandbox broker against an openbrokerapi equivalent.

Both brokers run as real processes on loopback, measured in the same run by the same load
generator (``loadgen.py``): ``GET /v2/catalog`` and the full synchronous lifecycle
provision → bind → unbind → deprovision, at concurrency 1, 16 and 64. Ours keeps every record
in its durable store (SQLite file by default, or ``--db postgresql://...``); the peer keeps its
state in memory.

Run from the repository root (builds benchmarks/.venv with the peer's packages on first use):

    make bench-broker                   # or: python benchmarks/broker_sdk.py --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

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
def process(cmd: list[str], env: dict[str, str] | None = None) -> Iterator[None]:
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        yield
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


async def measure(port: int, scenario_name: str, concurrency: int, seconds: float) -> LoadResult:
    headers = osb_headers(USER, PASSWORD)
    if scenario_name == "catalog":
        scenario = catalog_scenario
    else:
        scenario = lifecycle_scenario(*sync_plan_ids(wait_for_catalog(port)))
    await run_load("127.0.0.1", port, scenario, concurrency=concurrency, seconds=1, headers=headers)
    return await run_load(
        "127.0.0.1", port, scenario, concurrency=concurrency, seconds=seconds, headers=headers
    )


def row(name: str, scenario: str, c: int, r: LoadResult) -> str:
    errors = f" ({r.errors} errors: {r.first_error[:80]})" if r.errors else ""
    return (
        f"| {name} | {scenario} | {c} | {r.rps:,.0f} | {r.percentile(50):.2f} | "
        f"{r.percentile(99):.2f} |{errors}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--workers", type=int, default=2, help="servicebay worker processes")
    parser.add_argument("--db", default="", help="our store URL (default: a fresh SQLite file)")
    parser.add_argument("--peer-server", default="waitress", choices=["waitress", "gevent"])
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="sb-bench-"))
    db = args.db or f"sqlite:///{tmp / 'broker.db'}"
    env = {**os.environ, "SERVICEBAY_BROKER_KEY_FILE": str(tmp / "broker.key")}
    ours_port, peer_port = free_port(), free_port()
    print(
        f"servicebay: {args.workers} worker(s), store {db.split('://')[0]}; "
        f"peer: openbrokerapi under {args.peer_server}, in memory; {args.seconds:.0f}s a cell"
    )
    print("\n| broker | scenario | concurrency | requests/s | p50 ms | p99 ms |")
    print("|---|---|---:|---:|---:|---:|")
    with (
        process(servicebay_cmd(ours_port, db, args.workers), env=env),
        process(peer_cmd(peer_port, args.peer_server)),
    ):
        wait_for_catalog(ours_port)
        wait_for_catalog(peer_port)
        for scenario in ("catalog", "lifecycle"):
            for c in args.concurrency:
                for name, port in (("servicebay", ours_port), ("openbrokerapi", peer_port)):
                    result = asyncio.run(measure(port, scenario, c, args.seconds))
                    print(row(name, scenario, c, result), flush=True)


if __name__ == "__main__":
    main()
