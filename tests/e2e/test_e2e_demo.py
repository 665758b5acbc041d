"""`bay demo` (what `make run` starts) plays the story with real processes, as the README says."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.rabbitmq]

BAY = [sys.executable, "-m", "servicebay"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[dict[str, str], subprocess.Popen[str], Path]]:
    """`bay demo` on free ports with a fresh SERVICEBAY_HOME; yields the CLI's environment."""
    port, sandbox, rabbit = _free_port(), _free_port(), _free_port()
    env = {
        **os.environ,
        "SERVICEBAY_HOME": str(tmp_path),
        "SERVICEBAY_URL": f"http://127.0.0.1:{port}",
        "SERVICEBAY_RABBITMQ_PREFIX": f"sbdemo-{port}-",
    }
    out = tmp_path / "demo.out"
    ports = ["--port", str(port), "--sandbox-port", str(sandbox), "--rabbitmq-port", str(rabbit)]
    with out.open("w") as sink:
        process = subprocess.Popen(
            [*BAY, "demo", *ports],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        deadline = time.monotonic() + 60
        while "Ctrl-C stops the demo" not in out.read_text():
            assert process.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.2)
        yield env, process, out
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _bay(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [*BAY, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"bay {' '.join(args)}: {result.stdout}{result.stderr}"
    return result.stdout


def test_demo_story_binds_rabbitmq_and_app_finds_credentials(
    demo: tuple[dict[str, str], subprocess.Popen[str], Path],
) -> None:
    """Both brokers are registered; provision + bind; `bay run` hands the app working AMQP creds."""
    env, process, out = demo
    printed = out.read_text()
    assert "password in" in printed
    passwords = json.loads((Path(env["SERVICEBAY_HOME"]) / "demo" / "brokers.json").read_text())
    assert all(secret not in printed for secret in passwords.values())
    assert printed.count("rabbitmq broker ready") == 1, printed  # one startup, one log line

    services = json.loads(_bay(env, "marketplace", "-o", "json"))
    assert {s["name"] for s in services} >= {"sandbox", "rabbitmq"}

    _bay(env, "provision", "rabbitmq", "chat-mq", "--plan", "standard")
    _bay(env, "bind", "chat-mq", "--app", "chat")
    probe = (
        "import asyncio, aio_pika\n"
        "from servicebay import bindings\n"
        "async def main():\n"
        "    b = bindings.find(type='rabbitmq')\n"
        "    conn = await aio_pika.connect(b['uri'])\n"
        "    ch = await conn.channel(publisher_confirms=True)\n"
        "    q = await ch.declare_queue('demo-probe', durable=True)\n"
        "    await ch.default_exchange.publish(aio_pika.Message(b'hi'), routing_key=q.name)\n"
        "    msg = await q.get(timeout=10)\n"
        "    await msg.ack()\n"
        "    print('got', msg.body.decode())\n"
        "    await conn.close()\n"
        "asyncio.run(main())\n"
    )
    output = _bay(env, "run", "--app", "chat", "--", sys.executable, "-c", probe)
    assert "got hi" in output

    _bay(env, "unbind", "chat-mq-chat")
    _bay(env, "deprovision", "chat-mq")
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0


def test_demo_without_rabbitmq_refuses_connections_on_its_port(tmp_path: Path) -> None:
    """RabbitMQ unreachable: the demo serves the rest and gives the RabbitMQ broker's port back."""
    port, sandbox, rabbit = _free_port(), _free_port(), _free_port()
    env = {
        **os.environ,
        "SERVICEBAY_HOME": str(tmp_path),
        "SERVICEBAY_RABBITMQ_MANAGEMENT_URL": "http://127.0.0.1:1",
        "SERVICEBAY_RABBITMQ_ATTEMPTS": "1",
    }
    ports = ["--port", str(port), "--sandbox-port", str(sandbox), "--rabbitmq-port", str(rabbit)]
    out = tmp_path / "demo.out"
    with out.open("w") as sink:
        process = subprocess.Popen(
            [*BAY, "demo", *ports], env=env, stdout=sink, stderr=subprocess.STDOUT, text=True
        )
    try:
        deadline = time.monotonic() + 60
        while "Ctrl-C stops the demo" not in out.read_text():
            assert process.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.2)
        assert "RabbitMQ broker not served" in out.read_text()
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", rabbit)):
            pass
        socket.create_connection(("127.0.0.1", sandbox)).close()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, out.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
