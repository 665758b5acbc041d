"""`bay broker`: serve (and, from ``broker_check``, check) brokers written with the SDK.

``bay broker serve MODULE:ATTR`` imports the author's `Broker` (an instance, or a subclass it
instantiates), builds the ASGI app with `servicebay.broker.create_app` and runs it under uvicorn,
whose server each connection reaches through our own HTTP/1.1 protocol (`_http.HttpProtocol`,
one write per answer) unless ``--http uvicorn`` keeps uvicorn's.
Settings come from the flags over ``SERVICEBAY_BROKER_*`` variables (`BrokerSettings.from_env`);
they are printed at start without secrets, with the URL and a request to try.

With ``--workers N`` (N > 1) uvicorn forks N processes on one listening socket; each builds its
own app through `app_from_environment` (a factory reading the same settings from the
environment), and all share the store, whose operation lease keeps two workers from running one
operation. SIGTERM or Ctrl-C stop accepting connections, let open requests finish, then run the
app's lifespan shutdown, which finishes or records in-flight work; the exit code is then 0.

Logs are structured (structlog): JSON lines when stderr is not a terminal, readable console
lines when it is (``--log-format`` chooses); uvicorn's own logs go through the same pipeline.
httpx's and httpcore's line per outgoing request shows only with ``--log-level debug``.

A broker that cannot start (the author's ``startup`` raised, or the store cannot be opened)
ends with one line, ``error: <why>``, and exit code 2; the traceback is logged only with
``--log-level debug``. Configuration errors (`SettingsError`, `StoreError`, and any exception
class named ``ConfigurationError``, as the RabbitMQ broker raises) show their message alone;
any other exception is shown with its type.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import sys
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from servicebay.cli._sockets import bound_socket

# servicebay.broker (starlette, SQLAlchemy, ...) is imported inside the commands: every `bay`
# invocation imports this module, and most never serve a broker.
if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from servicebay.broker import Broker, BrokerSettings

__all__ = ["app", "app_from_environment", "configure_logging", "load_broker", "serve"]

TARGET_ENV = "SERVICEBAY_BROKER_SERVE_TARGET"
LOG_FORMAT_ENV = "SERVICEBAY_BROKER_LOG_FORMAT"
# Loggers that write a line per outgoing HTTP request at INFO: only at debug level.
_CHATTY_LOGGERS = ("httpx", "httpcore")

app = typer.Typer(
    name="broker",
    help="Serve and check brokers written with the SDK.",
    no_args_is_help=True,
)


def _log() -> Any:
    import structlog  # lazily, like servicebay.broker (see the imports above)

    return structlog.get_logger("servicebay.broker.serve")


class LogFormat(StrEnum):
    """How log lines are written to stderr."""

    auto = "auto"
    json = "json"
    console = "console"


class HttpImplementation(StrEnum):
    """Which HTTP/1.1 protocol serves each connection."""

    servicebay = "servicebay"
    uvicorn = "uvicorn"


class BrokerTargetError(Exception):
    """MODULE:ATTR does not name an importable Broker."""


@app.callback()
def _group() -> None:
    """Serve and check brokers written with the SDK."""


@app.command()
def serve(
    target: Annotated[
        str,
        typer.Argument(
            metavar="MODULE:ATTR",
            help="The broker: a Broker instance or subclass, e.g. mypkg.broker:broker.",
        ),
    ],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0 picks a free one).")] = 8080,
    username: Annotated[
        str | None, typer.Option(help="Basic auth user. Env: SERVICEBAY_BROKER_USERNAME.")
    ] = None,
    password: Annotated[
        str | None,
        typer.Option(
            help="Basic auth password. Env: SERVICEBAY_BROKER_PASSWORD (keeps it out of ps)."
        ),
    ] = None,
    bearer_token: Annotated[
        str | None,
        typer.Option(help="Accept this bearer token. Env: SERVICEBAY_BROKER_BEARER_TOKEN."),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            help="Store URL: sqlite:///file.db or postgresql://..., by default "
            "sqlite:///./servicebay-broker.db. Env: SERVICEBAY_BROKER_DB. Encryption key: "
            "SERVICEBAY_BROKER_KEY (required for PostgreSQL)."
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="Worker processes sharing the socket and the store.")
    ] = 1,
    log_level: Annotated[
        str | None,
        typer.Option(
            help="critical, error, warning, info or debug. Env: SERVICEBAY_BROKER_LOG_LEVEL."
        ),
    ] = None,
    log_format: Annotated[
        LogFormat, typer.Option(help="json, console, or auto (console on a terminal).")
    ] = LogFormat.auto,
    access_log: Annotated[bool, typer.Option(help="Log every HTTP request (uvicorn).")] = False,
    http: Annotated[
        HttpImplementation,
        typer.Option(
            help="servicebay: one write per answer, a lean request path (default); "
            "uvicorn: uvicorn's httptools protocol."
        ),
    ] = HttpImplementation.servicebay,
    fd: Annotated[
        int | None,
        typer.Option(
            hidden=True, help="Serve on this already-listening socket (servicebay.testing)."
        ),
    ] = None,
) -> None:
    """Serve a broker written with the SDK over HTTP, until SIGTERM or Ctrl-C.

    Secrets are best given as SERVICEBAY_BROKER_PASSWORD / _BEARER_TOKEN / _KEY: flags show in `ps`.

    Example: bay broker serve servicebay.examples.sandbox:broker --username admin --password s3cret
    """
    from servicebay.broker import BrokerSettings, SettingsError

    _warn_secret_flags(password=password, bearer_token=bearer_token)
    try:
        settings = BrokerSettings.from_env(
            username=username,
            password=password,
            bearer_token=bearer_token,
            db=db,
            log_level=log_level,
        )
        _require_auth(settings)
    except SettingsError as exc:
        _fail(str(exc))
    sys.path.insert(0, os.getcwd())  # like uvicorn: MODULE may live in the working directory
    try:
        broker = load_broker(target)
    except BrokerTargetError as exc:
        _fail(str(exc))
    fmt = _resolve_format(log_format)
    configure_logging(settings.log_level, fmt)
    sock = _listening_socket(host, port, fd)
    url = _url_of(sock, host)
    flagged = {name for name, value in (("password", password), ("token", bearer_token)) if value}
    _announce(target, settings, url, workers, secrets_from_flags=flagged)
    if workers == 1:
        _serve_one(broker, settings, sock, access_log, http)
    else:
        _serve_many(target, settings, sock, workers, access_log, fmt, http)


def load_broker(target: str) -> Broker:
    """The Broker named by ``MODULE:ATTR`` (a subclass is instantiated without arguments)."""
    from servicebay.broker import Broker

    module_name, _, attr_path = target.partition(":")
    if not module_name or not attr_path:
        raise BrokerTargetError(f"expected MODULE:ATTR (e.g. mypkg.broker:broker), got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BrokerTargetError(f"cannot import module {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise BrokerTargetError(
                f"module {module_name!r} has no attribute {attr_path!r}"
            ) from None
    if isinstance(obj, type) and issubclass(obj, Broker):
        obj = obj()
    if not isinstance(obj, Broker):
        raise BrokerTargetError(
            f"{target} is a {type(obj).__name__}, "
            "not a servicebay.broker.Broker instance or subclass"
        )
    return obj


def app_from_environment() -> ASGIApp:
    """Build the app in a uvicorn worker from the environment `serve` prepared (app factory)."""
    from servicebay.broker import BrokerSettings, create_app

    settings = BrokerSettings.from_env()
    configure_logging(settings.log_level, LogFormat(os.environ.get(LOG_FORMAT_ENV, "json")))
    app = create_app(load_broker(os.environ[TARGET_ENV]), settings=settings)
    # The parent only learns that a worker failed to start: the worker says why.
    return _StartupGuard(app, traceback=settings.log_level == "debug", say=True)


def configure_logging(level: str, fmt: LogFormat) -> None:
    """Route structlog and stdlib logging (uvicorn's too) to stderr as JSON or console lines."""
    import structlog

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Tracebacks are rendered plain: rich's pretty tracebacks show frame locals, and a local
    # may hold a credential (an Authorization header, a binding's password).
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt is LogFormat.json
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    tail: list[Any] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if fmt is LogFormat.json:
        tail.append(structlog.processors.format_exc_info)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=[*tail, renderer])
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if level == "debug" else logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True


