"""Provision, bind, unbind and deprovision through the API against the fake broker."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from platform_fake_broker import FakeBroker

from conftest import (
    ALICE_TOKEN,
    PlatformUnderTest,
    create_pg_database,
    drop_pg_database,
    platform_settings,
    running_platform,
)
from servicebay.platform import Worker
from servicebay.platform.services.runtime import Platform


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


async def test_update_changes_parameters_and_plan(
    platform: PlatformUnderTest, fake: FakeBroker
) -> None:
    """PATCH sends previous values, and the stored parameters/plan change only on success."""
    await platform.register_fake()
    c = platform.client
    r = await c.post(
        "/api/v1/instances",
        json={"service": "fake", "plan": "sync", "name": "u1", "parameters": {"a": 1}},
    )
    await platform.wait(r.json()["operation"])
    r = await c.patch("/api/v1/instances/u1", json={"parameters": {"b": 2}, "dry_run": True})
    assert r.status_code == 200 and r.json()["target"]["method"] == "PATCH"
    r = await c.patch("/api/v1/instances/u1", json={"parameters": {"b": 2}})
    assert r.status_code == 202, r.text
    op = await platform.wait(r.json()["operation"])
    assert op["state"] == "succeeded", op
    inst = (await c.get("/api/v1/instances/u1")).json()
    assert inst["parameters"] == {"a": 1, "b": 2} and inst["state"] == "ready"
    assert fake.count("PATCH", inst["id"]) == 1


async def test_service_keys_have_the_binding_lifecycle(
    platform: PlatformUnderTest, fake: FakeBroker
) -> None:
    """kind=key: no app, generated name, credentials readable by its creator."""
    await platform.register_fake()
    c = platform.client
    r = await c.post("/api/v1/instances", json={"service": "fake", "plan": "sync", "name": "k1"})
    await platform.wait(r.json()["operation"])
    r = await c.post("/api/v1/bindings", json={"instance": "k1", "kind": "key"})
    assert r.status_code == 202, r.text
    name = r.json()["binding"]["name"]
    assert name.startswith("k1-key-")
    await platform.wait(r.json()["operation"])
    keys = (await c.get("/api/v1/bindings", params={"instance": "k1", "kind": "key"})).json()
    assert [k["name"] for k in keys["items"]] == [name]
    assert "credentials" not in keys["items"][0]
    assert (await c.get(f"/api/v1/bindings/{name}")).json()["credentials"]["password"]
    r = await c.delete("/api/v1/instances/k1")
    assert r.status_code == 409 and r.json()["error"] == "instance_has_bindings"


async def test_purge_removes_records_but_keeps_evidence(
    platform: PlatformUnderTest, fake: FakeBroker
) -> None:
    """Purge deletes instance and bindings locally (no broker call) and records the evidence."""
    await platform.register_fake()
    c = platform.client
    r = await c.post("/api/v1/instances", json={"service": "fake", "plan": "sync", "name": "pg"})
    await platform.wait(r.json()["operation"])
    r = await c.post("/api/v1/bindings", json={"instance": "pg", "app": "web"})
    await platform.wait(r.json()["operation"])
    calls_before = len(fake.calls)
    r = await c.post("/api/v1/instances/pg/purge")
    assert r.status_code == 200, r.text
    assert r.json()["bindings"] == ["pg-web"]
    assert r.json()["operation"]["kind"] == "purge"
    evidence = (await c.get(f"/api/v1/operations/{r.json()['operation']['id']}")).json()["evidence"]
    assert evidence["instance"]["name"] == "pg" and evidence["bindings"][0]["name"] == "pg-web"
    assert len(fake.calls) == calls_before
    assert (await c.get("/api/v1/instances/pg")).status_code == 404
    assert (await c.get("/api/v1/bindings/pg-web")).status_code == 404
    history = (await c.get("/api/v1/operations", params={"instance": "pg"})).json()["items"]
    assert [o["kind"] for o in history] == ["purge", "bind", "provision"]
    audit = (await c.get("/api/v1/audit", params={"target": "default/pg"})).json()["items"]
    assert audit[0]["action"] == "instance.purge" and audit[0]["user"] == "admin"


async def test_broker_refresh_and_remove(platform: PlatformUnderTest, fake: FakeBroker) -> None:
    """Refresh reports no change for the same catalog; remove is refused while in use."""
    await platform.register_fake()
    c = platform.client
    r = await c.post("/api/v1/brokers/fake/refresh")
    assert r.status_code == 200 and r.json()["changes"] == {
        "added": [],
        "removed": [],
        "updated": [],
    }
    r = await c.post("/api/v1/instances", json={"service": "fake", "plan": "sync", "name": "b1"})
    await platform.wait(r.json()["operation"])
    r = await c.delete("/api/v1/brokers/fake")
    assert r.status_code == 409 and r.json()["error"] == "broker_in_use"
    await c.post("/api/v1/instances/b1/purge")
    assert (await c.delete("/api/v1/brokers/fake")).status_code == 204
    assert (await c.get("/api/v1/marketplace")).json()["items"] == []


async def test_originating_identity_is_the_acting_user(
    platform: PlatformUnderTest, fake: FakeBroker
) -> None:
    """Alice's provision reaches the broker as `servicebay {"user": "alice"}` and is audited."""
    await platform.register_fake()
    async with platform.as_user(ALICE_TOKEN) as alice:
        r = await alice.post(
            "/api/v1/instances", json={"service": "fake", "plan": "sync", "name": "al"}
        )
        assert r.status_code == 202
        await platform.wait(r.json()["operation"])
    platform_name, value = fake.identities[0].split(" ")
    assert platform_name == "servicebay"
    assert json.loads(base64.b64decode(value)) == {"user": "alice"}
    audit = (await platform.client.get("/api/v1/audit", params={"target": "default/al"})).json()
    assert {a["user"] for a in audit["items"]} == {"alice"}


