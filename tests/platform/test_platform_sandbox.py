"""The platform against the real sandbox broker served by `bay broker serve` (a real process)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import platform_settings, running_platform
from servicebay.testing import ServedBroker, serve_broker


@pytest.fixture(scope="module")
def sandbox() -> Iterator[ServedBroker]:
    """The sandbox broker in its own process."""
    with serve_broker("servicebay.examples.sandbox:broker") as served:
        yield served


@pytest.mark.e2e
@pytest.mark.parametrize("plan", ["sync", "async"])
async def test_sandbox_lifecycle(
    tmp_path: Path, db_url: str, sandbox: ServedBroker, plan: str
) -> None:
    """register → marketplace → provision → bind (credentials) → unbind → deprovision."""
    settings = platform_settings(tmp_path, db_url, broker_timeout=10.0, default_retry_after=0.2)
    async with running_platform(settings) as platform:
        c = platform.client
        r = await c.post(
            "/api/v1/brokers",
            json={
                "name": "sandbox",
                "url": sandbox.url,
                "username": sandbox.username,
                "password": sandbox.password,
            },
        )
        assert r.status_code == 201, r.text
        market = (await c.get("/api/v1/marketplace")).json()["items"]
        assert {p["name"] for p in market[0]["plans"]} >= {"sync", "async", "param"}
        params = {"delay_seconds": 0.5} if plan == "async" else {}
        r = await c.post(
            "/api/v1/instances",
            json={"service": "sandbox", "plan": plan, "name": "sb", "parameters": params},
        )
        assert r.status_code == 202, r.text
        op = await platform.wait(r.json()["operation"], 60)
        assert op["state"] == "succeeded", op
        r = await c.post("/api/v1/bindings", json={"instance": "sb", "app": "chat"})
        op = await platform.wait(r.json()["operation"], 60)
        assert op["state"] == "succeeded", op
        app_view = (await c.get("/api/v1/apps/chat/bindings")).json()
        creds = app_view["items"][0]["credentials"]
        assert creds["password"] and creds["uri"]
        assert app_view["items"][0]["type"] == "sandbox"
        r = await c.delete("/api/v1/bindings/sb-chat")
        assert (await platform.wait(r.json()["operation"], 60))["state"] == "succeeded"
        assert (await c.get("/api/v1/apps/chat/bindings")).json()["items"] == []
        r = await c.delete("/api/v1/instances/sb")
        assert (await platform.wait(r.json()["operation"], 60))["state"] == "succeeded"
        assert (await c.get("/api/v1/instances/sb")).status_code == 404
    assert creds["password"] not in sandbox.log


@pytest.mark.e2e
async def test_sandbox_failure_is_mitigated(
    tmp_path: Path, db_url: str, sandbox: ServedBroker
) -> None:
    """fail=true on the async plan: last_operation failed → orphan mitigation → deleted."""
    settings = platform_settings(tmp_path, db_url, broker_timeout=10.0, default_retry_after=0.2)
    async with running_platform(settings) as platform:
        c = platform.client
        await c.post(
            "/api/v1/brokers",
            json={
                "name": "sandbox",
                "url": sandbox.url,
                "username": sandbox.username,
                "password": sandbox.password,
            },
        )
        r = await c.post(
            "/api/v1/instances",
            json={
                "service": "sandbox",
                "plan": "async",
                "name": "bad",
                "parameters": {"fail": True, "delay_seconds": 0.2},
            },
        )
        op = await platform.wait(r.json()["operation"], 60)
        assert op["state"] == "failed" and op["orphan_mitigation"], op
        mitigation = await platform.wait({"id": op["orphan_mitigation"]}, 60)
        assert mitigation["state"] == "succeeded", mitigation
