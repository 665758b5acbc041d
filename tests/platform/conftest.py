"""Fixtures of the platform tests: a database per test (SQLite and PostgreSQL), the fake broker,
and a running platform app (lifespan, in-process worker) with an authenticated client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import sqlalchemy as sa
import uvicorn
from alembic import command
from alembic.config import Config
from platform_fake_broker import PASSWORD, USERNAME, FakeBroker
from sqlalchemy.engine import make_url
from starlette.applications import Starlette

from servicebay.platform import PlatformSettings, create_app
from servicebay.platform.store import migrations, tables

ADMIN_TOKEN = "admin-token-0123456789"
ALICE_TOKEN = "alice-token-0123456789"
FAKE_URL = "http://fake-broker.test"


def create_pg_database(base_url: str) -> str:
    """Create a fresh database ``sb_<uuid8>`` and return its URL."""
    name = f"sb_{uuid.uuid4().hex[:8]}"
    url = make_url(base_url)
    with psycopg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        dbname=url.database,
        autocommit=True,
    ) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)


def drop_pg_database(base_url: str, db_url: str) -> None:
    """Drop a database created by :func:`create_pg_database`."""
    url = make_url(base_url)
    name = make_url(db_url).database
    with psycopg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        dbname=url.database,
        autocommit=True,
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sync_engine(db_url: str) -> sa.Engine:
    """A plain (synchronous) engine on the platform database, to look at or write rows as a
    test needs to, outside the platform."""
    url = make_url(db_url)
    if url.get_backend_name() == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return sa.create_engine(url)


def stored_text(db_url: str) -> str:
    """Every stored row of operations, audit, instances and bindings as one text, to search for
    a secret."""
    engine = sync_engine(db_url)
    with engine.connect() as conn:
        rows = [
            row._asdict()
            for table in (tables.operations, tables.audit, tables.instances, tables.bindings)
            for row in conn.execute(sa.select(table))
        ]
    engine.dispose()
    return json.dumps(rows, default=str, ensure_ascii=False)


@contextlib.contextmanager
def downgraded(db_url: str, revision: str, cipher: Any = None) -> Iterator[sa.Connection]:
    """A connection to the platform database taken down to ``revision``, for a test to write
    rows as an older platform did; what it writes is committed on exit."""
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    engine = sync_engine(db_url)
    try:
        with engine.connect() as conn:
            config.attributes.update(connection=conn, cipher=cipher)
            command.downgrade(config, revision)
            conn.commit()
            yield conn
            conn.commit()
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str) -> Iterator[str]:
    """A fresh, empty database URL: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'platform.db'}"
        return
    url = create_pg_database(postgres_url)
    try:
        yield url
    finally:
        drop_pg_database(postgres_url, url)


@pytest.fixture
def fake() -> FakeBroker:
    """The misbehaving fake broker (in-process)."""
    return FakeBroker()


@dataclass
class PlatformUnderTest:
    """A running platform app and clients for it."""

    app: Starlette
    client: httpx.AsyncClient
    settings: PlatformSettings

    def as_user(self, token: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://platform.test",
            headers={"Authorization": f"Bearer {token}"},
        )

    async def wait(self, operation: dict[str, Any], seconds: float = 20) -> dict[str, Any]:
        """The operation once terminal (fails the test if it is not within ``seconds``)."""
        response = await self.client.get(
            f"/api/v1/operations/{operation['id']}", params={"wait": seconds}
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        assert body["state"] in ("succeeded", "failed"), body
        return body

    async def register_fake(self, name: str = "fake") -> dict[str, Any]:
        response = await self.client.post(
            "/api/v1/brokers",
            json={"name": name, "url": FAKE_URL, "username": USERNAME, "password": PASSWORD},
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body


def platform_settings(tmp_path: Path, db_url: str, **overrides: Any) -> PlatformSettings:
    """Settings for a test platform: fast retries, short timeouts, fixed tokens."""
    values: dict[str, Any] = {
        "home": tmp_path / "home",
        "db": db_url,
        "tokens": {ADMIN_TOKEN: "admin", ALICE_TOKEN: "alice"},
        "broker_timeout": 1.0,
        "default_retry_after": 0.05,
        "orphan_backoff_cap": 0.2,
        "poll_interval": 0.05,
        "lease_seconds": 5.0,
    }
    values.update(overrides)
    return PlatformSettings(**values)


@contextlib.asynccontextmanager
async def running_platform(
    settings: PlatformSettings, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[PlatformUnderTest]:
    """The platform app (lifespan and in-process worker running), brokers reached through
    ``transport`` (real HTTP when None), and an admin client for it."""
    app = create_app(settings, transport=transport)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://platform.test",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as client,
    ):
        yield PlatformUnderTest(app, client, settings)


@pytest.fixture
async def platform(
    tmp_path: Path, db_url: str, fake: FakeBroker
) -> AsyncIterator[PlatformUnderTest]:
    """The platform (app lifespan and in-process worker running) talking to the fake broker."""
    settings = platform_settings(tmp_path, db_url)
    async with running_platform(settings, httpx.ASGITransport(app=fake.app())) as platform:
        yield platform


@contextlib.asynccontextmanager
async def served(app: Any, **config: Any) -> AsyncIterator[str]:
    """Serve an ASGI app on a real local port (chosen by the OS); yield its base URL.
    ``config``: more uvicorn settings (``http=`` a protocol class, say)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", **config))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):  # poll for startup with a deadline (5 s)
            if server.started:
                break
            await asyncio.sleep(0.01)
        assert server.started, "the test server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def assert_masked(platform: PlatformUnderTest, db_url: str, *values: str) -> None:
    """None of ``values``, as written or JSON-escaped, is in a stored row or in what the
    operations, audit, instances and bindings endpoints answer."""
    shown = [stored_text(db_url)]
    for path in ("/api/v1/operations", "/api/v1/audit", "/api/v1/instances", "/api/v1/bindings"):
        response = await platform.client.get(path)
        assert response.status_code == 200, response.text
        shown.append(response.text)
    for text in shown:
        for value in values:
            assert value not in text
            assert json.dumps(value)[1:-1] not in text
