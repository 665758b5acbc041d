"""``bay demo``: the whole servicebay story on one machine, on embedded defaults.

One process serves three things side by side (one event loop, one uvicorn server each):

- the **platform** (API, web page, in-process worker; SQLite in ``$SERVICEBAY_HOME``);
- the **sandbox broker** (``servicebay.examples.sandbox``), registered in the platform;
- the **RabbitMQ broker** (``servicebay.brokers.rabbitmq``), registered too when the RabbitMQ
  management API answers (``SERVICEBAY_RABBITMQ_*`` say where; the default is the local one).

It prints how to reach each, and the next commands to type. Broker passwords are generated once
and kept in ``$SERVICEBAY_HOME/demo/brokers.json`` (mode 0600); they are never printed. Ctrl-C
stops everything; a second run reuses the same state.

The ports are taken first, before any store is opened: a port in use (most often by another
``bay demo``) is one line on stderr and exit code 2, with nothing started.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import secrets
import signal
import socket
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

DEMO_USER = "demo"


@dataclass(frozen=True)
class _Served:
    """One ASGI app the demo serves, and how the platform knows it."""

    name: str
    port: int
    app: Any
    sock: socket.socket
    password: str | None = None


def demo(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the platform.")] = 8470,
    sandbox_port: Annotated[int, typer.Option(help="Port of the sandbox broker.")] = 8471,
    rabbitmq_port: Annotated[int, typer.Option(help="Port of the RabbitMQ broker.")] = 8472,
    rabbitmq: Annotated[
        bool, typer.Option("--rabbitmq/--no-rabbitmq", help="Serve the RabbitMQ broker too.")
    ] = True,
) -> None:
    """Serve the platform with the sandbox (and RabbitMQ) broker registered; print how to use it.

    Example: bay demo
    """
    wanted = {"--port": port, "--sandbox-port": sandbox_port}
    if rabbitmq:
        wanted["--rabbitmq-port"] = rabbitmq_port
    sockets = _listen(host, wanted)
    try:
        asyncio.run(_demo(host, sockets, rabbitmq))
    finally:
        for sock in sockets.values():
            sock.close()


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the ``bay`` app."""
    app.command("demo")(demo)


def _listen(host: str, ports: dict[str, int]) -> dict[str, socket.socket]:
    """A listening socket per flag, or one line on stderr and exit 2 if a port cannot be had."""
    taken: dict[str, socket.socket] = {}
    for flag, port in ports.items():
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(2048)
        except OSError as error:
            sock.close()
            for other in taken.values():
                other.close()
            if error.errno == errno.EADDRINUSE:
                message = f"port {port} is in use (another bay demo?): stop it or choose {flag}"
            else:
                message = f"cannot listen on {host}:{port} ({flag}): {error.strerror}"
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(2) from None
        taken[flag] = sock
    return taken


async def _demo(host: str, sockets: dict[str, socket.socket], rabbit: bool) -> None:
    from servicebay.platform import create_app as platform_app
    from servicebay.platform.settings import PlatformSettings

    port = sockets["--port"].getsockname()[1]
    settings = PlatformSettings.from_env(host=host, port=port)
    state = settings.home / "demo"
    # The home first: a parent made by mkdir(parents=True) gets the umask's mode (0777 at worst).
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    state.mkdir(exist_ok=True, mode=0o700)
    passwords = _passwords(state / "brokers.json")
    brokers = [_sandbox(state, sockets["--sandbox-port"], passwords["sandbox"])]
    if rabbit:
        rabbit_broker = await _rabbitmq(state, sockets["--rabbitmq-port"], passwords["rabbitmq"])
        if rabbit_broker is not None:
            brokers.append(rabbit_broker)
        else:  # refuse connections there rather than leave them waiting
            sockets["--rabbitmq-port"].close()
    served = [_Served("platform", port, platform_app(settings), sockets["--port"]), *brokers]
    servers = [_server(item.app) for item in served]
    tasks = [
        asyncio.create_task(server.serve(sockets=[item.sock]))
        for server, item in zip(servers, served, strict=True)
    ]
    with _stop_on_signal(servers):
        if await _all_started(servers, tasks):
            await _register(settings, host, brokers)
            _announce(settings.home, host, port, brokers)
        await asyncio.gather(*tasks)


def _passwords(path: Path) -> dict[str, str]:
    """The brokers' demo passwords: made once with ``secrets``, kept 0600, never printed."""
    if path.exists():
        stored: dict[str, str] = json.loads(path.read_text())
        if {"sandbox", "rabbitmq"} <= stored.keys():
            return stored
    fresh = {name: secrets.token_urlsafe(24) for name in ("sandbox", "rabbitmq")}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(fresh, file)
    return fresh