async def test_web_page_is_served_without_a_build_step(platform: PlatformUnderTest) -> None:
    """GET / is the page; its script and style are served; the page itself needs no token."""
    page = await platform.client.get("/", headers={"Authorization": ""})
    assert page.status_code == 200 and "servicebay" in page.text
    script = await platform.client.get("/web/app.js", headers={"Authorization": ""})
    assert script.status_code == 200 and "/api/v1" in script.text
    assert (await platform.client.get("/web/style.css")).status_code == 200


async def test_writes_with_wait_answer_with_the_finished_operation(
    platform: PlatformUnderTest, fake: FakeBroker
) -> None:
    """`?wait=` on provision, bind, unbind and deprovision answers 202 once the operation has
    finished, with its final state; each request still reaches the broker once."""
    await platform.register_fake()
    c = platform.client
    wait = {"wait": 20}
    body = {"service": "fake", "plan": "sync", "name": "w1"}
    r = await c.post("/api/v1/instances", json=body, params=wait)
    assert r.status_code == 202, r.text
    assert r.json()["operation"]["state"] == "succeeded"
    assert r.json()["operation"]["finished_at"] is not None
    assert fake.count("PUT", r.json()["instance"]["id"]) == 1
    assert (await c.get("/api/v1/instances/w1")).json()["state"] == "ready"

    r = await c.post("/api/v1/bindings", json={"instance": "w1", "app": "web"}, params=wait)
    assert r.status_code == 202 and r.json()["operation"]["state"] == "succeeded", r.text
    assert (await c.get("/api/v1/bindings/w1-web")).json()["credentials"]
    fake.fail_deletes = 0
    r = await c.delete("/api/v1/bindings/w1-web", params=wait)
    assert r.status_code == 202 and r.json()["operation"]["state"] == "succeeded", r.text
    r = await c.delete("/api/v1/instances/w1", params=wait)
    assert r.status_code == 202 and r.json()["operation"]["state"] == "succeeded", r.text
    assert (await c.get("/api/v1/instances/w1")).status_code == 404
    assert fake.instances == {}


async def test_write_with_a_bad_wait_is_refused_before_anything_is_stored(
    platform: PlatformUnderTest, fake: FakeBroker
) -> None:
    """An out-of-range or non-numeric `wait` is a 400, and no instance is created."""
    await platform.register_fake()
    c = platform.client
    body = {"service": "fake", "plan": "sync", "name": "w2"}
    for bad in ("61", "-1", "soon"):
        r = await c.post("/api/v1/instances", json=body, params={"wait": bad})
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "bad_request" and "wait" in r.json()["message"]
    assert (await c.get("/api/v1/instances/w2")).status_code == 404
    assert fake.instances == {}


