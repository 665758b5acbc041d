"""Fixtures for CLI tests: a real platform on a real socket, the sandbox broker, and `bay`.

The platform runs in-process (uvicorn in a thread, lifespan and worker included) so each CLI
invocation talks HTTP to it exactly as a user's `bay` would; the sandbox broker is a real
`bay broker serve` process (servicebay.testing.serve_broker).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from typer.testing import CliRunner, Result

from servicebay.cli.commands import build_app
from servicebay.testing import ServedBroker, serve_broker

ADMIN_TOKEN = "admin-" + secrets.token_hex(8)
ALICE_TOKEN = "alice-" + secrets.token_hex(8)


@dataclass
class RunningPlatform:
    """A platform serving on 127.0.0.1 at ``url``; ``home`` holds its database and key."""

    url: str
    home: Path


@contextlib.contextmanager
def run_platform(home: Path, db: str | None = None) -> Iterator[RunningPlatform]:
    """Serve a platform app on a free port in a background thread until the block ends."""
    # Imported here so the other CLI tests in this directory never depend on the platform.
    from servicebay.platform.api.app import create_app
    from servicebay.platform.settings import PlatformSettings

    settings = PlatformSettings(
        home=home,
        db=db or f"sqlite:///{home / 'platform.db'}",
        tokens={ADMIN_TOKEN: "admin", ALICE_TOKEN: "alice"},
        poll_interval=0.1,
        default_retry_after=0.2,
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])))
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the platform did not start")
        time.sleep(0.02)
    try:
        yield RunningPlatform(f"http://127.0.0.1:{port}", home)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="session")
def sandbox() -> Iterator[ServedBroker]:
    """The sandbox broker, served by a real process for the whole session."""
    with serve_broker("servicebay.examples.sandbox:broker") as served:
        yield served


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    """One platform (SQLite) for the session's CLI tests."""
    with run_platform(tmp_path_factory.mktemp("platform")) as running:
        yield running


class Bay:
    """Runs `bay ...` in-process against a platform, as a given user."""

    def __init__(self, platform: RunningPlatform, home: Path, token: str = ADMIN_TOKEN) -> None:
        self.platform = platform
        self.home = home
        self.token = token
        self.app = build_app()

    def __call__(
        self,
        *args: str,
        token: str | None = None,
        input: str | None = None,
        env: Mapping[str, str | None] | None = None,
    ) -> Result:
        """Invoke `bay ARGS`; stdout and stderr are kept apart (an ``env`` value None unsets)."""
        extra = env or {}
        variables: dict[str, str | None] = {
            "SERVICEBAY_URL": self.platform.url,
            "SERVICEBAY_TOKEN": token if token is not None else self.token,
            "SERVICEBAY_HOME": str(self.home),
            "SERVICEBAY_NAMESPACE": "default",
            "COLUMNS": "200",
            **extra,
        }
        return CliRunner().invoke(self.app, list(args), env=variables, input=input)


@pytest.fixture
def bay(platform: RunningPlatform, tmp_path: Path) -> Bay:
    """`bay` as the admin, with a private SERVICEBAY_HOME."""
    return Bay(platform, tmp_path / "home")


@pytest.fixture(scope="session")
def registered(
    platform: RunningPlatform, sandbox: ServedBroker, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """The sandbox broker registered on the session platform; returns its name."""
    bay = Bay(platform, tmp_path_factory.mktemp("home"))
    result = bay(
        "broker",
        "register",
        "sandbox",
        sandbox.url,
        "--username",
        sandbox.username,
        "--password",
        sandbox.password,
    )
    assert result.exit_code == 0, result.output
    return "sandbox"


def unique(prefix: str) -> str:
    """A fresh lowercase name, so tests sharing the platform never collide."""
    return f"{prefix}-{secrets.token_hex(3)}"