def _resolve_format(fmt: LogFormat) -> LogFormat:
    if fmt is LogFormat.auto:
        return LogFormat.console if sys.stderr.isatty() else LogFormat.json
    return fmt


def _require_auth(settings: BrokerSettings) -> None:
    from servicebay.broker import SettingsError

    if settings.username and not settings.password:
        raise SettingsError("--username needs --password (or SERVICEBAY_BROKER_PASSWORD)")
    if settings.password and not settings.username:
        raise SettingsError("--password needs --username (or SERVICEBAY_BROKER_USERNAME)")
    if not settings.auth_configured:
        raise SettingsError(
            "refusing to serve a broker without authentication: give --username and --password "
            "(or SERVICEBAY_BROKER_USERNAME / SERVICEBAY_BROKER_PASSWORD) or --bearer-token"
        )


def _listening_socket(host: str, port: int, fd: int | None) -> socket.socket:
    if fd is not None:
        # The caller keeps its own copy open, so a restarted broker listens on the same port.
        sock = socket.socket(fileno=os.dup(fd))
    else:
        sock = bound_socket(host, port)
        sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _url_of(sock: socket.socket, host: str) -> str:
    bound_host, bound_port = sock.getsockname()[:2]
    shown = bound_host if bound_host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{bound_port}"


