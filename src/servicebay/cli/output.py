"""Everything the CLI shows, and the one place errors become exit codes.

Data goes to stdout as a table (rich), JSON or YAML (``-o``); progress and errors go to stderr,
so ``bay instances -o json | jq`` always sees clean JSON. :func:`run` executes a command's
coroutine and maps every expected failure to a one-line ``error: ...`` and an exit code:

====  ============================================================================
code  meaning
====  ============================================================================
0     success
1     aborted by the user, or a bug (type shown; SERVICEBAY_DEBUG=1 shows the traceback)
2     bad input: invalid parameters (checked before sending), bad request, bad file
3     not logged in, unauthorized or forbidden (token missing, unknown, not allowed)
4     not found (broker, service, plan, namespace, instance, binding, operation)
5     conflict: name taken, still in use, another operation in progress, changed meanwhile
7     refused by rule: not bindable, not updateable, quota exceeded, invalid catalog
8     the platform accepted the work but the operation failed (reason shown)
10    internal error on the platform
11    the platform cannot be reached
12    the platform did not answer in time
13    the platform could not reach the broker, or the broker answered an error
130   interrupted (Ctrl-C); accepted work goes on on the platform
====  ============================================================================

``bay run`` exits with its command's exit code.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeGuard, TypeVar

import typer
import yaml
from rich.console import Console, RenderableType
from rich.table import Table

from servicebay.bindings import BindingError
from servicebay.cli._api import Operation, PlatformAPI, PlatformError
from servicebay.cli._config import NotLoggedIn, default_namespace

if TYPE_CHECKING:
    from servicebay.osb import OSBError

T = TypeVar("T")

TERMINAL_STATES = frozenset({"succeeded", "failed"})
# How long one long-poll of an operation may wait on the platform (its limit is 60 s).
_POLL_WAIT = 5


class OutputFormat(StrEnum):
    """How data is printed: a table for people, JSON or YAML for programs."""

    table = "table"
    json = "json"
    yaml = "yaml"


OutputOption = Annotated[
    OutputFormat,
    typer.Option("--output", "-o", help="Output format.", case_sensitive=False),
]


def _stored_namespace(ctx: typer.Context, param: typer.CallbackParam, value: str) -> str:
    """Neither ``-n`` nor ``SERVICEBAY_NAMESPACE`` given: the namespace ``bay login`` stored."""
    source = ctx.get_parameter_source(param.name or "")
    return default_namespace() if source is not None and source.name == "DEFAULT" else value


NAMESPACE_HELP = (
    "Namespace to work in (default: SERVICEBAY_NAMESPACE, else the one `bay login --namespace` "
    "stored, else default)."
)
NamespaceOption = Annotated[
    str,
    typer.Option(
        "--namespace",
        "-n",
        envvar="SERVICEBAY_NAMESPACE",
        callback=_stored_namespace,
        help=NAMESPACE_HELP,
    ),
]
# List commands (instances, bindings, key list) also take '*', every namespace.
AnyNamespaceOption = Annotated[
    str,
    typer.Option(
        "--namespace",
        "-n",
        envvar="SERVICEBAY_NAMESPACE",
        callback=_stored_namespace,
        help=NAMESPACE_HELP.replace("Namespace to work in", "Namespace, or * for all"),
    ),
]
NoWaitOption = Annotated[
    bool,
    typer.Option("--no-wait", help="Return once the platform accepted the work; do not follow it."),
]


class CLIError(Exception):
    """A failure found by the CLI itself, with the exit code it deserves."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class OperationFailed(Exception):
    """Accepted work that ended in state ``failed``."""

    def __init__(self, what: str, operation: Operation) -> None:
        reason = operation.get("description") or "no reason given"
        super().__init__(f"{what} {state_text('failed', reason)}")
        self.operation = operation


# The platform's stable error codes (PLATFORM_API "Errors") → exit codes; status as fallback.
_CODE_EXITS = {"invalid_parameters": 2, "payload_too_large": 2, "timeout": 12, "unreachable": 11}
_STATUS_EXITS = {400: 2, 401: 3, 403: 3, 404: 4, 405: 2, 409: 5, 412: 5, 413: 2, 422: 7, 502: 13}


def exit_code_for(error: BaseException) -> int:
    """Return the exit code for an error (see the module docstring's table)."""
    if isinstance(error, PlatformError):
        if error.code in _CODE_EXITS:
            return _CODE_EXITS[error.code]
        return _STATUS_EXITS.get(error.status, 10 if error.status >= 500 else 1)
    if isinstance(error, CLIError):
        return error.exit_code
    if _is_osb_error(error):
        # Protocol errors (e.g. InvalidParameters from the client-side check) carry their own.
        return error.exit_code
    if isinstance(error, NotLoggedIn):
        return 3
    if isinstance(error, OperationFailed):
        return 8
    if isinstance(error, BindingError | OSError | ValueError):
        return 2
    return 1


def one_line(error: BaseException) -> str:
    """Return the error's message on one line (problems of invalid parameters joined)."""
    if isinstance(error, PlatformError) and error.problems:
        text = "invalid parameters: " + "; ".join(
            str(problem.get("message", problem)) for problem in error.problems
        )
    elif _is_osb_error(error):
        problems = getattr(error, "problems", None)  # InvalidParameters lists each one
        if problems:
            text = "invalid parameters: " + "; ".join(p.message for p in problems)
        else:
            text = error.description
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def _is_osb_error(error: BaseException) -> TypeGuard[OSBError]:
    """Whether ``error`` is a servicebay.osb error, without importing the protocol package.

    It is loaded only by commands that validate parameters; if it is not loaded, no error of
    its kind can have been raised.
    """
    osb = sys.modules.get("servicebay.osb")
    return osb is not None and isinstance(error, osb.OSBError)


