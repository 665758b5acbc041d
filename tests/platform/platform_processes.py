"""Real platform processes for the e2e tests: ``bay server`` / ``bay worker`` as subprocesses.

They run as ``python -m servicebay.cli.server`` (the same Typer commands ``bay`` registers),
each in its own process group so a test can ``kill -9`` one as a crash would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    """A port the OS just reported free."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class PlatformProcess:
    """One ``server`` or ``worker`` subprocess with its log file."""

    command: list[str]
    env: dict[str, str]
    log_path: Path
    port: int | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 60.0) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if self.port is not None:
            self._wait_healthy(timeout)

    def _wait_healthy(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"platform exited {self.process.returncode}:\n{self.log[-3000:]}"
                )
            try:
                if httpx.get(f"{self.url}/api/v1/healthz", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"platform not healthy in {timeout}s:\n{self.log[-3000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        """``kill -9`` the whole process group."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()


def platform_env(home: Path, token: str, **extra: str) -> dict[str, str]:
    """Environment for platform processes sharing one home (key file) and one token."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in [*sys.path, os.environ.get("PYTHONPATH")] if p),
        "SERVICEBAY_HOME": str(home),
        "SERVICEBAY_PLATFORM_TOKENS": f"admin={token}",
        **extra,
    }


def server_process(
    db: str, env: dict[str, str], log: Path, *, worker: bool = True
) -> PlatformProcess:
    """A ``server`` subprocess on a free port (not started)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "servicebay.cli.server",
        "server",
        "--port",
        str(port),
        "--db",
        db,
        "--log-level",
        "warning",
    ]
    if not worker:
        command.append("--no-worker")
    return PlatformProcess(command, env, log, port=port)


def worker_process(db: str, env: dict[str, str], log: Path) -> PlatformProcess:
    """A ``worker`` subprocess (not started)."""
    command = [
        sys.executable,
        "-m",
        "servicebay.cli.server",
        "worker",
        "--db",
        db,
        "--log-level",
        "warning",
    ]
    return PlatformProcess(command, env, log)


@contextlib.contextmanager
def fake_broker_process(tmp: Path, async_seconds: float = 0.3) -> Iterator[str]:
    """The fake broker served by a real process; yields its URL."""
    port = free_port()
    log = tmp / f"fake-{port}.log"
    here = Path(__file__).parent
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, str(here / "platform_fake_broker.py"), str(port), str(async_seconds)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/_fake/stats", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("fake broker did not start:\n" + log.read_text())
            time.sleep(0.05)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