def _warn_secret_flags(**flags: str | None) -> None:
    for name, value in flags.items():
        if value is not None:
            option = "--" + name.replace("_", "-")
            typer.echo(
                f"warning: {option} is visible to other users in ps; "
                f"prefer SERVICEBAY_BROKER_{name.upper()}",
                err=True,
            )


def _curl_auth(settings: BrokerSettings, secrets_from_flags: set[str]) -> str:
    """The curl arguments that authenticate, naming a variable only when the secret is in it."""
    if settings.username:
        if "password" in secrets_from_flags:  # not in the environment: curl asks for it
            return f"-u {settings.username}"
        return f"-u {settings.username}:$SERVICEBAY_BROKER_PASSWORD"
    if "token" in secrets_from_flags:
        return "-H 'Authorization: Bearer TOKEN'"
    return '-H "Authorization: Bearer $SERVICEBAY_BROKER_BEARER_TOKEN"'


def _announce(
    target: str,
    settings: BrokerSettings,
    url: str,
    workers: int,
    *,
    secrets_from_flags: set[str],
) -> None:
    described = settings.describe()
    # The app logs every setting itself when it starts; this line says where it is served.
    _log().info("serving broker", target=target, url=url, workers=workers)
    auth = _curl_auth(settings, secrets_from_flags)
    lines = [
        f"servicebay broker {target} (Open Service Broker API 2.17)",
        f"  url:      {url}  ({workers} worker{'s' if workers > 1 else ''})",
        f"  auth:     basic {'user ' + settings.username if settings.username else 'off'}, "
        f"bearer {'on' if settings.bearer_token else 'off'}",
        f"  store:    {described['db']} (key: {described['key']})",
        f"  try:      curl {auth} -H 'X-Broker-API-Version: 2.17' {url}/v2/catalog",
        f"  conform:  bay broker check {url} --username {settings.username or 'USER'}",
    ]
    typer.echo("\n".join(lines), err=True)


