"""Orphan mitigation, row by row of the spec's table, against a broker that misbehaves.

For every row that calls for it the platform fails the operation, starts an
``orphan_mitigation`` operation visible to users, and keeps deleting until the broker confirms
(the fake fails the first deletes on purpose). Rows that do not call for it send no delete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from platform_fake_broker import PASSWORD, USERNAME, FakeBroker

from conftest import (
    FAKE_URL,
    PlatformUnderTest,
    platform_settings,
    running_platform,
    served,
)


async def _provision(platform: PlatformUnderTest, plan: str, name: str) -> dict[str, Any]:
    await platform.register_fake()
    r = await platform.client.post(
        "/api/v1/instances", json={"service": "fake", "plan": plan, "name": name}
    )
    assert r.status_code == 202, r.text
    return await platform.wait(r.json()["operation"])


async def _assert_mitigated(
    platform: PlatformUnderTest, fake: FakeBroker, failed: dict[str, Any], target_id: str
) -> None:
    assert failed["state"] == "failed", failed
    assert failed["orphan_mitigation"], failed
    mitigation = await platform.wait({"id": failed["orphan_mitigation"]})
    assert mitigation["kind"] == "orphan_mitigation"
    assert mitigation["parent"] == failed["id"]
    assert mitigation["state"] == "succeeded", mitigation
    # The fake refuses the first two deletes: the platform kept trying until it confirmed.
    assert fake.count("DELETE", target_id) == fake.fail_deletes + 1
    assert mitigation["attempts"] >= fake.fail_deletes + 1
    assert target_id not in fake.instances and target_id not in fake.bindings


@pytest.mark.parametrize("plan", ["async-fail", "error500", "malformed201", "malformed202"])
async def test_failed_provision_is_mitigated_until_the_broker_confirms(
    platform: PlatformUnderTest, fake: FakeBroker, plan: str
) -> None:
    """Rows: last_operation failed, 5xx, malformed 201, malformed 202 (provisioning) → delete."""
    op = await _provision(platform, plan, "orphan")
    instance = (await platform.client.get("/api/v1/instances/orphan")).json()
    await _assert_mitigated(platform, fake, op, instance["id"])
    instance = (await platform.client.get("/api/v1/instances/orphan")).json()
    assert instance["state"] == "failed"
    assert instance["last_operation"]["kind"] == "orphan_mitigation"


async def test_provision_timeout_is_mitigated(tmp_path: Path, db_url: str) -> None:
    """Row: provisioning timeout → delete (needs a real socket so the timeout is real)."""
    fake = FakeBroker(slow_seconds=2.5)
    async with served(fake.app()) as url:
        settings = platform_settings(tmp_path, db_url, broker_timeout=0.5)
        async with running_platform(settings) as platform:
            client = platform.client
            r = await client.post(
                "/api/v1/brokers",
                json={"name": "fake", "url": url, "username": USERNAME, "password": PASSWORD},
            )
            assert r.status_code == 201, r.text
            r = await client.post(
                "/api/v1/instances", json={"service": "fake", "plan": "slow", "name": "late"}
            )
            op = await platform.wait(r.json()["operation"])
            assert "in time" in op["description"]
            instance = (await client.get("/api/v1/instances/late")).json()
            await _assert_mitigated(platform, fake, op, instance["id"])


@pytest.mark.parametrize("mode", ["error500", "malformed201", "malformed202", "async-fail"])
async def test_failed_bind_is_mitigated(
    platform: PlatformUnderTest, fake: FakeBroker, mode: str
) -> None:
    """Rows: 5xx, malformed 201/202, last_operation failed (binding) → unbind until confirmed."""
    op = await _provision(platform, "sync", "svc")
    assert op["state"] == "succeeded"
    fake.bind_mode = mode
    r = await platform.client.post("/api/v1/bindings", json={"instance": "svc", "app": "web"})
    assert r.status_code == 202, r.text
    binding_id = r.json()["binding"]["id"]
    failed = await platform.wait(r.json()["operation"])
    await _assert_mitigated(platform, fake, failed, binding_id)
    binding = (await platform.client.get("/api/v1/bindings/svc-web")).json()
    assert binding["state"] == "failed"


async def test_rejected_provision_sends_no_delete(
    platform: PlatformUnderTest, fake: FakeBroker
) -> None:
    """Row: other 4xx → request rejected, no orphan mitigation."""
    op = await _provision(platform, "reject", "nope")
    assert op["state"] == "failed" and op["orphan_mitigation"] is None
    assert "400" in op["description"]
    assert fake.count("DELETE") == 0


async def test_deprovision_5xx_keeps_deleting_then_removes_the_record(
    platform: PlatformUnderTest, fake: FakeBroker
) -> None:
    """Row: 5xx on deprovisioning → mitigation deletes until confirmed; the record goes away."""
    await _provision(platform, "sync", "gone")
    r = await platform.client.delete("/api/v1/instances/gone")
    failed = await platform.wait(r.json()["operation"])
    assert failed["state"] == "failed" and failed["orphan_mitigation"]
    mitigation = await platform.wait({"id": failed["orphan_mitigation"]})
    assert mitigation["state"] == "succeeded"
    assert (await platform.client.get("/api/v1/instances/gone")).status_code == 404
    assert fake.instances == {}


async def test_mitigation_in_progress_is_visible(
    platform: PlatformUnderTest, fake: FakeBroker
) -> None:
    """While the broker keeps refusing, users see the mitigation operation in progress."""
    fake.fail_deletes = 10_000
    op = await _provision(platform, "error500", "stuck")
    mitigation_id = op["orphan_mitigation"]
    seen: dict[str, Any] = {}
    for _ in range(100):
        seen = (await platform.client.get(f"/api/v1/operations/{mitigation_id}")).json()
        if seen["attempts"] >= 3:
            break
        await platform.client.get(f"/api/v1/operations/{mitigation_id}", params={"wait": 0.1})
    assert seen["state"] == "in progress" and seen["attempts"] >= 3
    assert "attempt" in seen["description"] and "500" in seen["description"]
    instance = (await platform.client.get("/api/v1/instances/stuck")).json()
    assert instance["state"] == "orphan_mitigation"
    # A deprovision is refused while mitigation runs.
    r = await platform.client.delete("/api/v1/instances/stuck")
    assert r.status_code == 409 and r.json()["error"] == "operation_in_progress"
    _ = FAKE_URL
