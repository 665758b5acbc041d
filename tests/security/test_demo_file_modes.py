"""`bay demo` under ``umask 0``: what it writes in SERVICEBAY_HOME is its user's alone."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_demo_home_and_state_are_private_under_umask_0(tmp_path: Path) -> None:
    """The home the demo creates is 0700 and nothing in it is readable by others."""
    home = tmp_path / "home"
    ports = [_free_port() for _ in range(3)]
    env = {**os.environ, "SERVICEBAY_HOME": str(home)}
    args = ["--port", str(ports[0]), "--sandbox-port", str(ports[1]), "--no-rabbitmq"]
    out = tmp_path / "demo.out"
    with out.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "servicebay", "demo", *args],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            umask=0,
        )
    try:
        deadline = time.monotonic() + 60
        while "Ctrl-C stops the demo" not in out.read_text():
            assert process.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.2)
        modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [home, *home.rglob("*")]}
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    assert modes[home] == 0o700
    assert (home / "platform.db") in modes and (home / "demo" / "brokers.json") in modes
    assert {str(p): f"{m:o}" for p, m in modes.items() if m & 0o077} == {}
