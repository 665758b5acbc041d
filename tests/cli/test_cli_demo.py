"""`bay demo` refuses a port in use before it starts or opens anything."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from servicebay.cli.main import app


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("flag", ["--port", "--sandbox-port", "--rabbitmq-port"])
def test_demo_with_a_port_in_use_says_so_in_one_line_and_opens_nothing(
    flag: str, busy_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy port: one `error:` line naming it and the flag to change, exit 2, no store opened."""
    monkeypatch.setenv("SERVICEBAY_HOME", str(tmp_path))
    ports = {f: _free_port() for f in ("--port", "--sandbox-port", "--rabbitmq-port")}
    ports[flag] = busy_port
    args = [part for f, p in ports.items() for part in (f, str(p))]

    result = CliRunner().invoke(app, ["demo", *args])

    assert result.exit_code == 2, result.output
    assert result.output == (
        f"error: port {busy_port} is in use (another bay demo?): stop it or choose {flag}\n"
    )
    assert list(tmp_path.iterdir()) == []
    for other_flag, port in ports.items():
        if other_flag != flag:  # the ports taken before the busy one were given back
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port))
