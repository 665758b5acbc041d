"""The `bay` command: one Typer app, one module per command group.

Each command group lives in its own module and registers itself here; errors become exit codes in
one place (``servicebay.cli.output``). The groups:

- platform use (``login``, ``marketplace``, ``provision`` … ``run``, ``key``): ``commands``;
- ``bay broker``: ``serve`` and ``check`` for SDK brokers, ``register|list|refresh|remove`` for the
  platform's broker registry;
- ``bay server`` / ``bay worker``: the platform itself;
- ``bay chat``: the chat service; ``bay rabbitmq``: check and serve the RabbitMQ broker;
- ``bay demo``: the whole story on embedded defaults.
"""

from __future__ import annotations

import typer

from servicebay.cli import broker, broker_check, brokers, chat, commands, demo, rabbitmq, server

app = typer.Typer(
    name="bay",
    help="servicebay: the Open Service Broker platform for Python.",
    no_args_is_help=True,
    add_completion=True,
)


@app.callback()
def _root() -> None:
    """servicebay: the Open Service Broker platform for Python."""


@app.command()
def version() -> None:
    """Print the servicebay version.

    Example: bay version
    """
    from servicebay import __version__

    typer.echo(__version__)


commands.register_all(app)
server.register(app)
demo.register(app)
broker_check.register(broker.app)
brokers.register_commands(broker.app)
app.add_typer(broker.app, name="broker")
app.add_typer(chat.app, name="chat")
app.add_typer(rabbitmq.app, name="rabbitmq")


def main() -> None:
    """Entry point of the `bay` console script."""
    app()


if __name__ == "__main__":
    main()
