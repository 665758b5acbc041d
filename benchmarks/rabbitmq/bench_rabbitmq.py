"""The RabbitMQ broker against the raw management API calls it must make, in one run.

One cycle is provision → bind → unbind → deprovision of a fresh instance. Through the broker
that is four OSB requests to a real ``bay broker serve servicebay.brokers.rabbitmq:broker``
process (durable SQLite store, basic auth). Raw, it is the eight management API requests the
same work needs at the least: create the vhost, set its two limits, create the user, grant it
the vhost, delete the user, close its connections, delete the vhost. Both sides are driven by
the same lean load generator (``benchmarks/loadgen.py``) against the same local RabbitMQ, one
after the other at each concurrency, and the ratio raw/broker is the broker's overhead.

Run from the repository root (needs the local RabbitMQ with its management plugin):

    .venv/bin/python benchmarks/rabbitmq/bench_rabbitmq.py --seconds 15 --concurrency 1 4
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
from collections.abc import Iterator, Sequence
from pathlib import Path
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


def raw_scenario(prefix: str) -> Sequence[Request]:
    """The management API requests one cycle needs, in the broker's order."""
    vhost, user = quote(prefix + uuid.uuid4().hex, safe=""), quote(prefix + "u" + uuid.uuid4().hex)
    limit = lambda value: json.dumps({"value": value}).encode()  # noqa: E731
    user_body = json.dumps({"password": uuid.uuid4().hex, "tags": ""}).encode()
    grant = json.dumps({"configure": ".*", "write": ".*", "read": ".*"}).encode()
    vhost_body = json.dumps({"description": "bench", "defaultqueuetype": "classic"}).encode()
    return [
        ("PUT", f"/api/vhosts/{vhost}", vhost_body, 201),
        ("PUT", f"/api/vhost-limits/{vhost}/max-connections", limit(1000), 204),
        ("PUT", f"/api/vhost-limits/{vhost}/max-queues", limit(1000), 204),
        ("PUT", f"/api/users/{user}", user_body, 201),
        ("PUT", f"/api/permissions/{vhost}/{user}", grant, 201),
        ("DELETE", f"/api/users/{user}", None, 204),
        ("DELETE", f"/api/connections/username/{user}", None, 204),
        ("DELETE", f"/api/vhosts/{vhost}", None, 204),
    ]


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
def broker_process(port: int, env: dict[str, str], log: Path, db: str) -> Iterator[None]:
    """``bay broker serve`` for the duration of the block (output to a file, not a pipe)."""
    cmd = [
        sys.executable, "-m", "servicebay", "broker", "serve",
        "servicebay.brokers.rabbitmq:broker",
        "--host", "127.0.0.1", "--port", str(port),
        "--username", USER, "--password", PASSWORD, "--db", db, "--log-level", "warning",
    ]  # fmt: skip
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for_catalog(port, proc, log)
        yield
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


async def measure(
    host: str, port: int, scenario: object, headers: dict[str, str], c: int, seconds: float
) -> LoadResult:
    """A short warm-up, then the measured run."""
    await run_load(host, port, scenario, concurrency=c, seconds=1, headers=headers)  # type: ignore[arg-type]
    return await run_load(host, port, scenario, concurrency=c, seconds=seconds, headers=headers)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--management-url", default="http://127.0.0.1:15672")
    parser.add_argument("--admin", default="guest:guest", help="management API user:password")
    args = parser.parse_args()

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
        f"RabbitMQ at {args.management_url}; broker: 1 process, SQLite store; "
        f"{args.seconds:.0f}s a cell; one cycle = provision+bind+unbind+deprovision"
    )
    print("\n| path | concurrency | cycles/s | requests/s | p50 ms/request | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    raw_headers = {"Authorization": auth, "Content-Type": "application/json"}
    try:
        with broker_process(port, env, tmp / "broker.log", f"sqlite:///{tmp / 'broker.db'}"):
            for c in args.concurrency:
                raw = asyncio.run(
                    measure(
                        api_host, api_port, lambda: raw_scenario(run + "raw-"),
                        raw_headers, c, args.seconds,
                    )
                )  # fmt: skip
                ours = asyncio.run(
                    measure(
                        "127.0.0.1", port, broker_scenario,
                        osb_headers(USER, PASSWORD), c, args.seconds,
                    )
                )  # fmt: skip
                raw_cycles, our_cycles = raw.rps / 8, ours.rps / 4
                for name, r, cycles in (("raw API", raw, raw_cycles), ("broker", ours, our_cycles)):
                    error = f" {r.first_error[:80]}" if r.errors else ""
                    print(
                        f"| {name} | {c} | {cycles:.1f} | {r.rps:.0f} | "
                        f"{r.percentile(50):.1f} | {r.errors}{error} |",
                        flush=True,
                    )
                print(f"| overhead raw/broker | {c} | {raw_cycles / our_cycles:.2f}x | | | |")
    finally:
        cleanup(args.management_url, (user, password), run)


if __name__ == "__main__":
    main()
