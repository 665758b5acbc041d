"""Migration 0004: what was recorded before the platform masked a broker's words (its own
credentials for that broker, quoted back in an error) is masked when the platform starts on the
database, on SQLite and on PostgreSQL, in every stored text that held it and every output."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from platform_fake_broker import PASSWORD, USERNAME, FakeBroker

from conftest import (
    PlatformUnderTest,
    downgraded,
    platform_settings,
    running_platform,
    stored_text,
    sync_engine,
)
from servicebay.platform.store import Database, tables

BASIC = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
# What the platform stored before it masked a broker's words: the broker quoting the Basic
# header it was sent, and the pair inside it.
ECHOED = (
    f"broker answered 401 (Unauthorized: login failed for '{USERNAME}:{PASSWORD}' (Basic {BASIC}))"
)


async def _provision(platform: PlatformUnderTest, name: str, plan: str) -> dict[str, Any]:
    r = await platform.client.post(
        "/api/v1/instances", json={"service": "fake", "plan": plan, "name": name}
    )
    assert r.status_code == 202, r.text
    return await platform.wait(r.json()["operation"])


def _record_as_before_masking(db_url: str, evidence_of: str) -> None:
    """Down to 0003, then write the broker's echo in clear where the platform wrote its words:
    each operation's description, its audit entry, and a purge's evidence."""
    o, a = tables.operations, tables.audit
    with downgraded(db_url, "0003") as conn:
        conn.execute(sa.update(o).values(description=ECHOED))
        conn.execute(
            sa.update(a)
            .where(a.c.action.like("operation.%"))
            .values(details={"description": ECHOED})
        )
        evidence = {"instance": {"last_operation": {"description": ECHOED}}, "bindings": []}
        conn.execute(sa.update(o).where(o.c.id == evidence_of).values(evidence=evidence))


async def test_start_masks_broker_credentials_recorded_before_masking(
    tmp_path: Path, db_url: str, fake: FakeBroker
) -> None:
    """Operations, audit entries and stored instance views written with the broker's echo of
    the platform's credentials in clear show them as *** once the platform has started on
    the database again (migration 0004); the rest of the broker's words is kept."""
    settings = platform_settings(tmp_path, db_url)
    transport = httpx.ASGITransport(app=fake.app())
    async with running_platform(settings, transport) as platform:
        await platform.register_fake()
        refused = await _provision(platform, "refused", "reject")
        await _provision(platform, "fine", "sync")
    _record_as_before_masking(db_url, evidence_of=refused["id"])
    stored = stored_text(db_url)
    assert PASSWORD in stored and BASIC in stored  # in clear, instance views included

    async with running_platform(settings, transport) as platform:
        shown = [
            (await platform.client.get(path)).text
            for path in (
                f"/api/v1/operations/{refused['id']}",
                "/api/v1/operations",
                "/api/v1/instances",
                "/api/v1/instances/fine",
                "/api/v1/audit",
            )
        ]
        operation = (await platform.client.get(f"/api/v1/operations/{refused['id']}")).json()
    for text in [*shown, stored_text(db_url)]:
        assert PASSWORD not in text and BASIC not in text
    masked = ECHOED.replace(BASIC, "***").replace(PASSWORD, "***")
    assert operation["description"] == masked
    assert operation["evidence"]["instance"]["last_operation"]["description"] == masked


async def test_a_database_with_broker_credentials_needs_the_key_to_migrate(
    tmp_path: Path, db_url: str, fake: FakeBroker
) -> None:
    """Migrating without the platform key, which 0004 needs to know what to mask, is refused
    (the database stays at 0003) rather than recorded as done with the secrets left in clear."""
    settings = platform_settings(tmp_path, db_url)
    async with running_platform(settings, httpx.ASGITransport(app=fake.app())) as platform:
        await platform.register_fake()
        refused = await _provision(platform, "refused", "reject")
    _record_as_before_masking(db_url, evidence_of=refused["id"])
    db = Database(db_url)
    try:
        with pytest.raises(RuntimeError, match="needs the platform key"):
            await db.migrate()
    finally:
        await db.close()
    engine = sync_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0003"
    engine.dispose()
    assert PASSWORD in stored_text(db_url)
