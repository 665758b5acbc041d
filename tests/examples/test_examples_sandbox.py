"""The sandbox broker behaves as documented: plans, schemas, async progress, failures, secrets."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from servicebay.examples.sandbox import SERVICE_ID, broker, plan_id
from servicebay.testing import run_broker

DRAFT_04 = "http://json-schema.org/draft-04/schema#"


def ids(plan: str) -> dict[str, str]:
    return {"service_id": SERVICE_ID, "plan_id": plan_id(plan)}


def provision_body(plan: str, **parameters: Any) -> dict[str, Any]:
    return {**ids(plan), "organization_guid": "o", "space_guid": "s", "parameters": parameters}


async def poll(client: httpx.AsyncClient, path: str, plan: str) -> tuple[str, list[str]]:
    """Poll a last_operation URL until a terminal state; returns it and the descriptions seen."""
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer = await client.get(path, params=ids(plan))
        assert answer.status_code in (200, 410), answer.text
        if answer.status_code == 410:
            return "gone", seen
        body = answer.json()
        if "description" in body:
            seen.append(body["description"])
        if body["state"] != "in progress":
            return str(body["state"]), seen
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} still in progress after 30s")


@pytest.fixture
async def client() -> Any:
    async with run_broker(broker) as running:
        yield running.client


async def test_catalog_offers_the_documented_plans(client: httpx.AsyncClient) -> None:
    """One bindable service `sandbox` with plans sync, async, param, unbindable, rotatable."""
    catalog = (await client.get("/v2/catalog")).json()
    (service,) = catalog["services"]
    assert service["name"] == "sandbox" and service["id"] == SERVICE_ID
    assert service["bindable"] and service["instances_retrievable"]
    assert service["bindings_retrievable"] and service["plan_updateable"]
    plans = {p["name"]: p for p in service["plans"]}
    assert list(plans) == ["sync", "async", "param", "unbindable", "rotatable"]
    assert plans["unbindable"]["bindable"] is False
    assert plans["rotatable"]["binding_rotatable"] is True
    assert all(p["maintenance_info"]["version"] == "1.0.0" for p in plans.values())
    schema = plans["param"]["schemas"]["service_instance"]["create"]["parameters"]
    assert schema["$schema"] == DRAFT_04
    size = schema["properties"]["size"]
    assert (size["type"], size["minimum"], size["maximum"], size["default"]) == (
        "integer",
        1,
        10,
        1,
    )
    assert schema["properties"]["name"]["type"] == "string"
    assert schema["properties"]["secret"]["writeOnly"] is True


async def test_bind_credentials_are_random_per_binding_and_stable_per_retry(
    client: httpx.AsyncClient,
) -> None:
    """Two bindings get different passwords; a retried bind gets the same one back."""
    assert (
        await client.put("/v2/service_instances/s1", json=provision_body("sync"))
    ).status_code == 201
    first = await client.put("/v2/service_instances/s1/service_bindings/b1", json=ids("sync"))
    second = await client.put("/v2/service_instances/s1/service_bindings/b2", json=ids("sync"))
    assert first.status_code == second.status_code == 201
    one, two = first.json()["credentials"], second.json()["credentials"]
    assert set(one) >= {"uri", "username", "password"}
    assert one["password"] != two["password"] and one["password"] in one["uri"]
    retry = await client.put("/v2/service_instances/s1/service_bindings/b1", json=ids("sync"))
    assert retry.status_code == 200 and retry.json()["credentials"] == one


async def test_param_plan_validates_and_applies_defaults(client: httpx.AsyncClient) -> None:
    """size 11 → 400 naming size; unknown parameter → 400; size defaults to 1."""
    too_big = await client.put("/v2/service_instances/p0", json=provision_body("param", size=11))
    assert too_big.status_code == 400 and "size" in too_big.json()["description"]
    unknown = await client.put("/v2/service_instances/p0", json=provision_body("param", colour=1))
    assert unknown.status_code == 400
    ok = await client.put("/v2/service_instances/p1", json=provision_body("param", name="n"))
    assert ok.status_code == 201
    fetched = (await client.get("/v2/service_instances/p1")).json()
    assert fetched["parameters"]["size"] == 1 and fetched["parameters"]["name"] == "n"


async def test_param_plan_never_shows_the_write_only_secret(client: httpx.AsyncClient) -> None:
    """The `secret` parameter is accepted but not returned in clear by fetch."""
    body = provision_body("param", secret="hunter2-very-secret")
    assert (await client.put("/v2/service_instances/p2", json=body)).status_code == 201
    fetched = await client.get("/v2/service_instances/p2")
    assert "hunter2-very-secret" not in fetched.text
    assert fetched.json()["parameters"]["secret"] == "***"
    wrong = await client.put("/v2/service_instances/p3", json=provision_body("param", secret=5))
    assert wrong.status_code == 400 and "secret" in wrong.json()["description"]


async def test_async_plan_requires_accepts_incomplete(client: httpx.AsyncClient) -> None:
    """Without accepts_incomplete the async plan answers 422 AsyncRequired."""
    answer = await client.put("/v2/service_instances/a0", json=provision_body("async"))
    assert answer.status_code == 422 and answer.json()["error"] == "AsyncRequired"


async def test_async_plan_reports_progress_then_succeeds(client: httpx.AsyncClient) -> None:
    """202, progress descriptions while running, then succeeded; binding is async too."""
    body = provision_body("async", delay_seconds=0.4)
    accepted = await client.put(
        "/v2/service_instances/a1", json=body, params={"accepts_incomplete": "true"}
    )
    assert accepted.status_code == 202, accepted.text
    state, seen = await poll(client, "/v2/service_instances/a1/last_operation", "async")
    assert state == "succeeded"
    assert any("step" in d for d in seen), seen
    bind = await client.put(
        "/v2/service_instances/a1/service_bindings/b1",
        json={**ids("async"), "parameters": {"delay_seconds": 0.2}},
        params={"accepts_incomplete": "true"},
    )
    assert bind.status_code == 202 and "credentials" not in bind.json()
    path = "/v2/service_instances/a1/service_bindings/b1/last_operation"
    assert (await poll(client, path, "async"))[0] == "succeeded"
    fetched = await client.get("/v2/service_instances/a1/service_bindings/b1")
    assert fetched.status_code == 200 and "password" in fetched.json()["credentials"]


async def test_fail_parameter_fails_sync_with_500(client: httpx.AsyncClient) -> None:
    """fail=true on a sync plan answers 500 with a description, and leaves no instance."""
    answer = await client.put("/v2/service_instances/f1", json=provision_body("sync", fail=True))
    assert answer.status_code == 500 and "fail=true" in answer.json()["description"]
    assert (await client.get("/v2/service_instances/f1")).status_code == 404


async def test_fail_parameter_fails_async_operation(client: httpx.AsyncClient) -> None:
    """fail=true on the async plan ends in state failed with the description."""
    body = provision_body("async", fail=True, delay_seconds=0.1)
    accepted = await client.put(
        "/v2/service_instances/f2", json=body, params={"accepts_incomplete": "true"}
    )
    assert accepted.status_code == 202
    path = "/v2/service_instances/f2/last_operation"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        last = (await client.get(path, params=ids("async"))).json()
        if last["state"] != "in progress":
            break
        await asyncio.sleep(0.05)
    assert last["state"] == "failed" and "fail=true" in last["description"]


async def test_unbindable_plan_refuses_binds(client: httpx.AsyncClient) -> None:
    """A bind on plan unbindable answers 400 and creates nothing."""
    assert (
        await client.put("/v2/service_instances/u1", json=provision_body("unbindable"))
    ).status_code == 201
    path = "/v2/service_instances/u1/service_bindings/b1"
    assert (await client.put(path, json=ids("unbindable"))).status_code == 400
    assert (await client.get(path)).status_code == 404


async def test_rotatable_plan_creates_a_successor_binding(client: httpx.AsyncClient) -> None:
    """A bind naming predecessor_binding_id succeeds; both bindings stay valid."""
    assert (
        await client.put("/v2/service_instances/r1", json=provision_body("rotatable"))
    ).status_code == 201
    base = "/v2/service_instances/r1/service_bindings"
    old = await client.put(f"{base}/old", json=ids("rotatable"))
    new = await client.put(
        f"{base}/new", json={**ids("rotatable"), "predecessor_binding_id": "old"}
    )
    assert old.status_code == new.status_code == 201
    assert new.json()["credentials"]["password"] != old.json()["credentials"]["password"]
    assert (await client.get(f"{base}/old")).status_code == 200
    assert (await client.get(f"{base}/new")).status_code == 200
