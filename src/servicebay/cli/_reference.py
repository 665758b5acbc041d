"""Generate ``docs/cli.md``, the ``bay`` command reference, from the commands themselves.

``python -m servicebay.cli._reference`` rewrites the file; ``--check`` exits 1 when it is stale
(a test runs the same comparison), so the reference can never drift from the code.
"""

from __future__ import annotations

import argparse
import enum
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

DEFAULT_PATH = Path("docs/cli.md")
_HEADER = """\
# `bay` command reference

Generated from the code by `python -m servicebay.cli._reference`; do not edit by hand.
Every command also answers `--help`. Platform commands find their platform through
`SERVICEBAY_URL` / `SERVICEBAY_TOKEN`, else `$SERVICEBAY_HOME/cli.json` (written by `bay login`),
else the local `$SERVICEBAY_HOME/platform.token`.
"""


def render(app: typer.Typer | None = None) -> str:
    """Return the Markdown reference of ``app`` (default: the real ``bay``)."""
    if app is None:
        from servicebay.cli.main import app as main_app

        app = main_app
    root = typer.main.get_command(app)
    parts = [_HEADER, _exit_codes()]
    for path, command in _walk(root, ["bay"]):
        parts.append(_command(path, command))
    return "\n".join(parts).rstrip() + "\n"


# Typer builds on its own copy of click; its objects are used through their click interface.
Command = Any


def _walk(command: Command, path: list[str]) -> Iterator[tuple[list[str], Command]]:
    """Every visible command, depth first, in registration order."""
    if hasattr(command, "list_commands"):
        ctx = typer.Context(command, info_name=" ".join(path))
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            yield from _walk(sub, [*path, name])
    else:
        yield path, command


def _command(path: list[str], command: Command) -> str:
    """One section: heading, help text (with its Example), usage, arguments and options."""
    ctx = typer.Context(command, info_name=" ".join(path))
    usage = " ".join([*path, *_usage_pieces(command, ctx)])
    lines = [f"## {' '.join(path)}", "", _dedent(command.help or ""), "", f"Usage: `{usage}`", ""]
    rows = [_param_row(param) for param in command.get_params(ctx) if _documented(param)]
    if rows:
        lines += ["| Argument / option | Type | Default | Description |", "|---|---|---|---|"]
        lines += rows
        lines.append("")
    return "\n".join(lines)


def _usage_pieces(command: Command, ctx: Any) -> list[str]:
    """``[OPTIONS] SERVICE NAME``, ``COMMAND...``: the usage line in the usual notation."""
    pieces = ["[OPTIONS]"]
    if hasattr(command, "list_commands"):
        return [*pieces, "COMMAND [ARGS]..."]
    for param in command.get_params(ctx):
        if param.param_type_name != "argument":
            continue
        text = (param.name or "").upper()
        if param.nargs == -1 or param.multiple:
            text += "..."
        pieces.append(text if param.required else f"[{text}]")
    return pieces


def _documented(param: Any) -> bool:
    """Everything but ``--help`` and completion switches."""
    names = set(param.opts)
    return not names & {"--help", "--install-completion", "--show-completion"}


def _param_row(param: Any) -> str:
    """A table row: names, type, default, help (and the environment variable, if any)."""
    is_option = param.param_type_name == "option"
    if is_option:
        names = ", ".join(f"`{name}`" for name in param.opts + param.secondary_opts)
        text = param.help or ""
    else:
        names = f"`{(param.name or '').upper()}`"
        text = getattr(param, "help", None) or ""
    if param.required:
        text = f"{text} (required)".strip()
    envvar = getattr(param, "envvar", None)
    if envvar:
        text += f" Env: `{envvar}`."
    kind = "flag" if is_option and param.is_flag else _type_name(param.type_descriptor.annotation)
    if getattr(param, "multiple", False) or param.nargs == -1:
        kind += " (repeatable)"
    default = param.default
    shown = "" if default in (None, False, ()) or callable(default) else f"`{_value(default)}`"
    return f"| {names} | {_cell(kind)} | {_cell(shown)} | {_cell(text)} |"


def _type_name(annotation: Any) -> str:
    """``text``, ``integer``, ``path``, ``table|json|yaml``… from a parameter's annotation."""
    args = typing.get_args(annotation)
    if args:  # list[str], str | None: describe the element type
        return _type_name(next(arg for arg in args if arg is not type(None)))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "|".join(str(member.value) for member in annotation)
    names = {str: "text", int: "integer", float: "number", bool: "boolean", Path: "path"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _value(value: object) -> str:
    """A default as a user would type it (enums by value)."""
    return str(getattr(value, "value", value))


def _cell(text: str) -> str:
    """Make text safe for one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _dedent(text: str) -> str:
    """Docstring body without its indentation; ``Example:`` lines become code."""
    import inspect

    lines = []
    for line in inspect.cleandoc(text).splitlines():
        if line.startswith("Example: "):
            line = f"Example: `{line.removeprefix('Example: ')}`"
        lines.append(line)
    return "\n".join(lines)


def _exit_codes() -> str:
    """The exit-code table, taken from the one module that assigns them."""
    from servicebay.cli import output

    doc = output.__doc__ or ""
    table = doc[doc.index("====") : doc.rindex("====") + 4]
    rows = [line for line in table.splitlines() if line and not line.startswith("====")]
    body = ["## Exit codes", "", "| Code | Meaning |", "|---|---|"]
    for row in rows[1:]:  # the first row is the header
        code, _, meaning = row.partition(" ")
        body.append(f"| {code} | {_cell(meaning)} |")
    body.append("")
    body.append("`bay run` exits with its command's exit code (127: command not found).")
    body.append("")
    return "\n".join(body)


def main(argv: list[str] | None = None) -> int:
    """Write the reference (or, with ``--check``, report whether it is up to date)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.path.read_text() if args.path.exists() else ""
        if current != text:
            sys.stderr.write(f"{args.path} is stale: run python -m servicebay.cli._reference\n")
            return 1
        return 0
    args.path.parent.mkdir(parents=True, exist_ok=True)
    args.path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
