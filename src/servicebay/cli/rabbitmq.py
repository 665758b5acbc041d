"""`bay rabbitmq`: check and serve the RabbitMQ broker with its settings as flags.

The broker reads ``SERVICEBAY_RABBITMQ_*`` (``RabbitMQBrokerSettings``); these commands accept the
same settings as flags, which win over the environment. The admin password stays an environment
variable only (``SERVICEBAY_RABBITMQ_MANAGEMENT_PASSWORD``): flags show in ``ps``.

Registered by the lead as the ``rabbitmq`` sub-app of ``bay``; runnable alone as
``python -m servicebay.cli.rabbitmq``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from servicebay.brokers.rabbitmq import RabbitMQBrokerSettings

# The broker package (the SDK, its store, the management client) is imported by the commands
# that use it, not with `bay`: every other command would pay for it at start-up.

app = typer.Typer(name="rabbitmq", help="The RabbitMQ broker.", no_args_is_help=True)

TARGET = "servicebay.brokers.rabbitmq:broker"

ManagementUrl = Annotated[
    str | None, typer.Option(help="Management API URL (env SERVICEBAY_RABBITMQ_MANAGEMENT_URL).")
]
ManagementUser = Annotated[
    str | None, typer.Option(help="Admin user, tagged administrator (env …_MANAGEMENT_USERNAME).")
]
AmqpHost = Annotated[str | None, typer.Option(help="AMQP host handed out (env …_AMQP_HOST).")]
AmqpPort = Annotated[int | None, typer.Option(help="AMQP port handed out (env …_AMQP_PORT).")]
Amqps = Annotated[
    bool | None, typer.Option("--amqps/--no-amqps", help="Hand out amqps:// (env …_AMQPS).")
]
AmqpCaFile = Annotated[
    Path | None, typer.Option(help="PEM CA chain handed out for amqps (env …_AMQP_CA_FILE).")
]
PublicManagementUrl = Annotated[
    str | None,
    typer.Option(help="Management URL handed out to apps (env …_PUBLIC_MANAGEMENT_URL)."),
]
Prefix = Annotated[
    str | None, typer.Option(help="Prefix of created vhosts and users (env …_PREFIX).")
]


@app.callback()
def _rabbitmq() -> None:
    """The RabbitMQ broker."""


def _settings(**flags: Any) -> RabbitMQBrokerSettings:
    from servicebay.brokers.rabbitmq import ConfigurationError, RabbitMQBrokerSettings

    try:
        return RabbitMQBrokerSettings.from_env(**flags)
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def check(
    management_url: ManagementUrl = None,
    management_username: ManagementUser = None,
    prefix: Prefix = None,
) -> None:
    """Check that the broker can administer RabbitMQ with these settings, and show them.

    Example: bay rabbitmq check --management-url http://127.0.0.1:15672
    """
    from servicebay.brokers.rabbitmq import ConfigurationError, check_management_access

    settings = _settings(
        management_url=management_url, management_username=management_username, prefix=prefix
    )

    async def probe() -> str:
        async with settings.management_api() as api:
            return await check_management_access(settings, api)

    try:
        version = asyncio.run(probe())
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for key, value in settings.describe().items():
        typer.echo(f"{key}: {value}")
    typer.echo(f"ok: RabbitMQ {version} answers to {settings.management_username!r}")


@app.command()
def serve(
    management_url: ManagementUrl = None,
    management_username: ManagementUser = None,
    amqp_host: AmqpHost = None,
    amqp_port: AmqpPort = None,
    amqps: Amqps = None,
    amqp_ca_file: AmqpCaFile = None,
    public_management_url: PublicManagementUrl = None,
    prefix: Prefix = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port of the OSB API.")] = 8080,
    username: Annotated[
        str | None, typer.Option(help="Basic auth user (env SERVICEBAY_BROKER_USERNAME).")
    ] = None,
    db: Annotated[str | None, typer.Option(help="Store URL (env SERVICEBAY_BROKER_DB).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    log_level: Annotated[str | None, typer.Option(help="Log level.")] = None,
) -> None:
    """Serve the RabbitMQ broker (`bay broker serve servicebay.brokers.rabbitmq:broker` with
    the broker's settings as flags). The OSB password: SERVICEBAY_BROKER_PASSWORD.

    Example: bay rabbitmq serve --amqp-host mq.example.org --port 9090 --username platform
    """
    flags = {
        "management_url": management_url,
        "management_username": management_username,
        "amqp_host": amqp_host,
        "amqp_port": amqp_port,
        "amqps": amqps,
        "amqp_ca_file": amqp_ca_file,
        "public_management_url": public_management_url,
        "prefix": prefix,
    }
    from servicebay.brokers.rabbitmq import ENV_PREFIX

    _settings(**flags)  # refuse bad values before anything starts
    # The broker (in every worker process) reads its settings from the environment.
    for name, value in flags.items():
        if value is not None:
            os.environ[ENV_PREFIX + name.upper()] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
    from servicebay.cli import broker

    broker.serve(
        TARGET,
        host=host,
        port=port,
        username=username,
        password=None,
        bearer_token=None,
        db=db,
        workers=workers,
        log_level=log_level,
    )


if __name__ == "__main__":
    app()
