"""Leases: a worker keeps the lease of an operation alive for as long as it drives it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import sqlalchemy as sa
from platform_fake_broker import PASSWORD, USERNAME, FakeBroker

from conftest import platform_settings, running_platform, served
from servicebay.platform.services.runtime import Platform
from servicebay.platform.store import tables, utcnow
from servicebay.platform.worker import Worker


async def test_a_long_broker_call_keeps_its_lease(tmp_path: Path, db_url: str) -> None:
    """A broker call that lasts three leases: the lease is renewed meanwhile, so another
    worker claims nothing, and the operation succeeds after one attempt."""
    fake = FakeBroker(slow_seconds=2.4)
    o = tables.operations
    async with served(fake.app()) as url:
        settings = platform_settings(tmp_path, db_url, lease_seconds=0.8, broker_timeout=10.0)
        async with running_platform(settings) as platform:
            client = platform.client
            broker = {"name": "fake", "url": url, "username": USERNAME, "password": PASSWORD}
            assert (await client.post("/api/v1/brokers", json=broker)).status_code == 201
            r = await client.post(
                "/api/v1/instances", json={"service": "fake", "plan": "slow", "name": "long"}
            )
            assert r.status_code == 202, r.text
            op_id = r.json()["operation"]["id"]
            other = Platform(settings)
            try:
                end = time.monotonic() + 1.8  # past two leases of 0.8 s, before the answer
                while time.monotonic() < end:
                    async with other.db.read() as conn:
                        lease = await conn.scalar(sa.select(o.c.lease_until).where(o.c.id == op_id))
                    assert lease is not None and lease > utcnow(), "the lease lapsed"
                    assert await Worker(other).claim(4) == []
                    await asyncio.sleep(0.1)
            finally:
                await other.close()
            op = await platform.wait(r.json()["operation"])
    assert op["state"] == "succeeded", op
    assert op["attempts"] == 1
    assert sum(fake.provisions.values()) == 1
