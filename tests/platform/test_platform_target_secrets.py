"""A broker quoting an instance's or a binding's sensitive parameters in its answer to a later
operation on it (a deprovision, an unbind, an orphan mitigation, a bind, an update) never gets
them stored or shown: those requests send none, or other ones, yet every operation on a record
masks the sensitive values the record keeps, on SQLite and PostgreSQL
(``test_platform_sensitive_echo`` covers the values a request sends)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from platform_fake_broker import FakeBroker

from conftest import (
    PlatformUnderTest,
    assert_masked,
    downgraded,
    platform_settings,
    running_platform,
    stored_text,
)
from servicebay.platform.store import tables

SECRET = "s3cr3t-Pa55-\u00e9t\u00e9-41d7"  # writeOnly in the instance's schema
TOKEN = "bind-t0ken-Zq81"  # x-sensitive in the binding's schema


class QuotingBroker(httpx.AsyncBaseTransport):
    """The fake broker, except that it remembers the parameters each instance and binding was
    created with and quotes all it holds for the target (as JSON, escaped and not) where
    ``quote`` says: ``"deprovision"``, ``"unbind"``, ``"bind"``, ``"update"`` refuse those with
    400; ``"async-deprovision"`` accepts a deprovision (202), fails it in ``last_operation`` and
    answers 500 to the orphan mitigation's deletes while ``refuse_mitigation`` is set."""

    def __init__(self, fake: FakeBroker) -> None:
        fake.fail_deletes = 0
        self.inner = httpx.ASGITransport(app=fake.app())
        self.created: dict[str, Any] = {}  # instance or binding id -> parameters at creation
        self.quote: str | None = None
        self.refuse_mitigation = True
        self.deleting: set[str] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.split("/")[3:]  # /v2/service_instances/{iid}/...
        if not request.url.path.startswith("/v2/service_instances/"):
            return await self.inner.handle_async_request(request)
        iid = parts[0]
        bid = parts[2] if len(parts) > 2 and parts[1] == "service_bindings" else None
        if parts[-1] == "last_operation" and bid is None and iid in self.deleting:
            text = f"cannot delete: {self._held(iid, None)}"
            return httpx.Response(200, json={"state": "failed", "description": text})
        method = request.method
        if method == "PUT" and self.quote != "bind":
            self.created[bid or iid] = json.loads(request.content).get("parameters")
        kind = {"PUT": "bind", "PATCH": "update"}.get(method, "unbind" if bid else "deprovision")
        if self.quote == "async-deprovision" and kind == "deprovision":
            if iid not in self.deleting:
                self.deleting.add(iid)
                return httpx.Response(202, json={"operation": "deleting"})
            if self.refuse_mitigation:
                return self._refused(500, iid, bid)
        elif self.quote == kind:
            return self._refused(400, iid, bid)
        return await self.inner.handle_async_request(request)

    def _held(self, iid: str, bid: str | None) -> str:
        held = {"instance": self.created.get(iid), "binding": self.created.get(bid or "")}
        return f"{json.dumps(held)} {json.dumps(held, ensure_ascii=False)}"

    def _refused(self, status: int, iid: str, bid: str | None) -> httpx.Response:
        text = f"refused, it holds {self._held(iid, bid)}"
        return httpx.Response(status, json={"error": "Refused", "description": text})


@pytest.fixture
def broker(fake: FakeBroker) -> QuotingBroker:
    return QuotingBroker(fake)


@pytest.fixture
async def platform(
    tmp_path: Path, db_url: str, broker: QuotingBroker
) -> AsyncIterator[PlatformUnderTest]:
    """The platform talking to the fake broker through ``QuotingBroker``."""
    async with running_platform(platform_settings(tmp_path, db_url), broker) as platform:
        yield platform


