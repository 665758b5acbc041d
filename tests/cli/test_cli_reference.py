"""The generated CLI reference matches the code, and every command shows an example."""

from __future__ import annotations

from pathlib import Path

import typer

from servicebay.cli._reference import _walk, render
from servicebay.cli.commands import build_app
from servicebay.cli.main import app as main_app

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_docs_cli_md_is_up_to_date() -> None:
    """docs/cli.md equals what `python -m servicebay.cli._reference` generates now."""
    assert REFERENCE.read_text() == render(), (
        "docs/cli.md is stale: run `python -m servicebay.cli._reference` and commit it"
    )


def test_every_command_has_an_example() -> None:
    """Each command's docstring carries an `Example:` line (bay and this package's commands)."""
    for app in (main_app, build_app()):
        root = typer.main.get_command(app)
        for path, command in _walk(root, ["bay"]):
            assert "Example:" in (command.help or ""), f"{' '.join(path)} lacks Example:"


def test_reference_documents_exit_codes_and_options() -> None:
    """The reference lists the exit codes and each option of a platform command."""
    text = render(build_app())
    assert "| 8 | the platform accepted the work but the operation failed" in text
    assert "## bay provision" in text
    assert "`--dry-run`" in text
    assert "Usage: `bay run [OPTIONS] COMMAND...`" in text
