"""`bay broker serve`: flags and environment, refusals, a real process, workers, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import structlog
from cryptography.fernet import Fernet
from psycopg import sql
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from servicebay import broker as sb
from servicebay.broker import open_store
from servicebay.cli.broker import LogFormat, app, configure_logging
from servicebay.osb import Catalog, Plan, Service

SERVICE_ID = "7c1d2e3f-0000-4000-8000-00000000b001"
SYNC_PLAN = "7c1d2e3f-0000-4000-8000-00000000b002"
SLOW_PLAN = "7c1d2e3f-0000-4000-8000-00000000b003"
PASSWORD = "serve-pw-4f2a9c"
SECRET = "binding-secret-7d1e3b"  # fixed: the served process imports this module anew
HEADERS = {"X-Broker-API-Version": "2.17"}


class ServeBroker(sb.Broker):
    """Sync plan, and a 'slow' plan whose provision runs in the background for a second."""

    catalog = Catalog(
        services=[
            Service(
                id=SERVICE_ID,
                name="served",
                description="Served by the CLI tests.",
                bindable=True,
                bindings_retrievable=True,
                plans=[
                    Plan(id=SYNC_PLAN, name="sync", description="At once."),
                    Plan(id=SLOW_PLAN, name="slow", description="In the background."),
                ],
            )
        ]
    )

    def is_async(self, operation: sb.OperationKind, plan: Plan) -> bool:
        return plan.id == SLOW_PLAN and operation is sb.OperationKind.PROVISION

    async def provision(
        self, details: sb.ProvisionDetails, ctx: sb.OperationContext
    ) -> sb.ProvisionResult:
        if details.plan.id == SLOW_PLAN:
            await asyncio.sleep(1.0)
        return sb.ProvisionResult()

    async def deprovision(self, details: sb.DeprovisionDetails, ctx: sb.OperationContext) -> None:
        return None

    async def bind(self, details: sb.BindDetails, ctx: sb.OperationContext) -> sb.BindResult:
        return sb.BindResult(credentials={"password": SECRET})

    async def unbind(self, details: sb.UnbindDetails, ctx: sb.OperationContext) -> None:
        return None


served_broker = ServeBroker()
TARGET = f"{__name__}:served_broker"


@pytest.fixture(autouse=True)
def _no_broker_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SERVICEBAY_BROKER_"):
            monkeypatch.delenv(name)


# -- refusals, in-process ------------------------------------------------------------------


def _invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


def test_serve_help_shows_an_example() -> None:
    """The command documents itself with an Example: line (STYLE: every command has one)."""
    code, output = _invoke("serve", "--help")
    assert code == 0
    assert "Example:" in output and "MODULE:ATTR" in output


def test_serve_refuses_to_run_without_authentication() -> None:
    """No credentials anywhere: exit 2 and a message saying which flags to give."""
    code, output = _invoke("serve", TARGET)
    assert code == 2
    assert "without authentication" in output and "--username" in output


def test_serve_refuses_username_without_password() -> None:
    """Half a basic-auth pair is a mistake, not anonymous access."""
    code, output = _invoke("serve", TARGET, "--username", "admin")
    assert code == 2
    assert "--password" in output


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_module_here:broker", "cannot import module 'no_module_here'"),
        (f"{__name__}:missing", "has no attribute 'missing'"),
        (f"{__name__}:SECRET", "not a servicebay.broker.Broker"),
        ("just-a-name", "expected MODULE:ATTR"),
    ],
)
def test_serve_explains_a_bad_target(target: str, message: str) -> None:
    """MODULE:ATTR that does not name a Broker is exit 2 with the reason."""
    code, output = _invoke("serve", target, env={"SERVICEBAY_BROKER_BEARER_TOKEN": "t"})
    assert code == 2
    assert message in output


def test_serve_names_an_invalid_setting_without_its_value() -> None:
    """A bad flag or variable is named; a password in a bad database URL is not echoed."""
    code, output = _invoke(
        "serve",
        TARGET,
        "--bearer-token",
        "t",
        "--db",
        f"mysql://root:{PASSWORD}@db/x",
    )
    assert code == 2
    assert "SERVICEBAY_BROKER_DB" in output
    assert PASSWORD not in output


# -- a real process ------------------------------------------------------------------------


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVICEBAY_BROKER_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.update(extra)
    return env


def _start(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = tmp_path / f"serve-{uuid.uuid4().hex[:6]}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "servicebay.cli.broker", "serve", TARGET, *args],
            env=_child_env(**env),
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, log_path


def _wait_for_url(process: subprocess.Popen[bytes], log_path: Path, timeout: float = 30) -> str:
    """The URL the banner announces, once /v2/catalog answers there."""
    deadline = time.monotonic() + timeout
    url = None
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()
        if url is None:
            found = re.search(r"url:\s+(http://\S+)", log_path.read_text())
            url = found.group(1) if found else None
        if url is not None:
            try:
                response = httpx.get(
                    f"{url}/v2/catalog", auth=("admin", PASSWORD), headers=HEADERS, timeout=1
                )
                if response.status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
        time.sleep(0.05)
    raise AssertionError("bay broker serve did not come up:\n" + log_path.read_text())


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test started; killed (whole group) if the test did not stop them."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _log_events(log_path: Path) -> list[dict[str, object]]:
    events = []
    for line in log_path.read_text().splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


@pytest.mark.e2e
def test_serve_runs_the_broker_and_sigterm_exits_cleanly(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """Flags and environment combine; the banner shows the URL, no secret; SIGTERM → exit 0."""
    process, log_path = _start(
        tmp_path,
        "--port",
        "0",
        "--username",
        "admin",
        "--log-format",
        "json",
        SERVICEBAY_BROKER_PASSWORD=PASSWORD,
    )
    processes.append(process)
    url = _wait_for_url(process, log_path)
    auth = ("admin", PASSWORD)
    body = {"service_id": SERVICE_ID, "plan_id": SYNC_PLAN}
    instance = f"{url}/v2/service_instances/i-1"
    assert httpx.put(instance, json=body, auth=auth, headers=HEADERS).status_code == 201
    bind = httpx.put(f"{instance}/service_bindings/b-1", json=body, auth=auth, headers=HEADERS)
    assert bind.json()["credentials"]["password"] == SECRET
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    log = log_path.read_text()
    assert PASSWORD not in log and SECRET not in log
    assert f"curl -u admin:$SERVICEBAY_BROKER_PASSWORD -H 'X-Broker-API-Version: 2.17' {url}" in log
    events = [e["event"] for e in _log_events(log_path)]
    assert "serving broker" in events and events[-1] == "broker stopped"
    # The default store is a SQLite file in the working directory, its key file beside it.
    assert (tmp_path / "servicebay-broker.db").exists()
    assert (tmp_path / "servicebay-broker.key").exists()


@pytest.mark.e2e
def test_sigterm_lets_in_flight_work_finish_and_records_it(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """An async provision running at SIGTERM completes within the grace and is recorded."""
    db = tmp_path / "state" / "broker.db"
    process, log_path = _start(
        tmp_path,
        "--port",
        "0",
        "--db",
        f"sqlite:///{db}",
        SERVICEBAY_BROKER_USERNAME="admin",
        SERVICEBAY_BROKER_PASSWORD=PASSWORD,
        SERVICEBAY_BROKER_SHUTDOWN_GRACE="20",
    )
    processes.append(process)
    url = _wait_for_url(process, log_path)
    accepted = httpx.put(
        f"{url}/v2/service_instances/slow-1",
        params={"accepts_incomplete": "true"},
        json={"service_id": SERVICE_ID, "plan_id": SLOW_PLAN},
        auth=("admin", PASSWORD),
        headers=HEADERS,
    )
    assert accepted.status_code == 202
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0

    async def recorded_state() -> str | None:
        store = open_store(f"sqlite:///{db}")
        await store.open()
        try:
            op = await store.latest_operation("slow-1")
            return None if op is None else op.state
        finally:
            await store.close()

    assert asyncio.run(recorded_state()) == "succeeded"


@pytest.mark.e2e
def test_workers_share_the_socket_and_the_store(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """--workers 2: two processes serve one URL, with the same settings; what one records, the
    other answers."""
    process, log_path = _start(
        tmp_path,
        "--port",
        "0",
        "--workers",
        "2",
        "--username",
        "admin",
        "--log-format",
        "json",
        SERVICEBAY_BROKER_PASSWORD=PASSWORD,
        SERVICEBAY_BROKER_TRUSTED_PROXIES="10.0.0.0/8, 192.0.2.1",
    )
    processes.append(process)
    url = _wait_for_url(process, log_path)
    auth = ("admin", PASSWORD)
    deadline = time.monotonic() + 30
    while log_path.read_text().count("Application startup complete") < 2:
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.05)
    # Each worker got the settings, a list included (each logs them at start).
    assert log_path.read_text().count('"trusted_proxies": ["10.0.0.0/8", "192.0.2.1/32"]') == 2
    body = {"service_id": SERVICE_ID, "plan_id": SYNC_PLAN}
    with httpx.Client(auth=auth, headers=HEADERS) as client:
        for i in range(20):
            # A new connection each time, so the kernel spreads them over both workers.
            response = client.put(
                f"{url}/v2/service_instances/w-{i}",
                json=body,
                headers={"Connection": "close"},
            )
            assert response.status_code == 201
        for i in range(20):
            again = client.put(
                f"{url}/v2/service_instances/w-{i}", json=body, headers={"Connection": "close"}
            )
            assert again.status_code == 200  # idempotent, whichever worker answers
    assert log_path.read_text().count("Started server process") == 2
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    assert PASSWORD not in log_path.read_text()


@pytest.fixture
def serve_pg_database(postgres_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    name = f"sb_serve_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.mark.e2e
@pytest.mark.postgres
def test_serve_on_postgresql_keeps_credentials_encrypted(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]], serve_pg_database: str
) -> None:
    """With --db postgresql://... and a key, bindings are served and stored encrypted."""
    process, log_path = _start(
        tmp_path,
        "--port",
        "0",
        "--db",
        serve_pg_database,
        SERVICEBAY_BROKER_USERNAME="admin",
        SERVICEBAY_BROKER_PASSWORD=PASSWORD,
        SERVICEBAY_BROKER_KEY=Fernet.generate_key().decode(),
    )
    processes.append(process)
    url = _wait_for_url(process, log_path)
    auth = ("admin", PASSWORD)
    body = {"service_id": SERVICE_ID, "plan_id": SYNC_PLAN}
    assert httpx.put(f"{url}/v2/service_instances/pg-1", json=body, auth=auth, headers=HEADERS)
    bind = httpx.put(
        f"{url}/v2/service_instances/pg-1/service_bindings/b-1",
        json=body,
        auth=auth,
        headers=HEADERS,
    )
    assert bind.status_code == 201 and bind.json()["credentials"]["password"] == SECRET
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    with psycopg.connect(serve_pg_database) as raw:
        rows = raw.execute("SELECT t::text FROM broker_bindings AS t").fetchall()
    assert rows and all(SECRET not in row[0] for row in rows)


