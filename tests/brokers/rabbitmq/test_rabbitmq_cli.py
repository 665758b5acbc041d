"""`bay rabbitmq check` and `bay rabbitmq serve`: the broker's settings as flags."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from servicebay.cli.rabbitmq import app

pytestmark = pytest.mark.rabbitmq


def test_check_passes_and_shows_settings_without_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With working credentials: exit 0, the settings listed, the password masked."""
    monkeypatch.setenv("SERVICEBAY_RABBITMQ_MANAGEMENT_PASSWORD", "guest")
    result = CliRunner().invoke(app, ["check", "--prefix", "team-"])
    assert result.exit_code == 0, result.output
    assert "prefix: team-" in result.output
    assert "management_password: **********" in result.output
    assert "ok: RabbitMQ" in result.output


def test_check_fails_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused credentials: exit 1 and a message saying so (never the password)."""
    monkeypatch.setenv("SERVICEBAY_RABBITMQ_MANAGEMENT_PASSWORD", "nope-not-it")
    result = CliRunner().invoke(app, ["check"])
    assert result.exit_code == 1
    assert "refused user 'guest'" in result.output
    assert "nope-not-it" not in result.output


def test_check_refuses_a_bad_flag_value() -> None:
    """A malformed URL flag is refused before anything is contacted (exit 2)."""
    result = CliRunner().invoke(app, ["check", "--management-url", "ftp://x"])
    assert result.exit_code == 2
    assert "SERVICEBAY_RABBITMQ_MANAGEMENT_URL" in result.output


@pytest.mark.e2e
def test_serve_starts_the_broker_with_flags(rabbitmq_prefix: str, tmp_path: Path) -> None:
    """`serve` with --prefix and --amqp-host: the served broker hands out those values."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SERVICEBAY_BROKER_PASSWORD": "pw-cli"}
    command = [
        sys.executable, "-m", "servicebay.cli.rabbitmq", "serve",
        "--prefix", rabbitmq_prefix, "--amqp-host", "127.0.0.1", "--amqp-port", "5672",
        "--port", str(port), "--username", "platform", "--db", f"sqlite:///{tmp_path}/b.db",
        "--log-level", "warning",
    ]  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("w") as sink:  # a file, not a pipe that could fill up and stall the server
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            auth=("platform", "pw-cli"),
            headers={"X-Broker-API-Version": "2.17"},
        )
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                catalog = client.get("/v2/catalog")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        service = catalog.json()["services"][0]
        ids = {"service_id": service["id"], "plan_id": service["plans"][0]["id"]}
        assert client.put("/v2/service_instances/i1", json=ids).status_code == 201
        bound = client.put("/v2/service_instances/i1/service_bindings/b1", json=ids)
        assert bound.status_code == 201
        assert bound.json()["credentials"]["vhost"] == rabbitmq_prefix + "i1"
        unbound = client.delete("/v2/service_instances/i1/service_bindings/b1", params=ids)
        assert unbound.status_code == 200
        assert client.delete("/v2/service_instances/i1", params=ids).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
