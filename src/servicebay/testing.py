"""Public test helpers: run a broker in-process or on a real port, with its lifespan.

Two ways to put a broker written with the SDK under test:

- `run_broker` (async context manager) builds the ASGI app in this process, runs its lifespan
  (store opened, unfinished operations resumed, ``startup``/``shutdown`` hooks) and hands back an
  ``httpx.AsyncClient`` talking to it in memory, with authentication and ``X-Broker-API-Version``
  already set. Fast: use it for breadth.
- `serve_broker` (context manager) starts a real ``bay broker serve`` process on a free port and
  waits until ``/v2/catalog`` answers. It can be killed (``kill -9``) and restarted on the same
  database and port, which is how crash tests are written.

Both default to a SQLite file in a fresh temporary directory (removed afterwards), so tests never
share state::

    async with run_broker(MyBroker()) as tb:
        response = await tb.client.put("/v2/service_instances/i-1", json={...})

    with serve_broker("mypkg.broker:broker") as served:
        ...  # served.url, served.username, served.password
        served.kill()
        served.restart()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from servicebay.broker import Broker, BrokerSettings, Store, create_app, open_store
from servicebay.osb import API_VERSION, API_VERSION_HEADER

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BrokerClientForTests", "ServedBroker", "run_broker", "serve_broker"]

_TEST_USER = "servicebay-test"


@dataclass
class BrokerClientForTests:
    """A broker running in-process: its client, base URL, store and settings."""

    client: httpx.AsyncClient
    url: str
    store: Store
    settings: BrokerSettings
    app: ASGIApp = field(repr=False)


@contextlib.asynccontextmanager
async def run_broker(
    broker: Broker, *, settings: BrokerSettings | None = None
) -> AsyncIterator[BrokerClientForTests]:
    """Run ``broker``'s app in this process, lifespan included, and yield a client for it.

    Without ``settings``: basic auth with a random password and a SQLite store in a temporary
    directory. The client sends the credentials (basic if a username is set, else the bearer
    token) and ``X-Broker-API-Version: 2.17`` on every request.
    """
    with tempfile.TemporaryDirectory(prefix="servicebay-test-") as tmp:
        if settings is None:
            settings = BrokerSettings(
                username=_TEST_USER,
                password=secrets.token_urlsafe(16),
                db=f"sqlite:///{Path(tmp) / 'broker.db'}",
            )
        store = open_store(settings.db, settings.key)
        await store.open()
        try:
            app = create_app(broker, settings=settings, store=store)
            async with _Lifespan(app) as lifespan:
                transport = httpx.ASGITransport(app=lifespan.app)
                async with httpx.AsyncClient(
                    transport=transport,
                    base_url="http://broker.test",
                    headers={API_VERSION_HEADER: API_VERSION, **_bearer(settings)},
                    auth=_basic(settings),
                ) as client:
                    yield BrokerClientForTests(client, "http://broker.test", store, settings, app)
        finally:
            await store.close()


def _basic(settings: BrokerSettings) -> tuple[str, str] | None:
    if settings.username and settings.password:
        return (settings.username, settings.password)
    return None


def _bearer(settings: BrokerSettings) -> dict[str, str]:
    if settings.bearer_token and not settings.username:
        return {"Authorization": f"Bearer {settings.bearer_token}"}
    return {}


class _Lifespan:
    """Drives an ASGI app's lifespan protocol, as a server would, around a block of requests.

    ``app`` is the wrapped app to send requests to: it hands each request a copy of the state
    the lifespan produced (``scope["state"]``), as uvicorn does.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._inner = app
        self._state: dict[str, Any] = {}
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app, with the lifespan state copied into every request's scope."""
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "state": dict(self._state)}
        await self._inner(scope, receive, send)

    async def __aenter__(self) -> _Lifespan:
        scope: MutableMapping[str, Any] = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self._state,
        }
        self._task = asyncio.create_task(self._run(scope))
        await self._exchange("startup")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._exchange("shutdown")
        if self._task is not None:
            await self._task

    async def _run(self, scope: Scope) -> None:
        await self._inner(scope, self._to_app.get, self._from_app.put)

    async def _exchange(self, phase: str) -> None:
        assert self._task is not None
        await self._to_app.put({"type": f"lifespan.{phase}"})
        reply = asyncio.ensure_future(self._from_app.get())
        await asyncio.wait({reply, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not reply.done():
            reply.cancel()
            self._task.result()  # the app raised: let the error through as it is
            raise RuntimeError(f"the app returned without completing lifespan {phase}")
        message = reply.result()
        if message["type"] == f"lifespan.{phase}.failed":
            # Collect the app's own exception too: an unretrieved task exception would be
            # reported later, at garbage collection, far from this test.
            with contextlib.suppress(BaseException):
                await self._task
            raise RuntimeError(f"broker {phase} failed: {message.get('message', '')}")


@dataclass
class ServedBroker:
    """A broker served by a real ``bay broker serve`` process (see `serve_broker`)."""

    url: str
    username: str
    password: str
    process: subprocess.Popen[bytes]
    db: str
    log_path: Path
    _command: list[str] = field(repr=False)
    _env: dict[str, str] = field(repr=False)
    _fd: int = field(repr=False)

    @property
    def log(self) -> str:
        """Everything the process (and its predecessors, across restarts) wrote so far."""
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """``kill -9`` the broker (and its workers) at once, as a crash would."""
        self._signal(signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for a graceful exit (SIGKILL after ``timeout``); the exit code."""
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def restart(self, timeout: float = 60.0) -> None:
        """Start the broker again on the same database, key and port (after kill or stop)."""
        if self.process.poll() is None:
            raise RuntimeError("the broker is still running: kill() or stop() it first")
        self.process = self._spawn()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until ``GET /v2/catalog`` answers 200; RuntimeError if the process dies first."""
        deadline = time.monotonic() + timeout
        headers = {API_VERSION_HEADER: API_VERSION}
        with httpx.Client(auth=(self.username, self.password), headers=headers) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"bay broker serve exited with {self.process.returncode}:\n"
                        + self.log[-4000:]
                    )
                try:
                    if client.get(f"{self.url}/v2/catalog", timeout=0.5).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass  # not accepting yet: the request waited in the socket's backlog
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the broker did not answer within {timeout} s:\n" + self.log[-4000:]
                    )
                time.sleep(0.05)

    def _spawn(self) -> subprocess.Popen[bytes]:
        return _spawn(self._command, self._env, self._fd, self.log_path)

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)