def _uvicorn_config(
    app: Any, settings: BrokerSettings, access_log: bool, http: HttpImplementation, **extra: Any
) -> Any:
    import uvicorn

    if http is HttpImplementation.servicebay:
        from servicebay.cli._http import HttpProtocol

        extra.update(http=HttpProtocol)
    else:
        extra.update(http="httptools")
    # uvicorn reads no X-Forwarded-* header: failed authentication is throttled per client
    # address, and a forwarded header sent from 127.0.0.1 must not name a new one with every
    # request (the throttle reads X-Forwarded-For itself, from trusted_proxies only).
    extra.update(proxy_headers=False)
    return uvicorn.Config(
        app,
        log_config=None,
        log_level=settings.log_level,
        access_log=access_log,
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=max(int(settings.shutdown_grace), 1),
        **extra,
    )


def _serve_one(
    broker: Broker,
    settings: BrokerSettings,
    sock: socket.socket,
    access_log: bool,
    http: HttpImplementation,
) -> None:
    import uvicorn

    from servicebay.broker import SettingsError, StoreError, create_app

    try:
        asgi = create_app(broker, settings=settings)
    except (StoreError, SettingsError, ValueError) as exc:
        _fail(str(exc))
    guarded = _StartupGuard(asgi, traceback=settings.log_level == "debug")
    server = uvicorn.Server(_uvicorn_config(guarded, settings, access_log, http))
    stops: list[int] = []
    # uvicorn re-raises the stop signal once it has shut down gracefully, which would end the
    # process "killed by SIGTERM"; a clean, finished shutdown is exit code 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stops.append(signum))
    try:
        server.run(sockets=[sock])
    except SystemExit:  # uvicorn exits this way when the lifespan startup failed
        if guarded.error is None:
            raise
        _fail(_startup_failure(guarded.error))
    if not server.started:
        _fail("the broker did not start (see the log above)", code=1)
    _log().info("broker stopped", signal=signal.Signals(stops[0]).name if stops else None)


def _serve_many(
    target: str,
    settings: BrokerSettings,
    sock: socket.socket,
    workers: int,
    access_log: bool,
    fmt: LogFormat,
    http: HttpImplementation,
) -> None:
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    # Workers are fresh processes: hand them the flags through the environment they inherit.
    for name, value in settings.model_dump().items():
        if isinstance(value, list):  # trusted_proxies: comma-separated, as the variable is read
            os.environ["SERVICEBAY_BROKER_" + name.upper()] = ",".join(value)
        elif value is not None:
            os.environ["SERVICEBAY_BROKER_" + name.upper()] = str(value)
    os.environ[TARGET_ENV] = target
    os.environ[LOG_FORMAT_ENV] = fmt.value
    config = _uvicorn_config(
        "servicebay.cli.broker:app_from_environment",
        settings,
        access_log,
        http,
        factory=True,
        workers=workers,
    )
    supervisor = Multiprocess(config, sockets=[sock])
    supervisor.run()
    if any(p.process.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        raise typer.Exit(2)  # the worker printed its `error:` line
    _log().info("broker stopped", workers=workers)


class _StartupGuard:
    """ASGI wrapper keeping the exception that failed the app's startup, for `serve` to say.

    Below debug level it also drops the traceback the app hands uvicorn with
    ``lifespan.startup.failed`` (uvicorn would log it): the one ``error:`` line replaces it.
    ``say`` prints that line at once (in a worker process, whose exceptions the parent never sees).
    """

    def __init__(self, app: ASGIApp, *, traceback: bool, say: bool = False) -> None:
        self.app, self.traceback, self.say = app, traceback, say
        self.error: BaseException | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "lifespan.startup.complete"
            if message["type"] == "lifespan.startup.failed" and not self.traceback:
                message = {**message, "message": ""}
            await send(message)

        try:
            await self.app(scope, receive, guarded_send)
        except Exception as exc:
            if not started:
                self.error = exc
                if self.say:
                    typer.echo(f"error: {_startup_failure(exc)}", err=True)
            raise


def _startup_failure(error: BaseException) -> str:
    """One line for an exception raised while the app started."""
    from servicebay.broker import SettingsError, StoreError

    configuration = isinstance(error, SettingsError | StoreError) or any(
        cls.__name__ == "ConfigurationError" for cls in type(error).__mro__
    )
    if configuration:
        return str(error)
    return f"the broker's startup failed: {type(error).__name__}: {error}"


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
