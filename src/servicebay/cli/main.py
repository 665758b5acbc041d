"""The `bay` command: one Typer app, one sub-app per command group.

Each command group lives in its own module and is registered here; errors become exit codes
in one place (``servicebay.cli.output``).
"""

from __future__ import annotations

import typer

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


def main() -> None:
    """Entry point of the `bay` console script."""
    app()


if __name__ == "__main__":
    main()