async def _done(platform: PlatformUnderTest, response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    return await platform.wait(response.json()["operation"])


async def _provision(platform: PlatformUnderTest, name: str = "p1") -> None:
    body: dict[str, Any] = {"service": "fake", "plan": "param", "name": name}
    body["parameters"] = {"secret": SECRET, "size": 3}
    op = await _done(platform, await platform.client.post("/api/v1/instances", json=body))
    assert op["state"] == "succeeded", op


async def _bind(platform: PlatformUnderTest) -> dict[str, Any]:
    body = {"instance": "p1", "kind": "key", "name": "k1", "parameters": {"token": TOKEN}}
    return await _done(platform, await platform.client.post("/api/v1/bindings", json=body))


async def test_deprovision_answer_quoting_the_instance_secret_is_stored_masked(
    platform: PlatformUnderTest, broker: QuotingBroker, db_url: str
) -> None:
    """A deprovision refused with the instance's provision parameters quoted: the description
    keeps the broker's words, the writeOnly value masked, in the database and every answer."""
    await platform.register_fake()
    await _provision(platform)
    broker.quote = "deprovision"
    op = await _done(platform, await platform.client.delete("/api/v1/instances/p1"))
    assert op["state"] == "failed"
    assert "refused, it holds" in op["description"]
    assert '"secret": "***"' in op["description"]
    assert '"size": 3' in op["description"]  # what is not sensitive stays readable
    await assert_masked(platform, db_url, SECRET)


async def test_async_deprovision_and_orphan_mitigation_quoting_the_secret_are_masked(
    platform: PlatformUnderTest, broker: QuotingBroker, db_url: str
) -> None:
    """An accepted deprovision failing in last_operation with the instance's secret quoted, then
    the orphan mitigation's deletes refused quoting it: masked in both operations."""
    await platform.register_fake()
    await _provision(platform)
    broker.quote = "async-deprovision"
    op = await _done(platform, await platform.client.delete("/api/v1/instances/p1"))
    assert op["state"] == "failed"
    assert op["description"].startswith("failed: cannot delete: ")
    assert '"secret": "***"' in op["description"]
    child = op["orphan_mitigation"]
    assert child is not None
    deadline = time.monotonic() + 20
    while True:  # the mitigation retries; its description quotes the broker's last refusal
        mitigation = (await platform.client.get(f"/api/v1/operations/{child}")).json()
        if "refused, it holds" in (mitigation["description"] or ""):
            break
        assert time.monotonic() < deadline, mitigation
        await asyncio.sleep(0.02)
    assert '"secret": "***"' in mitigation["description"]
    await assert_masked(platform, db_url, SECRET)
    broker.refuse_mitigation = False
    assert (await platform.wait({"id": child}))["state"] == "succeeded"
    assert (await platform.client.get("/api/v1/instances/p1")).status_code == 404
    await assert_masked(platform, db_url, SECRET)


async def test_unbind_answer_quoting_the_binding_and_instance_secrets_is_stored_masked(
    platform: PlatformUnderTest, broker: QuotingBroker, db_url: str
) -> None:
    """An unbind refused with the binding's and its instance's parameters quoted: both sensitive
    values masked."""
    await platform.register_fake()
    await _provision(platform)
    assert (await _bind(platform))["state"] == "succeeded"
    broker.quote = "unbind"
    op = await _done(platform, await platform.client.delete("/api/v1/bindings/k1"))
    assert op["state"] == "failed"
    assert '"token": "***"' in op["description"]
    assert '"secret": "***"' in op["description"]
    await assert_masked(platform, db_url, SECRET, TOKEN)


async def test_bind_answer_quoting_the_instance_secret_is_stored_masked(
    platform: PlatformUnderTest, broker: QuotingBroker, db_url: str
) -> None:
    """A bind refused with its instance's parameters quoted: the instance's value is masked as
    the bind's own."""
    await platform.register_fake()
    await _provision(platform)
    broker.quote = "bind"
    op = await _bind(platform)
    assert op["state"] == "failed"
    assert '"secret": "***"' in op["description"]
    await assert_masked(platform, db_url, SECRET, TOKEN)


async def test_update_answer_quoting_the_value_it_replaces_is_stored_masked(
    platform: PlatformUnderTest, broker: QuotingBroker, db_url: str
) -> None:
    """An update replacing the sensitive value, refused with the old one quoted: masked too."""
    await platform.register_fake()
    await _provision(platform)
    broker.quote = "update"
    patch = {"parameters": {"secret": "an0ther-Value-7c2e"}}
    op = await _done(platform, await platform.client.patch("/api/v1/instances/p1", json=patch))
    assert op["state"] == "failed"
    assert '"secret": "***"' in op["description"]
    await assert_masked(platform, db_url, SECRET, "an0ther-Value-7c2e")


def _recorded_in_clear(db_url: str, cipher: Any) -> None:
    """Down to 0005, then make the deprovision and unbind look as the platform recorded them
    before they carried their target's values: requests without them, the broker's quote of
    the instance's and the binding's values in clear in the description and audit entry."""
    o, a = tables.operations, tables.audit
    with downgraded(db_url, "0005", cipher) as conn:
        kinds = ["deprovision", "unbind"]
        query = sa.select(o.c.id, o.c.kind, o.c.request).where(o.c.kind.in_(kinds))
        for key, kind, sealed in conn.execute(query).all():
            request = cipher.open(sealed) or {}
            assert request.pop("secret_values")
            held = SECRET if kind == "deprovision" else f"{SECRET} and {TOKEN}"
            quote = f"broker answered 400 (Refused: it holds {held})"
            values = {"request": cipher.seal(request), "description": quote}
            conn.execute(sa.update(o).where(o.c.id == key).values(values))
            details = {"description": quote}
            conn.execute(sa.update(a).where(a.c.operation_id == key).values(details=details))


async def test_start_masks_target_secrets_quoted_in_later_operations_before(
    tmp_path: Path, db_url: str, fake: FakeBroker
) -> None:
    """A deprovision and an unbind recorded before they carried their target's values, with the
    instance's and the binding's sensitive values in clear, show them as *** once the platform
    has started on the database again (migration 0006), in the database and every answer."""
    settings = platform_settings(tmp_path, db_url)
    broker = QuotingBroker(fake)
    async with running_platform(settings, broker) as platform:
        await platform.register_fake()
        await _provision(platform, "p1")
        assert (await _bind(platform))["state"] == "succeeded"
        broker.quote = "unbind"
        r = await platform.client.delete("/api/v1/bindings/k1")
        assert (await _done(platform, r))["state"] == "failed"
        await _provision(platform, "p2")
        broker.quote = "deprovision"
        r = await platform.client.delete("/api/v1/instances/p2")
        assert (await _done(platform, r))["state"] == "failed"
        cipher = platform.app.state.platform.cipher
    _recorded_in_clear(db_url, cipher)
    assert SECRET in stored_text(db_url) and TOKEN in stored_text(db_url)

    async with running_platform(settings, QuotingBroker(fake)) as platform:
        await assert_masked(platform, db_url, SECRET, TOKEN)
        operations = (await platform.client.get("/api/v1/operations")).json()["items"]
    quoted = [o for o in operations if "it holds" in (o["description"] or "")]
    assert sorted(o["kind"] for o in quoted) == ["deprovision", "unbind"]
    descriptions = {o["kind"]: o["description"] for o in quoted}
    assert descriptions["deprovision"].endswith("it holds ***)")
    assert descriptions["unbind"].endswith("it holds *** and ***)")