@pytest.mark.e2e
@pytest.mark.postgres
def test_serve_on_postgresql_without_a_key_fails_clearly(tmp_path: Path, postgres_url: str) -> None:
    """PostgreSQL with no key: the process exits non-zero naming SERVICEBAY_BROKER_KEY."""
    process, log_path = _start(
        tmp_path,
        "--port",
        "0",
        "--db",
        postgres_url,
        SERVICEBAY_BROKER_USERNAME="admin",
        SERVICEBAY_BROKER_PASSWORD=PASSWORD,
    )
    assert process.wait(30) != 0
    assert "SERVICEBAY_BROKER_KEY" in log_path.read_text()


@pytest.mark.parametrize("fmt", [LogFormat.console, LogFormat.json])
def test_logged_tracebacks_never_show_local_variables(
    fmt: LogFormat, capsys: pytest.CaptureFixture[str]
) -> None:
    """A crash logged by serve's logging (ours or uvicorn's) keeps the locals, and secrets, out."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("info", fmt)
    try:

        def crash() -> None:
            password = SECRET  # a local a pretty traceback would print
            raise RuntimeError(f"boom ({len(password)})")

        try:
            crash()
        except RuntimeError:
            logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
            structlog.get_logger("servicebay.test").exception("operation crashed")
        err = capsys.readouterr().err
    finally:
        structlog.reset_defaults()
        root.handlers, root.level = saved
    assert err.count("RuntimeError: boom") == 2
    assert SECRET not in err
