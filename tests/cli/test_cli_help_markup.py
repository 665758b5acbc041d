"""Help survives Rich: `bay --help` reads help as Rich markup, where `[...]` vanishes."""

from __future__ import annotations

import typer
from rich.text import Text

from servicebay.cli._reference import _walk
from servicebay.cli.main import app as main_app


def test_no_help_text_is_eaten_by_rich_markup() -> None:
    """Every command and option help renders to exactly its own words in the terminal."""
    eaten: list[str] = []
    root = typer.main.get_command(main_app)
    for path, command in _walk(root, ["bay"]):
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        for text in texts:
            if Text.from_markup(text).plain != text:
                eaten.append(f"{' '.join(path)}: {text!r}")
    assert not eaten, "help text that Rich would swallow ([...] is markup):\n" + "\n".join(eaten)