def _sandbox(state: Path, sock: socket.socket, password: str) -> _Served:
    from servicebay.broker import BrokerSettings, create_app
    from servicebay.examples.sandbox import broker

    settings = BrokerSettings(
        username=DEMO_USER, password=password, db=f"sqlite:///{state / 'sandbox-broker.db'}"
    )
    app = create_app(broker, settings=settings)
    return _Served("sandbox", sock.getsockname()[1], app, sock, password)


async def _rabbitmq(state: Path, sock: socket.socket, password: str) -> _Served | None:
    """The RabbitMQ broker, or None (with the reason printed) when RabbitMQ cannot be used."""
    from servicebay.broker import BrokerSettings, create_app
    from servicebay.brokers.rabbitmq import (
        RabbitMQBroker,
        RabbitMQBrokerSettings,
        check_management_access,
    )

    # The same gate as the broker's startup, without running that startup twice (it logs
    # "rabbitmq broker ready" each time): management API reachable, admin accepted.
    try:
        rabbit = RabbitMQBrokerSettings.from_env()
        async with rabbit.management_api() as api:
            await check_management_access(rabbit, api)
    except Exception as error:  # any reason to refuse is reported, never fatal for the demo
        typer.echo(f"RabbitMQ broker not served: {error}", err=True)
        return None
    settings = BrokerSettings(
        username=DEMO_USER, password=password, db=f"sqlite:///{state / 'rabbitmq-broker.db'}"
    )
    app = create_app(RabbitMQBroker(rabbit), settings=settings)
    return _Served("rabbitmq", sock.getsockname()[1], app, sock, password)


def _server(app: Any) -> Any:
    import uvicorn

    class _Server(uvicorn.Server):
        # The demo owns the signals: one Ctrl-C stops every server, not just the last one started.
        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            yield

    # The demo hands each server its already-listening socket (see _listen).
    # proxy_headers off: the client's address is the socket's (the servers throttle failed
    # authentication per address; a forwarded header must not pick a new one per request).
    config = uvicorn.Config(app, log_level="warning", access_log=False, proxy_headers=False)
    return _Server(config)


@contextlib.contextmanager
def _stop_on_signal(servers: list[Any]) -> Generator[None, None, None]:
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _all_started(servers: list[Any], tasks: list[asyncio.Task[None]]) -> bool:
    """Wait until every server listens; if one fails to start, stop the others."""
    while not all(server.started for server in servers):
        if any(task.done() for task in tasks):
            typer.echo("servicebay demo: a server failed to start (see the log above)", err=True)
            for server in servers:
                server.should_exit = True
            return False
        await asyncio.sleep(0.05)
    return True


async def _register(settings: Any, host: str, brokers: list[_Served]) -> None:
    """Register each broker in the platform, or refresh its catalog if it is already there."""
    from servicebay.cli._api import PlatformAPI, PlatformError
    from servicebay.cli._config import local_platform_token

    token = next(iter(settings.tokens)) if settings.tokens else local_platform_token()
    async with PlatformAPI(f"http://{host}:{settings.port}", token) as api:
        known = {broker["name"] for broker in await api.brokers()}
        for broker in brokers:
            try:
                if broker.name in known:
                    await api.refresh_broker(broker.name)
                else:
                    await api.register_broker(
                        broker.name,
                        f"http://{host}:{broker.port}",
                        username=DEMO_USER,
                        password=broker.password,
                    )
            except PlatformError as error:
                typer.echo(f"could not register broker {broker.name}: {error}", err=True)


def _announce(home: Path, host: str, port: int, brokers: list[_Served]) -> None:
    lines = [
        "",
        f"{'platform':<22} http://{host}:{port}   (web page; token in {home}/platform.token)",
    ]
    lines += [
        f"{b.name + ' broker':<22} http://{host}:{b.port}   (user {DEMO_USER}, password in "
        f"{home}/demo/brokers.json)"
        for b in brokers
    ]
    lines += [
        "",
        "In another terminal:",
        "  bay login",
        "  bay marketplace",
        "  bay provision sandbox my-db --plan sync -p size=3",
        "  bay bind my-db --app my-app",
        "  bay run --app my-app -- python -c "
        "\"from servicebay import bindings; print(bindings.find(type='sandbox').name)\"",
    ]
    if any(b.name == "rabbitmq" for b in brokers):
        lines += [
            "  bay provision rabbitmq chat-mq --plan standard",
            "  bay bind chat-mq --app chat",
            "  bay run --app chat -- bay chat serve --store rabbitmq",
        ]
    lines += ["", "Ctrl-C stops the demo; state stays in " + str(home), ""]
    typer.echo("\n".join(lines))