async def test_operations_beyond_the_worker_slots_wait_for_a_free_slot(
    tmp_path: Path, db_url: str, fake: FakeBroker
) -> None:
    """With one worker slot and no periodic claim in sight, concurrent provisions still all
    finish, each sent once: the first is handed over, the others are claimed as the slot
    frees."""
    settings = platform_settings(tmp_path, db_url, worker_concurrency=1, poll_interval=30.0)
    async with running_platform(settings, httpx.ASGITransport(app=fake.app())) as platform:
        client = platform.client
        await platform.register_fake()

        async def provision(n: int) -> dict[str, Any]:
            body = {"service": "fake", "plan": "sync", "name": f"s{n}"}
            r = await client.post("/api/v1/instances", json=body, params={"wait": 10})
            assert r.status_code == 202, r.text
            return dict(r.json()["operation"])

        ops = await asyncio.wait_for(asyncio.gather(*(provision(n) for n in range(4))), 20)
        instances = (await client.get("/api/v1/instances")).json()["items"]
    assert [op["state"] for op in ops] == ["succeeded"] * 4
    assert all(fake.count("PUT", i["id"]) == 1 for i in instances) and len(instances) == 4


@pytest.mark.postgres
async def test_postgres_notifications_wake_another_processes_worker_and_waiter(
    tmp_path: Path, postgres_url: str, fake: FakeBroker
) -> None:
    """An API without a worker and a worker of its own (two processes' worth of state on one
    PostgreSQL, neither polling within the test): the worker is woken by the queued
    operation's notification, and the API's waiter by the finished one's."""
    db = create_pg_database(postgres_url)
    try:
        settings = platform_settings(tmp_path, db, run_worker=False, poll_interval=30.0)
        worker_platform = Platform(
            platform_settings(tmp_path, db, poll_interval=30.0),
            transport=httpx.ASGITransport(app=fake.app()),
        )
        stop = asyncio.Event()
        async with running_platform(settings, httpx.ASGITransport(app=fake.app())) as platform:
            client = platform.client
            await platform.register_fake()
            await worker_platform.start()
            working = asyncio.create_task(Worker(worker_platform).run(stop))
            try:
                await asyncio.sleep(0.5)  # the worker's first claim found nothing; it idles
                started = time.monotonic()
                body = {"service": "fake", "plan": "sync", "name": "n1"}
                r = await client.post("/api/v1/instances", json=body, params={"wait": 20})
                elapsed = time.monotonic() - started
            finally:
                stop.set()
                await working
                await worker_platform.close()
        assert r.status_code == 202 and r.json()["operation"]["state"] == "succeeded", r.text
        assert elapsed < 10  # neither side waited for its 30 s poll interval
    finally:
        drop_pg_database(postgres_url, db)


async def test_a_name_is_taken_within_its_namespace_and_kind_only(
    platform: PlatformUnderTest, fake: FakeBroker
) -> None:
    """A second instance or binding of one name in one namespace is a 409; the same name in
    another namespace, or a binding named as an instance, is free."""
    await platform.register_fake()
    c = platform.client
    assert (await c.post("/api/v1/namespaces", json={"name": "other"})).status_code == 201
    for namespace in ("default", "other"):
        body = {"service": "fake", "plan": "sync", "name": "db1", "namespace": namespace}
        r = await c.post("/api/v1/instances", json=body)
        assert r.status_code == 202, r.text
        assert (await platform.wait(r.json()["operation"]))["state"] == "succeeded"
        r = await c.post("/api/v1/instances", json=body)
        assert (r.status_code, r.json()["error"]) == (409, "instance_exists")
    body = {"instance": "db1", "app": "web", "name": "db1"}
    r = await c.post("/api/v1/bindings", json=body)
    assert r.status_code == 202, r.text
    assert r.json()["binding"]["name"] == "db1"
    await platform.wait(r.json()["operation"])
    r = await c.post("/api/v1/bindings", json=body)
    assert (r.status_code, r.json()["error"]) == (409, "binding_exists")
    r = await c.post("/api/v1/bindings", json={**body, "namespace": "other"})
    assert r.status_code == 202, r.text
