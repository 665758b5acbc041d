"""`bay chat`: run the chat server.

Registered by the lead as the ``chat`` sub-app of ``bay``; runnable alone as
``python -m servicebay.cli.chat serve`` (the crash tests start it that way).
"""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from servicebay.cli._sockets import bound_socket

if TYPE_CHECKING:
    from servicebay.chat.settings import ChatSettings

app = typer.Typer(name="chat", help="The chat service.", no_args_is_help=True)

# The GIL switch interval of the server process (Python's default: 5 ms). See ``serve``.
SWITCH_INTERVAL = 0.0005
GC_THRESHOLDS = (20_000, 10, 10)


@app.callback()
def _chat() -> None:
    """The chat service."""


@app.command()
def serve(
    store: Annotated[
        str | None,
        typer.Option(
            help="sqlite:PATH (default sqlite:./servicebay-chat.db), rabbitmq, or rabbitmq:BINDING"
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Interface (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8765).")] = None,
    room: Annotated[
        list[str] | None, typer.Option(help="Room to create if missing (repeatable).")
    ] = None,
    signup: Annotated[
        bool | None, typer.Option("--signup/--no-signup", help="Let the page sign people up.")
    ] = None,
    keep_all: Annotated[
        bool | None, typer.Option("--keep-all/--no-keep-all", help="Keep all history.")
    ] = None,
    keep_seconds: Annotated[
        float | None, typer.Option(help="Keep acknowledged messages this long.")
    ] = None,
    keep_last: Annotated[
        int | None, typer.Option(help="Always keep this many newest messages per room.")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
) -> None:
    """Serve the chat: web page at /, WebSocket at /ws, HTTP API at /api/v1.

    Example: bay chat serve --store sqlite:./chat.db --port 8765
    """
    from servicebay.chat.settings import ChatSettings

    settings = ChatSettings.from_env(
        store=store,
        host=host,
        port=port,
        rooms=room or None,
        signup=signup,
        keep_all=keep_all,
        keep_seconds=keep_seconds,
        keep_last=keep_last,
        log_level=log_level,
    )
    configure_logging(settings.log_level)
    for name, value in settings.describe().items():
        typer.echo(f"{name}: {value}", err=True)
    sock = _listening_socket(settings.host, settings.port)
    stops: list[int] = []
    # uvicorn re-raises the stop signal once it has shut down, before the store is closed (the
    # CLI owns the store's lifespan here); a recorded signal lets the store close, then exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stops.append(signum))
    tune_interpreter()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        refusal = runner.run(_serve(settings, sock, stops))
    if refusal is not None:
        _fail(refusal)


def tune_interpreter() -> None:
    """The GIL's switch interval and the garbage collector, for a server under load."""
    # The store's threads (the SQLite writer and reader) take the GIL back after every call
    # into SQLite; while the event loop is busy fanning out, each retake waits for the switch
    # interval, several times per commit, and "sent" and every delivery wait with it. Measured
    # (appends at 500/s beside a loop busy in 3 ms slices, 2 cores at load 4-9): p50 / p99
    # 30-52 / 316-375 ms at 5 ms, 22 / 68 ms at 0.5 ms.
    sys.setswitchinterval(SWITCH_INTERVAL)
    # Every message makes short-lived objects (frames, answers), and a room keeps thousands of
    # encoded messages alive: with the default thresholds (700) the collector ran ~400 times in
    # a 2 s saturated run, full collections of every live object (35 ms each) included, 0.17-0.20
    # s in all. What is loaded at start (modules, schemas) is frozen, never scanned again, and
    # the young generation is collected every GC_THRESHOLDS[0] allocations: 0.02-0.03 s per run,
    # and no full collection. (Messages hold no reference cycles; the collector is for the rare
    # ones, which wait a little longer.)
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when it is installed, as ``uvicorn.run`` chooses by default."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before the store is opened: a busy port touches nothing."""
    return bound_socket(host, port)


async def _serve(settings: ChatSettings, sock: socket.socket, stops: list[int]) -> str | None:
    """Open the store (the app's lifespan), then serve on ``sock``; a refusal's reason or None.

    The lifespan runs here rather than inside uvicorn so that a store that cannot be opened
    (in use by another server, missing binding, bad path, refused credentials) is one line and
    exit code 2, not uvicorn's traceback.
    """
    import uvicorn

    from servicebay.chat.server import create_app, uvicorn_options
    from servicebay.chat.stores import StoreNotOpened

    try:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            if stops:  # asked to stop while the store was opening
                return None
            typer.echo(f"serving the chat at http://{settings.host}:{settings.port}/", err=True)
            config = uvicorn.Config(
                app, lifespan="off", log_level=settings.log_level, **uvicorn_options()
            )
            await uvicorn.Server(config).serve(sockets=[sock])
    except StoreNotOpened as exc:
        return str(exc)
    return None


def configure_logging(level: str) -> None:
    """structlog's default console lines from ``level`` up, with plain tracebacks.

    The default renderer draws tracebacks with rich, every frame's locals included: a failed
    delivery or compaction would print the tokens, messages or AMQP URI its frames held.
    """
    import logging
    import sys

    import structlog

    threshold = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.StackInfoRenderer(),
            structlog.dev.set_exc_info,
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            structlog.dev.ConsoleRenderer(
                colors=sys.stdout.isatty(), exception_formatter=structlog.dev.plain_traceback
            ),
        ],
    )


if __name__ == "__main__":
    app()
