"""``bay server`` and ``bay worker``: run the platform and extra workers.

Registered onto the root ``bay`` app with :func:`register`. Both print their settings (never a
secret) at start; ``bay server`` also prints where the API token is, the first time.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Annotated

import typer

from servicebay.platform.keys import TOKEN_FILE
from servicebay.platform.settings import DEFAULT_PORT, PlatformSettings


def _settings(**overrides: object) -> PlatformSettings:
    return PlatformSettings.from_env(**overrides)


def server(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = DEFAULT_PORT,
    db: Annotated[
        str | None,
        typer.Option(help="Database URL (sqlite:///path or postgresql://...).", show_default=False),
    ] = None,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="Serve the API only (run `bay worker` apart).")
    ] = False,
    worker_concurrency: Annotated[
        int, typer.Option(help="Operations the in-process worker drives at once.")
    ] = 8,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the platform: HTTP API, web page and an in-process worker.

    Example: bay server --port 8470 --db postgresql://postgres@127.0.0.1/servicebay
    """
    import uvicorn

    from servicebay.platform import create_app
    from servicebay.platform.api.serving import uvicorn_options

    settings = _settings(
        host=host,
        port=port,
        db=db,
        run_worker=not no_worker,
        worker_concurrency=worker_concurrency,
        log_level=log_level,
    )
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    typer.echo(f"servicebay platform: {settings.describe()}", err=True)
    if settings.tokens is None:
        typer.echo(f"API token: {settings.home / TOKEN_FILE}", err=True)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        **uvicorn_options(),
    )


def worker(
    db: Annotated[
        str | None,
        typer.Option(help="Database URL (sqlite:///path or postgresql://...).", show_default=False),
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Operations driven at once.")] = 8,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run an extra worker that drives operations from the platform database.

    Example: bay worker --db postgresql://postgres@127.0.0.1/servicebay --concurrency 16
    """
    from servicebay.platform.services.runtime import Platform
    from servicebay.platform.worker import Worker

    settings = _settings(db=db, worker_concurrency=concurrency, log_level=log_level)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    typer.echo(f"servicebay worker: {settings.describe()}", err=True)

    async def main() -> None:
        platform = Platform(settings)
        await platform.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await Worker(platform).run(stop)
        finally:
            await platform.close()

    asyncio.run(main())


def register(app: typer.Typer) -> None:
    """Add ``server`` and ``worker`` to the ``bay`` app."""
    app.command("server")(server)
    app.command("worker")(worker)


if __name__ == "__main__":  # `python -m servicebay.cli.server server|worker ...` (tests, CI)
    _app = typer.Typer(no_args_is_help=True)
    register(_app)
    _app()
