"""Test support: a private RabbitMQ node that a test may kill and restart.

The machine's RabbitMQ is shared by every helper and must never be restarted by a test. This
starts a separate node from the same installation (``/usr/lib/rabbitmq/bin/rabbitmq-server``)
with its own node name (``sbtest-<hex>@localhost``), free AMQP and distribution ports, its data
and logs under a temporary directory, no plugins, and its own Erlang cookie (``HOME`` points into
that directory, so the shared node's cookie is neither needed nor touched). It runs in its own
process group. ``shutdown()`` stops it the way an operator restarting RabbitMQ does
(``rabbitmqctl -n NODE stop``), ``start()`` brings it back on the same data and ports; ``kill()``
is a hard crash (SIGKILL to the group; epmd daemonizes into its own session and survives).

Measured on RabbitMQ 3.10.8, single node: after ``shutdown()`` + ``start()`` a stream is usable
again within ~2 s of the node accepting connections, and so is one that existed ~20 s before a
``kill()``; a stream declared a few seconds before ``kill()`` stays "home node ... is down or
inaccessible" for good. The chaos test creates its streams at the start of the run, so it
restarts RabbitMQ with ``shutdown()`` (docs/chat-rabbitmq.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import aio_pika

CTL = next(
    (
        path
        for path in ("/usr/lib/rabbitmq/bin/rabbitmqctl", shutil.which("rabbitmqctl"))
        if path and Path(path).exists()
    ),
    "rabbitmqctl",
)
SERVER = next(
    (
        path
        for path in ("/usr/lib/rabbitmq/bin/rabbitmq-server", shutil.which("rabbitmq-server"))
        if path and Path(path).exists()
    ),
    "rabbitmq-server",
)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RabbitMQNode:
    """One private RabbitMQ node (see the module docstring)."""

    def __init__(self, base: Path) -> None:
        """Keep the node's data, logs, config and cookie under ``base``."""
        self.base = base
        self.name = f"sbtest-{secrets.token_hex(4)}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        self.stops = 0
        base.mkdir(parents=True, exist_ok=True)
        (base / "home").mkdir(exist_ok=True)
        (base / "enabled_plugins").write_text("[].\n")
        (base / "rabbitmq-env.conf").write_text("")
        (base / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )

    @property
    def uri(self) -> str:
        """The AMQP URI of the node's default vhost."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def env(self) -> dict[str, str]:
        """The environment that makes the installed scripts run this node, not the shared one."""
        base = self.base
        return {
            **os.environ,
            "HOME": str(base / "home"),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_LOGS": str(base / "log" / "node.log"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def start(self) -> None:
        """Start the node (returns at once; see ``ready``)."""
        out = (self.base / "console.log").open("ab")
        with out:
            self.proc = subprocess.Popen(
                [SERVER], env=self.env(), stdout=out, stderr=out, start_new_session=True
            )
        self.starts += 1

    async def ready(self, seconds: float = 90.0) -> None:
        """Wait until the node accepts an AMQP connection."""
        deadline = time.monotonic() + seconds
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                log = (self.base / "console.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"private RabbitMQ node exited: {log}")
            try:
                conn = await aio_pika.connect(self.uri, timeout=2)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                # Polling with a deadline: the node gives no other sign that it is up.
                await asyncio.sleep(0.2)
                continue
            await conn.close()
            return

    def kill(self) -> None:
        """Crash the node: SIGKILL to its whole process group, then reap it."""
        if self._reap():
            self.kills += 1

    def _reap(self) -> bool:
        """SIGKILL whatever is left of the node's process group; True if it was still running."""
        if self.proc is None:
            return False
        running = self.proc.poll() is None
        with contextlib.suppress(ProcessLookupError):  # the group may be gone already
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        return running

    async def shutdown(self, seconds: float = 60.0) -> None:
        """Stop the node cleanly (``rabbitmqctl stop``); crash it if that does not work in time."""
        if self.proc is None:
            return
        ctl = await asyncio.create_subprocess_exec(
            CTL,
            "-n",
            self.name,
            "stop",
            env=self.env(),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await ctl.wait()
        proc = self.proc
        with contextlib.suppress(subprocess.TimeoutExpired):  # then it is crashed below
            await asyncio.to_thread(proc.wait, seconds)
        self._reap()  # helpers of the node (e.g. erl_child_setup) go with it
        self.stops += 1

    def stop(self) -> None:
        """Stop the node for good (the data goes with the test's tmp_path)."""
        self.kill()
