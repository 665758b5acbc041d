"""Listing instances: each item is rendered by the database, and must equal the view of the same
instance read on its own (rendered in Python), on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from conftest import PlatformUnderTest
from servicebay.platform.services import records
from servicebay.platform.store import tables


def _engine(db_url: str) -> sa.Engine:
    url = make_url(db_url)
    if url.get_backend_name() == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return sa.create_engine(url)


async def _provision(platform: PlatformUnderTest, body: dict[str, Any]) -> None:
    r = await platform.client.post("/api/v1/instances", json=body)
    assert r.status_code == 202, r.text
    await platform.wait(r.json()["operation"])


@pytest.fixture(params=["as built", "through json()"])
def nesting(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Both ways SQLite may nest the last operation: as built (its JSON subtype kept through
    CASE), or re-parsed by json() where a build of SQLite drops the subtype."""
    if request.param == "through json()":
        monkeypatch.setattr(records, "_sqlite_case_keeps_json", lambda: False)
    records.instance_json.cache_clear()
    yield request.param
    records.instance_json.cache_clear()


def test_this_sqlite_keeps_the_json_subtype_through_case() -> None:
    """The fast path is the one CI runs (Python's bundled SQLite 3.40 keeps it)."""
    assert records._sqlite_case_keeps_json()


async def test_listed_items_equal_each_instance_read_alone(
    platform: PlatformUnderTest, db_url: str, nesting: str
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
    engine = _engine(db_url)
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
