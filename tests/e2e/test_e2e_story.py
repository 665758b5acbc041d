"""The issue-3 story with real processes, on SQLite and on PostgreSQL.

A platform (`bay server`), the sandbox broker (`bay broker serve`) and the `bay` CLI, each its
own process: register, marketplace, provision (sync and async plans), bind, `bay run` an app
that finds its credentials through servicebay.bindings, unbind (the entry is gone), deprovision.
No credential may appear in any CLI output or process log along the way.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from servicebay.testing import ServedBroker, serve_broker

# About twenty `bay` processes in a row; on a loaded 2-core CI machine each start costs seconds.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

# The app under `bay run`: it knows nothing of the platform, only servicebay.bindings.
APP = """
import json, os, sys
from servicebay import bindings
found = {b.name: {"type": b.type, "provider": b.provider, **dict(b)} for b in bindings.all()}
sync = bindings.find(type="sandbox", name=sys.argv[2]) if len(sys.argv) > 2 else None
with open(sys.argv[1], "w") as out:
    json.dump({"root": os.environ["SERVICE_BINDING_ROOT"], "bindings": found,
               "picked": sync.name if sync else None}, out)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _bay_command() -> list[str]:
    """`bay` itself once the lead wired these commands into it; else the commands' own entry."""
    from servicebay.cli.main import app

    if any(command.name == "provision" for command in app.registered_commands):
        return [sys.executable, "-m", "servicebay.cli.main"]
    return [sys.executable, "-m", "servicebay.cli.commands"]


