"""``bay demo``: the whole servicebay story on one machine, on embedded defaults.

One process serves three things side by side (one event loop, one uvicorn server each):

- the **platform** (API, web page, in-process worker; SQLite in ``$SERVICEBAY_HOME``);
- the **sandbox broker** (``servicebay.examples.sandbox``), registered in the platform;
- the **RabbitMQ broker** (``servicebay.brokers.rabbitmq``), registered too when the RabbitMQ
  management API answers (``SERVICEBAY_RABBITMQ_*`` say where; the default is the local one).

It prints how to reach each, and the next commands to type. Broker passwords are generated once
and kept in ``$SERVICEBAY_HOME/demo/brokers.json`` (mode 0600); they are never printed. Ctrl-C
stops everything; a second run reuses the same state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
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
    asyncio.run(_demo(host, port, sandbox_port, rabbitmq_port, rabbitmq))


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the ``bay`` app."""
    app.command("demo")(demo)


async def _demo(host: str, port: int, sandbox_port: int, rabbit_port: int, rabbit: bool) -> None:
    from servicebay.platform import create_app as platform_app
    from servicebay.platform.settings import PlatformSettings

    settings = PlatformSettings.from_env(host=host, port=port)
    state = settings.home / "demo"
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    passwords = _passwords(state / "brokers.json")
    brokers = [_sandbox(state, sandbox_port, passwords["sandbox"])]
    if rabbit:
        rabbit_broker = await _rabbitmq(state, rabbit_port, passwords["rabbitmq"])
        if rabbit_broker is not None:
            brokers.append(rabbit_broker)
    served = [_Served("platform", port, platform_app(settings)), *brokers]
    servers = [_server(item.app, host, item.port) for item in served]
    tasks = [asyncio.create_task(server.serve()) for server in servers]
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


def _sandbox(state: Path, port: int, password: str) -> _Served:
    from servicebay.broker import BrokerSettings, create_app
    from servicebay.examples.sandbox import broker

    settings = BrokerSettings(
        username=DEMO_USER, password=password, db=f"sqlite:///{state / 'sandbox-broker.db'}"
    )
    return _Served("sandbox", port, create_app(broker, settings=settings), password)


async def _rabbitmq(state: Path, port: int, password: str) -> _Served | None:
    """The RabbitMQ broker, or None (with the reason printed) when RabbitMQ cannot be used."""
    from servicebay.broker import BrokerSettings, create_app
    from servicebay.brokers.rabbitmq import RabbitMQBroker

    broker = RabbitMQBroker()
    try:
        await broker.startup()  # the broker's own gate: management API reachable, admin accepted
    except Exception as error:  # any reason to refuse is reported, never fatal for the demo
        typer.echo(f"RabbitMQ broker not served: {error}", err=True)
        return None
    finally:
        await broker.shutdown()
    settings = BrokerSettings(
        username=DEMO_USER, password=password, db=f"sqlite:///{state / 'rabbitmq-broker.db'}"
    )
    return _Served("rabbitmq", port, create_app(RabbitMQBroker(), settings=settings), password)


def _server(app: Any, host: str, port: int) -> Any:
    import uvicorn

    class _Server(uvicorn.Server):
        # The demo owns the signals: one Ctrl-C stops every server, not just the last one started.
        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            yield

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
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
            typer.echo("servicebay demo: a server failed to start (port in use?)", err=True)
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
