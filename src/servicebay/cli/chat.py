"""`bay chat`: run the chat server.

Registered by the lead as the ``chat`` sub-app of ``bay``; runnable alone as
``python -m servicebay.cli.chat serve`` (the crash tests start it that way).
"""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(name="chat", help="The chat service.", no_args_is_help=True)


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
    import uvicorn

    from servicebay.chat.protocol import MAX_MESSAGE_BYTES
    from servicebay.chat.server import create_app
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
    try:
        app_ = create_app(settings)
    except ValueError as exc:  # an unknown or unavailable store: say so, no traceback
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    uvicorn.run(
        app_,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Messages up to twice the protocol limit reach the server, which answers "too_large"
        # and keeps the connection; bigger ones are closed by the WebSocket layer (1009).
        ws_max_size=2 * MAX_MESSAGE_BYTES,
        # Chat frames are small; compressing each costs more CPU than it saves (measured).
        ws_per_message_deflate=False,
        ws_ping_interval=10,
        ws_ping_timeout=10,
    )


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