@dataclass
class Story:
    """The running pieces and a way to call `bay` against them."""

    home: Path
    url: str
    broker: ServedBroker
    server: subprocess.Popen[bytes]
    server_log: Path
    outputs: list[str] = field(default_factory=list)

    def bay(self, *args: str, expect: int = 0, env: dict[str, str] | None = None) -> str:
        """Run `bay ARGS` as a real process; assert its exit code; return stdout."""
        full_env = {**os.environ, "SERVICEBAY_HOME": str(self.home), "SERVICEBAY_URL": self.url}
        full_env.pop("SERVICEBAY_TOKEN", None)  # the local token file is what a user relies on
        full_env.update(env or {})
        done = subprocess.run(
            [*_bay_command(), *args],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        self.outputs += [done.stdout, done.stderr]
        assert done.returncode == expect, (args, done.returncode, done.stdout, done.stderr)
        return done.stdout

    def api(self, path: str) -> Any:
        """GET an API path with the platform's admin token (to compare against what apps saw)."""
        token = (self.home / "platform.token").read_text().strip()
        answer = httpx.get(
            f"{self.url}/api/v1{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        answer.raise_for_status()
        return answer.json()


@contextlib.contextmanager
def _platform_process(home: Path, db: str) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """`bay server` on a free port; waits for /api/v1/healthz; SIGTERM at the end."""
    port = _free_port()
    log = home / "server.log"
    env = {**os.environ, "SERVICEBAY_HOME": str(home)}
    env.pop("SERVICEBAY_PLATFORM_TOKENS", None)
    command = [sys.executable, "-m", "servicebay.cli.server", "server", "--port", str(port)]
    command += ["--db", db, "--log-level", "info"]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/api/v1/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "bay server did not start:\n" + log.read_text()
            time.sleep(0.1)
        yield url, process, log
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def _database(kind: str, tmp_path: Path, postgres_url: str) -> Iterator[str]:
    """A fresh SQLite file, or a fresh PostgreSQL database `sb_<uuid8>` dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'platform.db'}"
        return
    base = make_url(postgres_url)
    name = f"sb_{uuid.uuid4().hex[:8]}"
    connect: dict[str, Any] = {"host": base.host, "port": base.port or 5432, "user": base.username}
    with psycopg.connect(**connect, dbname=base.database, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(**connect, dbname=base.database, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def story(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str) -> Iterator[Story]:
    """Broker + platform processes on the chosen database."""
    home = tmp_path / "home"
    home.mkdir()
    with (
        _database(request.param, tmp_path, postgres_url) as db,
        serve_broker("servicebay.examples.sandbox:broker") as broker,
        _platform_process(home, db) as (url, server, log),
    ):
        yield Story(home, url, broker, server, log)


def test_story_register_provision_bind_run_unbind_deprovision(story: Story, tmp_path: Path) -> None:
    """The whole story: every step through `bay`, the app reads its credentials by itself."""
    bay = story.bay
    # Register: the broker's password travels by environment, never on a command line.
    bay(
        "broker",
        "register",
        "sandbox",
        story.broker.url,
        "--username",
        story.broker.username,
        env={"SERVICEBAY_BROKER_PASSWORD": story.broker.password},
    )
    assert [b["name"] for b in json.loads(bay("broker", "list", "-o", "json"))] == ["sandbox"]

    # Marketplace: the service, its plans, and a plan's parameters from its schema.
    assert "sandbox" in bay("marketplace")
    parameters = bay("marketplace", "sandbox", "--plan", "param")
    assert "1..10" in parameters

    # A bad parameter is refused before anything is sent.
    bay("provision", "sandbox", "nope", "--plan", "param", "-p", "size=11", expect=2)
    assert json.loads(bay("instances", "-o", "json")) == []

    # Provision one sync and one async instance (the async one shows its progress).
    bay("provision", "sandbox", "store-sync", "--plan", "sync")
    bay("provision", "sandbox", "store-async", "--plan", "async", "-p", "delay_seconds=1")
    instances = {i["name"]: i for i in json.loads(bay("instances", "-o", "json"))}
    assert {name: i["state"] for name, i in instances.items()} == {
        "store-sync": "ready",
        "store-async": "ready",
    }

    # Bind both to the app `chat`.
    bay("bind", "store-sync", "--app", "chat")
    bay("bind", "store-async", "--app", "chat", "--name", "chat-async")
    names = sorted(b["name"] for b in json.loads(bay("bindings", "--app", "chat", "-o", "json")))
    assert names == ["chat-async", "store-sync-chat"]

    # `bay run`: the app finds both bindings through servicebay.bindings, with the credentials
    # the broker issued (compared with what the platform holds).
    script = tmp_path / "app.py"
    script.write_text(APP)
    seen_path = tmp_path / "seen.json"
    bay(
        "run", "--app", "chat", "--", sys.executable, str(script), str(seen_path), "store-sync-chat"
    )
    seen = json.loads(seen_path.read_text())
    assert seen["picked"] == "store-sync-chat"
    assert set(seen["bindings"]) == {"chat-async", "store-sync-chat"}
    for name, entries in seen["bindings"].items():
        held = story.api(f"/bindings/{name}")["credentials"]
        assert entries["type"] == "sandbox"
        assert entries["provider"] == "sandbox"
        assert entries["password"] == held["password"]
        assert entries["uri"] == held["uri"]
    assert not Path(seen["root"]).exists()  # the projection is cleaned up

    # Unbind: the entry is gone for the app.
    bay("unbind", "store-sync", "--app", "chat")
    bay("run", "--app", "chat", "--", sys.executable, str(script), str(seen_path))
    assert set(json.loads(seen_path.read_text())["bindings"]) == {"chat-async"}
    bay("unbind", "chat-async")
    bay("run", "--app", "chat", "--", sys.executable, str(script), str(seen_path))
    assert json.loads(seen_path.read_text())["bindings"] == {}

    # Deprovision both; nothing is left.
    bay("deprovision", "store-sync")
    bay("deprovision", "store-async")
    assert json.loads(bay("instances", "-o", "json")) == []

    # No credential was printed by `bay` or logged by the platform or the broker.
    secrets = [story.broker.password]
    secrets += [entries["password"] for entries in seen["bindings"].values()]
    logs = story.server_log.read_text() + story.broker.log
    for secret in secrets:
        assert all(secret not in output for output in story.outputs)
        assert secret not in logs
