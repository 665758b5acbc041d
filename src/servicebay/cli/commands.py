"""The platform-facing ``bay`` commands, registered onto the main app in one call.

``servicebay.cli.main`` calls :func:`register_all` for the top-level commands and
``brokers.register_commands`` for ``bay broker register|list|refresh|remove``.
"""

from __future__ import annotations

import typer

from servicebay.cli import (
    bindings,
    brokers,
    instances,
    keys,
    login,
    marketplace,
    namespaces,
    run,
)


def register_all(app: typer.Typer) -> None:
    """Add login/logout, namespace, marketplace, instance, binding, key and run commands."""
    for module in (login, namespaces, marketplace, instances, bindings, keys, run):
        module.register(app)


def build_app(broker_group: typer.Typer | None = None) -> typer.Typer:
    """A ``bay``-like app with every command of this package (used by tests and docs).

    ``broker_group`` is the ``bay broker`` group to extend; a fresh one is made if not given.
    """
    app = typer.Typer(name="bay", no_args_is_help=True, add_completion=False)
    register_all(app)
    group = broker_group or typer.Typer(name="broker", help="Brokers.", no_args_is_help=True)
    brokers.register_commands(group)
    app.add_typer(group, name="broker")
    return app


if __name__ == "__main__":
    # `python -m servicebay.cli.commands ...`: these commands alone, without the rest of `bay`.
    build_app()()