def run(work: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; turn any failure into ``error: ...`` and an exit code."""
    try:
        return asyncio.run(work)
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        stderr().print("interrupted: work already accepted continues on the platform")
        raise typer.Exit(130) from None
    except typer.Abort:
        # A question got no answer (end of input): nothing was done.
        stderr().print("error: aborted: no answer given; nothing was changed", markup=False)
        raise typer.Exit(1) from None
    except Exception as error:
        code = exit_code_for(error)
        expected = isinstance(error, CLIError)
        if code == 1 and not expected and os.environ.get("SERVICEBAY_DEBUG"):
            raise  # a bug: show the whole traceback when asked to
        bug = code == 1 and not expected
        message = f"{type(error).__name__}: {one_line(error)}" if bug else one_line(error)
        # soft_wrap: the reason stays on one line even on a narrow or non-terminal stderr.
        stderr().print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code) from None


def fail(message: str, exit_code: int = 2) -> NoReturn:
    """Stop the command with ``message`` and ``exit_code``."""
    raise CLIError(message, exit_code)


# -- consoles ---------------------------------------------------------------------------------


def stdout() -> Console:
    """The console for data; wide when not a terminal, so pipes get whole values."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=240, no_color=True)
    return console


def stderr() -> Console:
    """The console for progress and errors."""
    return Console(stderr=True, highlight=False)


# -- data -------------------------------------------------------------------------------------


def emit(data: Any, fmt: OutputFormat, table: RenderableType | None = None) -> None:
    """Print ``data`` as JSON/YAML, or ``table`` (falling back to JSON if there is none)."""
    if fmt is OutputFormat.json or (fmt is OutputFormat.table and table is None):
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    elif fmt is OutputFormat.yaml:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    else:
        stdout().print(table)


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> Table:
    """Build a plain table; ``None`` cells show as ``-``."""
    result = Table(*columns, title=title, title_justify="left", box=None, pad_edge=False)
    for row in rows:
        result.add_row(*(cell_text(cell) for cell in row))
    return result


def details(pairs: Iterable[tuple[str, Any]], title: str | None = None) -> Table:
    """Build a two-column ``field  value`` table for one object."""
    result = Table(show_header=False, title=title, title_justify="left", box=None, pad_edge=False)
    result.add_column(style="bold")
    result.add_column()
    for key, value in pairs:
        result.add_row(key, cell_text(value))
    return result


def cell_text(value: Any) -> str:
    """Render one value for a table cell: dicts and lists as compact JSON."""
    if value is None:
        return "-"
    if isinstance(value, Mapping | list):
        return json.dumps(value, separators=(", ", ": "))
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def note(message: str) -> None:
    """Print a human note on stderr (never data)."""
    stderr().print(message, markup=False, highlight=False, soft_wrap=True)


# -- progress ---------------------------------------------------------------------------------


async def follow(
    api: PlatformAPI, operation: Operation, *, what: str, no_wait: bool = False
) -> Operation:
    """Follow an accepted operation until it ends, showing its progress on stderr.

    With ``no_wait`` return at once. Raises :class:`OperationFailed` if it ends ``failed``.
    """
    if no_wait or operation["state"] in TERMINAL_STATES:
        return _finished(operation, what, no_wait=no_wait)
    console = stderr()
    if console.is_terminal:
        with console.status(_progress_text(what, operation)) as status:
            while operation["state"] not in TERMINAL_STATES:
                operation = await api.operation(operation["id"], wait=_POLL_WAIT)
                status.update(_progress_text(what, operation))
        # The spinner vanishes when done; leave the outcome on screen.
        console.print(_progress_text(what, operation), markup=False, highlight=False)
    else:
        # No terminal (CI, pipes): one line per change of description instead of a spinner.
        last = None
        while True:
            text = _progress_text(what, operation)
            if text != last:
                console.print(text, markup=False, highlight=False, soft_wrap=True)
                last = text
            if operation["state"] in TERMINAL_STATES:
                break
            operation = await api.operation(operation["id"], wait=_POLL_WAIT)
    return _finished(operation, what, no_wait=False)


def _finished(operation: Operation, what: str, *, no_wait: bool) -> Operation:
    """Raise for a failed operation; otherwise return it."""
    if operation["state"] == "failed":
        raise OperationFailed(what, operation)
    if no_wait and operation["state"] not in TERMINAL_STATES:
        note(f"{what}: accepted (operation {operation['id']}, state {operation['state']})")
    return operation


def _progress_text(what: str, operation: Operation) -> str:
    """One line: what, state, and the platform's description of the current step."""
    return f"{what}: {state_text(operation['state'], operation.get('description'))}"


def state_text(state: str, description: str | None, separator: str = " — ") -> str:
    """``state — description``, without saying the state twice when the description repeats it
    (a broker's bare ``succeeded``, or ``failed: reason``)."""
    if not description or description.strip().lower() == state:
        return state
    if description.lower().startswith(f"{state}:"):
        return f"{state}:{description[len(state) + 1 :]}"
    return f"{state}{separator}{description}"


async def with_api(api: PlatformAPI, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work`` and close ``api`` afterwards, whatever happens."""
    async with api:
        return await work


__all__ = [
    "TERMINAL_STATES",
    "AnyNamespaceOption",
    "CLIError",
    "NamespaceOption",
    "NoWaitOption",
    "OperationFailed",
    "OutputFormat",
    "OutputOption",
    "details",
    "emit",
    "exit_code_for",
    "fail",
    "follow",
    "note",
    "one_line",
    "run",
    "state_text",
    "stderr",
    "stdout",
    "table",
]
