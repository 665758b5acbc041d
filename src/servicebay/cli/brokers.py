"""``bay broker register|list|refresh|remove``: the brokers a platform drives.

These commands sit on the ``bay broker`` group next to ``serve`` and ``check`` (which run and
test a broker). Broker credentials go to the platform once and are never shown again.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from servicebay.cli import _config
from servicebay.cli._api import Broker
from servicebay.cli.output import (
    OutputFormat,
    OutputOption,
    details,
    emit,
    note,
    run,
    table,
)

BrokerName = Annotated[str, typer.Argument(help="Name of the broker on the platform.")]


def register_broker(
    name: BrokerName,
    url: Annotated[str, typer.Argument(help="Base URL of the broker (without /v2).")],
    username: Annotated[
        str | None, typer.Option(envvar="SERVICEBAY_BROKER_USERNAME", help="Basic auth user.")
    ] = None,
    password: Annotated[
        str | None,
        typer.Option(
            envvar="SERVICEBAY_BROKER_PASSWORD",
            help="Basic auth password (prefer the environment variable to the flag).",
        ),
    ] = None,
    bearer_token: Annotated[
        str | None,
        typer.Option(envvar="SERVICEBAY_BROKER_BEARER_TOKEN", help="Bearer token instead."),
    ] = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Register a broker: the platform fetches, validates and stores its catalog.

    Example: bay broker register sandbox http://127.0.0.1:9000 --username admin
    """
    if username is not None and password is None:
        password = typer.prompt("Broker password", hide_input=True)
    run(_register(name, url, username, password, bearer_token, output))


async def _register(
    name: str,
    url: str,
    username: str | None,
    password: str | None,
    bearer_token: str | None,
    output: OutputFormat,
) -> None:
    async with _config.connect() as api:
        broker = await api.register_broker(
            name, url, username=username, password=password, bearer_token=bearer_token
        )
    emit(broker, output, _broker_details(broker))
    note(f"registered broker {name}: services {', '.join(broker['services']) or 'none'}")


def list_brokers(output: OutputOption = OutputFormat.table) -> None:
    """List registered brokers.

    Example: bay broker list -o json
    """
    run(_list(output))


async def _list(output: OutputFormat) -> None:
    async with _config.connect() as api:
        brokers = await api.brokers()
    rows = [
        (b["name"], b["url"], b["auth"], ", ".join(b["services"]), b.get("catalog_fetched_at"))
        for b in brokers
    ]
    emit(brokers, output, table(["NAME", "URL", "AUTH", "SERVICES", "CATALOG FETCHED"], rows))


def refresh_broker(name: BrokerName, output: OutputOption = OutputFormat.table) -> None:
    """Fetch a broker's catalog again and show what changed.

    Example: bay broker refresh sandbox
    """
    run(_refresh(name, output))


async def _refresh(name: str, output: OutputFormat) -> None:
    async with _config.connect() as api:
        result = await api.refresh_broker(name)
    changes = result.get("changes") or {}
    rows = [
        (change, plan)
        for change in ("added", "removed", "updated")
        for plan in changes.get(change, [])
    ]
    emit(result, output, table(["CHANGE", "SERVICE/PLAN"], rows, title=f"broker {name}"))
    if not rows:
        note(f"broker {name}: catalog unchanged")


def remove_broker(name: BrokerName) -> None:
    """Unregister a broker that no longer has instances.

    Example: bay broker remove sandbox
    """
    run(_remove(name))


async def _remove(name: str) -> None:
    async with _config.connect() as api:
        await api.remove_broker(name)
    note(f"removed broker {name}")


def _broker_details(broker: Broker) -> Table:
    return details(
        [
            ("name", broker["name"]),
            ("url", broker["url"]),
            ("auth", broker["auth"]),
            ("services", ", ".join(broker["services"])),
            ("catalog fetched", broker.get("catalog_fetched_at")),
        ]
    )


def register_commands(group: typer.Typer) -> None:
    """Add ``register``, ``list``, ``refresh`` and ``remove`` to the ``bay broker`` group."""
    group.command("register")(register_broker)
    group.command("list")(list_brokers)
    group.command("refresh")(refresh_broker)
    group.command("remove")(remove_broker)
