"""Parameters are validated before anything is sent (plan schema, then namespace constraints),
dry runs show what would be sent, and sensitive values never leave in clear text."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from platform_fake_broker import PASSWORD, FakeBroker

from conftest import PlatformUnderTest, platform_settings, running_platform

SECRET = "hunter2-very-secret-value"


async def test_schema_violation_names_field_rule_and_range(
    platform: PlatformUnderTest, fake: FakeBroker
) -> None:
    """size=500 on a plan allowing 1..10 → 422 invalid_parameters, nothing sent or stored."""
    await platform.register_fake()
    r = await platform.client.post(
        "/api/v1/instances",
        json={"service": "fake", "plan": "param", "name": "p1", "parameters": {"size": 500}},
    )
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid_parameters"
    # The field is named once: "size: must be <= 10 (got 500)", what the CLI and page show.
    assert body["message"] == "size: must be <= 10 (got 500)"
    assert body["problems"][0]["path"] == "size" and body["problems"][0]["rule"] == "maximum"
    assert fake.count("PUT") == 0
    assert (await platform.client.get("/api/v1/instances/p1")).status_code == 404


async def test_namespace_constraints_and_visibility(
    platform: PlatformUnderTest, fake: FakeBroker
) -> None:
    """A namespace narrows the plan schema and hides plans; its quota is enforced."""
    await platform.register_fake()
    c = platform.client
    r = await c.post(
        "/api/v1/namespaces",
        json={
            "name": "staging",
            "visible_plans": ["fake/param", "fake/sync"],
            "constraints": {"fake/param": {"properties": {"size": {"maximum": 3}}}},
            "max_instances": 1,
        },
    )
    assert r.status_code == 201, r.text
    market = (await c.get("/api/v1/marketplace", params={"namespace": "staging"})).json()
    plans = {p["name"]: p for p in market["items"][0]["plans"]}
    assert set(plans) == {"param", "sync"}
    assert plans["param"]["constraints"] == {"properties": {"size": {"maximum": 3}}}

    new = {"service": "fake", "plan": "param", "name": "p", "namespace": "staging"}
    r = await c.post("/api/v1/instances", json={**new, "parameters": {"size": 5}})
    assert r.status_code == 422
    assert "namespace staging" in r.json()["message"] and "3" in r.json()["message"]
    r = await c.post("/api/v1/instances", json={**new, "plan": "async"})
    assert r.status_code == 403 and r.json()["error"] == "plan_not_visible"
    # The same request is fine in the default namespace.
    r = await c.post(
        "/api/v1/instances", json={**new, "namespace": "default", "parameters": {"size": 5}}
    )
    assert r.status_code == 202
    r = await c.post("/api/v1/instances", json={**new, "parameters": {"size": 2}})
    assert r.status_code == 202
    await platform.wait(r.json()["operation"])
    r = await c.post("/api/v1/instances", json={**new, "name": "q"})
    assert r.status_code == 422 and r.json()["error"] == "quota_exceeded"
    # Same name in two namespaces side by side.
    both = (await c.get("/api/v1/instances", params={"namespace": "*"})).json()["items"]
    assert sorted((i["namespace"], i["name"]) for i in both) == [("default", "p"), ("staging", "p")]


async def test_dry_run_shows_request_with_defaults_and_sends_nothing(
    platform: PlatformUnderTest, fake: FakeBroker
) -> None:
    """Dry run: 200 with parameters after defaults (secret redacted), target, acceptance."""
    await platform.register_fake()
    r = await platform.client.post(
        "/api/v1/instances",
        json={
            "service": "fake",
            "plan": "param",
            "name": "dry",
            "parameters": {"secret": SECRET},
            "dry_run": True,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] is True and body["problems"] == []
    assert body["request"]["parameters"] == {"size": 1, "secret": "***"}
    assert body["target"]["method"] == "PUT" and body["target"]["broker"] == "fake"
    assert SECRET not in r.text
    bad = await platform.client.post(
        "/api/v1/instances",
        json={
            "service": "fake",
            "plan": "param",
            "name": "dry",
            "parameters": {"x": 1},
            "dry_run": True,
        },
    )
    assert bad.status_code == 200 and bad.json()["accepted"] is False and bad.json()["problems"]
    assert fake.count("PUT") == 0
    assert (await platform.client.get("/api/v1/instances/dry")).status_code == 404


async def test_secrets_never_in_clear_text_anywhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fake: FakeBroker
) -> None:
    """Broker password, sensitive parameters and binding credentials: encrypted in the SQLite
    file, absent from logs, lists, errors and the audit trail; the broker got the real secret."""
    caplog.set_level(logging.DEBUG)
    db = tmp_path / "platform.db"
    settings = platform_settings(tmp_path, f"sqlite:///{db}")
    async with running_platform(settings, httpx.ASGITransport(app=fake.app())) as platform:
        c = platform.client
        await platform.register_fake()
        r = await c.post(
            "/api/v1/instances",
            json={
                "service": "fake",
                "plan": "param",
                "name": "s",
                "parameters": {"secret": SECRET, "name": "shown"},
            },
        )
        await platform.wait(r.json()["operation"])
        r = await c.post("/api/v1/bindings", json={"instance": "s", "app": "web"})
        await platform.wait(r.json()["operation"])
        creds = (await c.get("/api/v1/bindings/s-web")).json()["credentials"]
        outputs = [
            (await c.get(path)).text
            for path in (
                "/api/v1/instances",
                "/api/v1/instances/s",
                "/api/v1/bindings",
                "/api/v1/operations",
                "/api/v1/audit",
                "/api/v1/brokers",
                "/api/v1/brokers/fake",
            )
        ]
        shown = (await c.get("/api/v1/instances/s")).json()["parameters"]
    assert shown == {"secret": "***", "name": "shown", "size": 1}
    put = next(iter(fake.instances.values()))["body"]
    assert put["parameters"]["secret"] == SECRET  # the broker did get it
    secrets = [SECRET, PASSWORD, creds["password"]]
    raw = (
        db.read_bytes() + (tmp_path / "platform.db-wal").read_bytes()
        if (tmp_path / "platform.db-wal").exists()
        else db.read_bytes()
    )
    logs = caplog.text
    for secret in secrets:
        assert secret.encode() not in raw
        assert secret not in logs
        for out in outputs:
            assert secret not in out
    key_file = settings.home / "platform.key"
    assert key_file.stat().st_mode & 0o777 == 0o600


async def test_unreachable_broker_is_502(tmp_path: Path) -> None:
    """Registering a broker nobody listens for → 502 broker_unreachable, nothing stored."""
    settings = platform_settings(tmp_path, f"sqlite:///{tmp_path / 'p.db'}")
    async with running_platform(settings) as platform:
        c = platform.client
        r = await c.post("/api/v1/brokers", json={"name": "b", "url": "http://127.0.0.1:9"})
        assert r.status_code == 502 and r.json()["error"] == "broker_unreachable"
        assert (await c.get("/api/v1/brokers")).json()["items"] == []
