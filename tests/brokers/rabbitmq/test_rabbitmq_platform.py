"""The RabbitMQ broker through the platform, with real processes: `bay server`, `bay broker serve
servicebay.brokers.rabbitmq:broker` and the `bay` CLI. Register, provision, bind an app, and
`bay run` it: the app finds its AMQP credentials through servicebay.bindings and publishes and
consumes with them. Unbind revokes them in RabbitMQ; deprovision leaves nothing; no password
shows in any output or log.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from servicebay.testing import serve_broker

pytestmark = [pytest.mark.rabbitmq, pytest.mark.e2e]

# The app under `bay run`: it knows only servicebay.bindings and the AMQP URI it finds there.
APP = """
import asyncio, json, sys
import aio_pika
from servicebay import bindings

async def main():
    mq = bindings.find(type="rabbitmq")
    connection = await aio_pika.connect(mq["uri"])
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue("chat", durable=True)
        await channel.default_exchange.publish(aio_pika.Message(b"hello"), routing_key="chat")
        message = await queue.get(timeout=10)
        await message.ack()
    with open(sys.argv[1], "w") as out:
        json.dump({"got": message.body.decode(), "vhost": mq["vhost"],
                   "username": mq["username"]}, out)

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def platform(home: Path) -> Iterator[tuple[str, Path]]:
    """`bay server` on a free port with SQLite; SIGTERM at the end."""
    port, log = free_port(), home / "server.log"
    env = {**os.environ, "SERVICEBAY_HOME": str(home)}
    env.pop("SERVICEBAY_PLATFORM_TOKENS", None)
    command = [sys.executable, "-m", "servicebay.cli.server", "server", "--port", str(port)]
    command += ["--db", f"sqlite:///{home / 'platform.db'}"]
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
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield url, log
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Bay:
    """Runs `bay` as a real process against one platform, keeping every output."""

    def __init__(self, home: Path, url: str) -> None:
        self.env = {**os.environ, "SERVICEBAY_HOME": str(home), "SERVICEBAY_URL": url}
        self.env.pop("SERVICEBAY_TOKEN", None)
        self.outputs: list[str] = []

    def __call__(self, *args: str, expect: int = 0) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "servicebay.cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        self.outputs += [done.stdout, done.stderr]
        assert done.returncode == expect, (args, done.returncode, done.stdout, done.stderr)
        return done.stdout


def names_in_rabbitmq(prefix: str) -> set[str]:
    found = set()
    with httpx.Client(base_url="http://127.0.0.1:15672/api", auth=("guest", "guest")) as api:
        for kind in ("vhosts", "users"):
            found |= {i["name"] for i in api.get(f"/{kind}", params={"columns": "name"}).json()}
    return {name for name in found if name.startswith(prefix)}


def test_register_provision_bind_run_unbind_deprovision(
    tmp_path: Path, rabbitmq_prefix: str
) -> None:
    """The issue's story, two commands after registration: provision, bind; the app connects."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"SERVICEBAY_RABBITMQ_PREFIX": rabbitmq_prefix}
    with (
        serve_broker("servicebay.brokers.rabbitmq:broker", env=env) as broker,
        platform(home) as (url, server_log),
    ):
        bay = Bay(home, url)
        bay("broker", "register", "rabbitmq", broker.url, "--username", broker.username,
            "--password", broker.password)  # fmt: skip
        assert "limited" in bay("marketplace", "rabbitmq")

        # Refused before anything reaches RabbitMQ: outside plan `limited`'s schema.
        refused = Bay(home, url)
        refused("provision", "rabbitmq", "too-big", "--plan", "limited",
                "-p", "max_connections=50", expect=2)  # fmt: skip  # 2: invalid input
        assert "max_connections" in " ".join(refused.outputs)
        assert names_in_rabbitmq(rabbitmq_prefix) == set()

        bay("provision", "rabbitmq", "chat-mq", "--plan", "standard",
            "-p", "default_queue_type=quorum", "-p", "max_connections=5")  # fmt: skip
        bay("bind", "chat-mq", "--app", "chat")
        app, out = tmp_path / "app.py", tmp_path / "out.json"
        app.write_text(APP)
        bay("run", "--app", "chat", "--", sys.executable, str(app), str(out))
        seen = json.loads(out.read_text())
        assert seen["got"] == "hello"
        assert seen["vhost"].startswith(rabbitmq_prefix)
        assert seen["username"] in names_in_rabbitmq(rabbitmq_prefix)
        password = binding_password(home, url, seen["username"])

        bay("unbind", "chat-mq", "--app", "chat")
        assert seen["username"] not in names_in_rabbitmq(rabbitmq_prefix)
        bay("deprovision", "chat-mq")
        assert names_in_rabbitmq(rabbitmq_prefix) == set()

        everything = "\n".join([*bay.outputs, *refused.outputs, server_log.read_text(),
                                broker.log])  # fmt: skip
        assert password not in everything


def binding_password(home: Path, url: str, username: str) -> str:
    """The binding's password as the platform holds it (admin token), to search outputs for."""
    token = (home / "platform.token").read_text().strip()
    bindings: Any = httpx.get(
        f"{url}/api/v1/bindings",
        params={"app": "chat"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ).json()
    items = bindings["items"] if isinstance(bindings, dict) else bindings
    name = items[0]["name"]
    detail = httpx.get(
        f"{url}/api/v1/bindings/{name}", headers={"Authorization": f"Bearer {token}"}, timeout=30
    ).json()
    credentials = detail.get("credentials") or detail.get("binding", {}).get("credentials")
    assert credentials["username"] == username
    return str(credentials["password"])
