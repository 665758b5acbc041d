"""Provision, bind, unbind and deprovision through the API against the fake broker."""

from __future__ import annotations

from platform_fake_broker import FakeBroker

from conftest import ALICE_TOKEN, PlatformUnderTest


async def test_sync_lifecycle_reaches_the_broker_once_each(
    platform: PlatformUnderTest, fake: FakeBroker
) -> None:
    """A sync plan: provision, bind (credentials stored), unbind, deprovision — each sent once."""
    await platform.register_fake()
    c = platform.client
    r = await c.post("/api/v1/instances", json={"service": "fake", "plan": "sync", "name": "db1"})
    assert r.status_code == 202, r.text
    op = await platform.wait(r.json()["operation"])
    assert op["state"] == "succeeded", op
    inst = (await c.get("/api/v1/instances/db1")).json()
    assert inst["state"] == "ready"
    assert fake.count("PUT", inst["id"]) == 1

    r = await c.post("/api/v1/bindings", json={"instance": "db1", "app": "web"})
    assert r.status_code == 202, r.text
    assert (await platform.wait(r.json()["operation"]))["state"] == "succeeded"
    binding = (await c.get("/api/v1/bindings/db1-web")).json()
    assert binding["credentials"]["password"].startswith("pw-")
    app_view = (await c.get("/api/v1/apps/web/bindings")).json()
    assert app_view["items"][0]["type"] == "fake"
    assert app_view["items"][0]["credentials"] == binding["credentials"]

    async with platform.as_user(ALICE_TOKEN) as alice:
        hidden = (await alice.get("/api/v1/bindings/db1-web")).json()
    assert "credentials" not in hidden and hidden["credentials_hidden"] is True

    fake.fail_deletes = 0
    r = await c.delete("/api/v1/bindings/db1-web")
    assert r.status_code == 202
    assert (await platform.wait(r.json()["operation"]))["state"] == "succeeded"
    assert (await c.get("/api/v1/bindings/db1-web")).status_code == 404
    r = await c.delete("/api/v1/instances/db1")
    assert r.status_code == 202
    assert (await platform.wait(r.json()["operation"]))["state"] == "succeeded"
    assert (await c.get("/api/v1/instances/db1")).status_code == 404
    assert fake.instances == {}


async def test_async_provision_is_polled_to_ready(
    platform: PlatformUnderTest, fake: FakeBroker
) -> None:
    """An async plan: 202, polled until the broker says succeeded."""
    await platform.register_fake()
    r = await platform.client.post(
        "/api/v1/instances", json={"service": "fake", "plan": "async", "name": "a1"}
    )
    op = await platform.wait(r.json()["operation"])
    assert op["state"] == "succeeded", op
    inst = (await platform.client.get("/api/v1/instances/a1")).json()
    assert inst["state"] == "ready"
    assert fake.count("GET", f"{inst['id']}/last_operation") >= 1
    assert fake.count("PUT", inst["id"]) == 1
