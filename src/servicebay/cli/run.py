"""``bay run --app NAME -- COMMAND...``: start a program with its bindings in place.

The app's ready bindings are fetched from the platform (``GET /apps/{app}/bindings``) and
projected with :mod:`servicebay.bindings` into a private temporary ``SERVICE_BINDING_ROOT``
(directory 0700, files 0600); the command runs with that variable set, and reads its credentials
with ``bindings.find(type=...)``. While it runs the projection is refreshed every
``--refresh`` seconds, so a rotated credential appears and an unbound one disappears without a
restart. When the command ends the root is removed and ``bay run`` exits with its exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Annotated

import typer

from servicebay import bindings
from servicebay.cli import _config
from servicebay.cli._api import PlatformAPI, PlatformError
from servicebay.cli.output import CLIError, NamespaceOption, note, one_line, run


def run_command(
    command: Annotated[list[str], typer.Argument(help="The program and its arguments.")],
    app: Annotated[str, typer.Option("--app", help="Whose bindings to project.")],
    namespace: NamespaceOption = "default",
    root: Annotated[
        Path | None,
        typer.Option("--root", help="Project here instead of a private temporary directory."),
    ] = None,
    refresh: Annotated[
        float,
        typer.Option(help="Seconds between refreshes of the bindings while running (0: never)."),
    ] = 5.0,
) -> None:
    """Run a command with the app's bindings in $SERVICE_BINDING_ROOT.

    Example: bay run --app chat -- python -m servicebay.chat
    """
    code = run(_run(app, namespace, root, refresh, command))
    raise typer.Exit(code)


class Projection:
    """The app's bindings as projected into one root, kept in step with the platform.

    Only bindings this projection wrote are ever replaced or removed, so a ``--root`` that also
    holds other bindings keeps them.
    """

    def __init__(self, api: PlatformAPI, app: str, namespace: str, root: Path) -> None:
        self.api = api
        self.app = app
        self.namespace = namespace
        self.root = root
        self.current: dict[str, bindings.Binding] = {}

    async def refresh(self) -> list[bindings.Binding]:
        """Fetch the app's ready bindings; write new or changed ones, remove unbound ones."""
        wanted = {binding.name: binding for binding in await self._fetch()}
        await asyncio.to_thread(self._apply, wanted)
        return list(wanted.values())

    def clear(self) -> None:
        """Remove every binding this projection wrote."""
        self._apply({})

    async def _fetch(self) -> list[bindings.Binding]:
        items = await self.api.app_bindings(self.app, self.namespace)
        found = []
        for item in items:
            if item.get("credentials_hidden") or "credentials" not in item:
                raise CLIError(
                    f"binding {item['name']}: credentials visible only to its creator or an admin",
                    3,
                )
            found.append(
                bindings.Binding.from_credentials(
                    item["name"], item["type"], item["credentials"], provider=item.get("provider")
                )
            )
        return found

    def _apply(self, wanted: dict[str, bindings.Binding]) -> None:
        for name, binding in wanted.items():
            if self.current.get(name) != binding:
                bindings.write(binding, self.root)
        for name in set(self.current) - set(wanted):
            bindings.remove(name, self.root)
        self.current = dict(wanted)


async def _run(
    app: str, namespace: str, root: Path | None, refresh: float, command: list[str]
) -> int:
    private = None if root is not None else Path(tempfile.mkdtemp(prefix="bay-run-"))
    target = root if root is not None else Path(str(private)) / "bindings"
    projection = None
    try:
        async with _config.connect() as api:
            projection = Projection(api, app, namespace, target)
            await asyncio.to_thread(ensure_root, target)
            projected = await projection.refresh()
            if not projected:
                # Most often a typo in --app or -n: say so rather than run without credentials.
                note(f"warning: no bindings for app {app!r} in namespace {namespace!r}")
            names = ", ".join(b.name for b in projected) or "none"
            note(f"app {app}: {len(projected)} binding(s) ({names}) in {target}")
            env = {**os.environ, bindings.ROOT_ENV: str(target)}
            return await _supervise(projection, refresh, command, env)
    finally:
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)
        elif projection is not None:
            with contextlib.suppress(bindings.BindingError, OSError):
                projection.clear()


def ensure_root(root: Path) -> None:
    """Create the root (0700) even when there is nothing to project: the app may watch it."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)


async def _supervise(
    projection: Projection,
    refresh: float,
    command: list[str],
    env: dict[str, str],
) -> int:
    """Start the command, keep its bindings fresh, forward signals, return its exit code."""
    try:
        process = await asyncio.create_subprocess_exec(*command, env=env)
    except FileNotFoundError:
        raise CLIError(f"command not found: {command[0]}", 127) from None
    except PermissionError:
        raise CLIError(f"command not executable: {command[0]}", 126) from None
    handled = _forward_signals(process)
    refresher = None
    if refresh > 0:
        refresher = asyncio.create_task(_keep_fresh(projection, refresh))
    try:
        code = await process.wait()
    finally:
        if refresher is not None:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        loop = asyncio.get_running_loop()
        for sig in handled:
            loop.remove_signal_handler(sig)
        if process.returncode is None:
            # We are leaving early (an error, a cancellation): never leave the command orphaned
            # with its bindings about to be removed.
            process.kill()
            await process.wait()
    return code if code >= 0 else 128 - code


def _forward_signals(process: asyncio.subprocess.Process) -> list[signal.Signals]:
    """Pass SIGTERM/SIGHUP (and SIGINT when not at a terminal) on to the command.

    At a terminal Ctrl-C reaches the whole process group already, so it is not sent twice;
    ``bay run`` just keeps waiting for the command. Handlers need the main thread; elsewhere
    (embedded use) signals are left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        return []
    loop = asyncio.get_running_loop()
    at_terminal = sys.stdin.isatty()
    handled = [signal.SIGTERM, signal.SIGHUP, signal.SIGINT]
    for sig in handled:
        if sig == signal.SIGINT and at_terminal:
            loop.add_signal_handler(sig, lambda: None)
        else:
            loop.add_signal_handler(sig, process.send_signal, sig)
    return handled


async def _keep_fresh(projection: Projection, every: float) -> None:
    """Re-project the app's bindings every ``every`` seconds; a failed fetch keeps the old ones."""
    last_problem = None
    while True:
        await asyncio.sleep(every)
        try:
            await projection.refresh()
            last_problem = None
        except (PlatformError, CLIError, bindings.BindingError, OSError) as error:
            problem = one_line(error)
            if problem != last_problem:
                note(f"bay run: could not refresh bindings ({problem}); keeping the current ones")
                last_problem = problem


def register(app: typer.Typer) -> None:
    """Add ``run`` to ``app``; options after the command belong to the command."""
    app.command(
        "run",
        context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
    )(run_command)