@contextlib.contextmanager
def serve_broker(
    broker: str | Broker | type[Broker],
    *,
    db: str | None = None,
    workers: int = 1,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Iterator[ServedBroker]:
    """Serve ``broker`` from a real ``bay broker serve`` process on a free local port.

    ``broker`` is ``"module:attr"``, a Broker subclass, or a Broker instance bound to a module
    global (the process imports it by name). ``db`` defaults to a SQLite file in a temporary
    directory. Credentials are random and reach the process through the environment, never its
    command line. The listening socket is held here, so after `ServedBroker.kill` the restarted
    process serves the same URL. On exit the process is stopped (SIGTERM, then SIGKILL).
    """
    target = _target_of(broker)
    with tempfile.TemporaryDirectory(prefix="servicebay-serve-") as tmp, _listener() as sock:
        password = secrets.token_urlsafe(16)
        database = db or f"sqlite:///{Path(tmp) / 'broker.db'}"
        child_env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in [*sys.path, os.environ.get("PYTHONPATH")] if p
            ),
            "SERVICEBAY_BROKER_USERNAME": _TEST_USER,
            "SERVICEBAY_BROKER_PASSWORD": password,
            **(env or {}),
        }
        command = [
            sys.executable,
            "-m",
            "servicebay.cli.broker",
            "serve",
            target,
            "--fd",
            str(sock.fileno()),
            "--db",
            database,
            "--workers",
            str(workers),
            "--log-format",
            "json",
        ]
        log_path = Path(tmp) / "broker.log"
        served = ServedBroker(
            url=f"http://127.0.0.1:{sock.getsockname()[1]}",
            username=_TEST_USER,
            password=password,
            process=_spawn(command, child_env, sock.fileno(), log_path),
            db=database,
            log_path=log_path,
            _command=command,
            _env=child_env,
            _fd=sock.fileno(),
        )
        try:
            served.wait_ready(timeout)
            yield served
        finally:
            served.stop()


def _spawn(
    command: list[str], env: dict[str, str], fd: int, log_path: Path
) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(  # noqa: S603 - our own interpreter and module
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(fd,),
            start_new_session=True,  # its own process group: workers die with it
        )


@contextlib.contextmanager
def _listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(2048)
        sock.set_inheritable(True)
        yield sock
    finally:
        sock.close()


def _target_of(broker: str | Broker | type[Broker]) -> str:
    if isinstance(broker, str):
        return broker
    if isinstance(broker, type):
        return f"{broker.__module__}:{broker.__qualname__}"
    module = sys.modules.get(type(broker).__module__)
    for name, value in vars(module or object()).items():
        if value is broker:
            return f"{type(broker).__module__}:{name}"
    raise ValueError(
        "serve_broker needs to import the broker in a new process: pass 'module:attr', a Broker "
        "subclass, or an instance that is a global of its class's module"
    )
