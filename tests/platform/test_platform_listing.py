"""Listing instances: each item is the view the database keeps rendered in the instance's row
(triggers of migration 0003), and must equal the view of the same instance read on its own
(rendered in Python), on SQLite and on PostgreSQL, after every kind of write."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import httpx
import platform_fake_broker
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from platform_fake_broker import FakeBroker
from platform_fake_broker import catalog as fake_catalog

from conftest import PlatformUnderTest, platform_settings, running_platform, sync_engine
from servicebay.platform.store import migrations, tables


async def _provision(platform: PlatformUnderTest, body: dict[str, Any]) -> None:
    r = await platform.client.post("/api/v1/instances", json=body)
    assert r.status_code == 202, r.text
    await platform.wait(r.json()["operation"])


async def test_listed_items_equal_each_instance_read_alone(
    platform: PlatformUnderTest, db_url: str
) -> None:
    await platform.register_fake()
    c = platform.client
    await _provision(platform, {"service": "fake", "plan": "sync", "name": "plain"})
    await _provision(
        platform,
        {
            "service": "fake",
            "plan": "param",
            "name": "with-params",
            "parameters": {"size": 3, "name": 'quote " back\\slash ünï', "secret": "s3cret"},
        },
    )
    await _provision(platform, {"service": "fake", "plan": "reject", "name": "refused"})
    r = await c.post("/api/v1/namespaces", json={"name": "team-b"})
    assert r.status_code == 201, r.text
    await _provision(
        platform, {"service": "fake", "plan": "sync", "name": "other", "namespace": "team-b"}
    )
    # Corners the API does not produce on its own: a whole-second timestamp (Python leaves the
    # fraction out), an instance with no operation, text that JSON must escape.
    engine = sync_engine(db_url)
    with engine.begin() as conn:
        i, o = tables.instances, tables.operations
        whole = dt.datetime(2026, 1, 2, 3, 4, 5)
        conn.execute(sa.update(i).where(i.c.name == "plain").values(created_at=whole))
        conn.execute(
            sa.update(i).where(i.c.name == "other").values(last_operation_id=None, state="ready")
        )
        refused = conn.execute(sa.select(i.c.last_operation_id).where(i.c.name == "refused"))
        conn.execute(
            sa.update(o)
            .where(o.c.id == refused.scalar_one())
            .values(description='line 1\nline 2\t"tab" \u00e9 \U0001f600 \x01', finished_at=None)
        )
    engine.dispose()

    listed = (await c.get("/api/v1/instances", params={"namespace": "*"})).json()
    assert listed["next"] is None
    names = [(item["namespace"], item["name"]) for item in listed["items"]]
    assert names == [
        ("default", "plain"),
        ("default", "refused"),
        ("default", "with-params"),
        ("team-b", "other"),
    ]
    for item in listed["items"]:
        alone = await c.get(
            f"/api/v1/instances/{item['name']}", params={"namespace": item["namespace"]}
        )
        assert alone.status_code == 200, alone.text
        assert item == alone.json()
    by_name = {item["name"]: item for item in listed["items"]}
    assert by_name["plain"]["created_at"] == "2026-01-02T03:04:05Z"
    assert by_name["other"]["last_operation"] is None
    assert by_name["refused"]["state"] == "failed"
    assert by_name["refused"]["last_operation"]["description"].startswith("line 1\nline 2\t")
    assert by_name["refused"]["last_operation"]["finished_at"] is None
    assert by_name["with-params"]["parameters"]["size"] == 3
    assert "s3cret" not in str(listed)


async def test_pages_follow_one_another_without_gap_or_repeat(
    platform: PlatformUnderTest,
) -> None:
    await platform.register_fake()
    c = platform.client
    for n in range(5):
        await _provision(platform, {"service": "fake", "plan": "sync", "name": f"p{n}"})
    seen: list[str] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if after:
            params["after"] = after
        page = (await c.get("/api/v1/instances", params=params)).json()
        assert len(page["items"]) <= 2
        seen += [item["name"] for item in page["items"]]
        after = page["next"]
        if after is None:
            break
        assert after == seen[-1]
    assert seen == [f"p{n}" for n in range(5)]
    everything = (await c.get("/api/v1/instances", params={"namespace": "*", "limit": 4})).json()
    assert everything["next"] == "default/p3"
    only_sync = (await c.get("/api/v1/instances", params={"service": "nope"})).json()
    assert only_sync == {"items": [], "next": None}


async def _listed_equal_alone(platform: PlatformUnderTest) -> dict[str, dict[str, Any]]:
    """Every listed item equals its instance read alone; the items by name."""
    c = platform.client
    listed = (await c.get("/api/v1/instances", params={"namespace": "*"})).json()
    for item in listed["items"]:
        alone = await c.get(
            f"/api/v1/instances/{item['name']}", params={"namespace": item["namespace"]}
        )
        assert item == alone.json()
    return {item["name"]: item for item in listed["items"]}


async def test_stored_views_follow_renames_and_writes_made_outside_the_api(
    platform: PlatformUnderTest, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A catalog refresh renaming a plan and a service, a broker renamed and an operation
    changed straight in the database: each listed view shows the new values at once."""
    await platform.register_fake()
    c = platform.client
    await _provision(platform, {"service": "fake", "plan": "sync", "name": "kept"})
    await _provision(platform, {"service": "fake", "plan": "async", "name": "other-plan"})

    renamed = fake_catalog()
    renamed["services"][0]["name"] = "fake-renamed"
    for plan in renamed["services"][0]["plans"]:
        if plan["name"] == "sync":
            plan["name"] = "sync-renamed"
    monkeypatch.setattr(platform_fake_broker, "catalog", lambda: renamed)
    r = await c.post("/api/v1/brokers/fake/refresh")
    assert r.status_code == 200, r.text
    views = await _listed_equal_alone(platform)
    assert (views["kept"]["service"], views["kept"]["plan"]) == ("fake-renamed", "sync-renamed")
    assert (views["other-plan"]["service"], views["other-plan"]["plan"]) == (
        "fake-renamed",
        "async",
    )

    engine = sync_engine(db_url)
    with engine.begin() as conn:
        b, o, i = tables.brokers, tables.operations, tables.instances
        conn.execute(sa.update(b).values(name="fake-2"))
        last = conn.execute(sa.select(i.c.last_operation_id).where(i.c.name == "kept"))
        conn.execute(
            sa.update(o).where(o.c.id == last.scalar_one()).values(description="edited by hand")
        )
        # A write to a column the view does not show leaves the stored text as it was.
        before = conn.execute(sa.select(i.c.view_json).where(i.c.name == "kept")).scalar_one()
        conn.execute(sa.update(i).where(i.c.name == "kept").values(parameters="sealed"))
        after = conn.execute(sa.select(i.c.view_json).where(i.c.name == "kept")).scalar_one()
    engine.dispose()
    assert after == before
    views = await _listed_equal_alone(platform)
    assert {view["broker"] for view in views.values()} == {"fake-2"}
    assert views["kept"]["last_operation"]["description"] == "edited by hand"


async def test_migration_renders_the_views_of_instances_made_before_it(
    tmp_path: Path, db_url: str, fake: FakeBroker
) -> None:
    """Down to revision 0002 (no stored views), up again: every instance there is gets its
    view, equal to the one read alone; the downgrade leaves no trigger behind. The platform is
    stopped while the migrations run (they block, and would wait for its transactions)."""
    settings = platform_settings(tmp_path, db_url)
    transport = httpx.ASGITransport(app=fake.app())
    async with running_platform(settings, transport) as platform:
        await platform.register_fake()
        for n in range(3):
            await _provision(platform, {"service": "fake", "plan": "sync", "name": f"old-{n}"})
        cipher = platform.app.state.platform.cipher
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    engine = sync_engine(db_url)
    with engine.connect() as conn:
        config.attributes["connection"] = conn
        config.attributes["cipher"] = cipher  # for 0004
        command.downgrade(config, "0002")
        conn.commit()
        assert "view_json" not in {col["name"] for col in sa.inspect(conn).get_columns("instances")}
        # Written while no trigger exists: only the migration's rendering can show it.
        old = sa.table("instances", sa.column("name"), sa.column("state"))
        conn.execute(sa.update(old).where(old.c.name == "old-1").values(state="failed"))
        conn.commit()
        command.upgrade(config, "head")
        conn.commit()
    engine.dispose()
    async with running_platform(settings, transport) as platform:
        views = await _listed_equal_alone(platform)
    assert sorted(views) == ["old-0", "old-1", "old-2"]
    assert views["old-1"]["state"] == "failed"
