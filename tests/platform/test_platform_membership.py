"""Namespace membership: a user who is not the admin sees and acts only in their namespaces.

``staging`` lists ``bob`` as its only member; alice is an ordinary user who is not. For alice,
staging does not exist: lists leave it out (also ``namespace=*``), naming it or anything in it
answers 404 as for a namespace that was never created, and nothing in it changes. A namespace
that lists no members (``default``) stays open to every user.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from platform_fake_broker import FakeBroker

from conftest import (
    ADMIN_TOKEN,
    ALICE_TOKEN,
    PlatformUnderTest,
    platform_settings,
    running_platform,
)
from servicebay.platform.api.openapi import ROUTES

BOB_TOKEN = "bob-token-0123456789"


@dataclass
class Staging:
    """The platform, and what the admin created in the members-only ``staging``."""

    platform: PlatformUnderTest
    instance_id: str
    binding_id: str
    operation_id: str
    password: str


@pytest.fixture
async def staging(tmp_path: Path, db_url: str, fake: FakeBroker) -> AsyncIterator[Staging]:
    """``staging`` (members: bob) with instance ``db1``, its binding ``db1-web`` and a key."""
    settings = platform_settings(
        tmp_path, db_url, tokens={ADMIN_TOKEN: "admin", ALICE_TOKEN: "alice", BOB_TOKEN: "bob"}
    )
    async with running_platform(settings, httpx.ASGITransport(app=fake.app())) as platform:
        client = platform.client
        await platform.register_fake()
        r = await client.post("/api/v1/namespaces", json={"name": "staging", "members": ["bob"]})
        assert r.status_code == 201, r.text
        assert r.json()["members"] == ["bob"]
        r = await client.post(
            "/api/v1/instances",
            json={"service": "fake", "plan": "sync", "name": "db1", "namespace": "staging"},
        )
        assert r.status_code == 202, r.text
        instance_id = r.json()["instance"]["id"]
        assert (await platform.wait(r.json()["operation"]))["state"] == "succeeded"
        r = await client.post(
            "/api/v1/bindings", json={"instance": "db1", "namespace": "staging", "app": "web"}
        )
        assert r.status_code == 202, r.text
        binding_id = r.json()["binding"]["id"]
        operation_id = r.json()["operation"]["id"]
        assert (await platform.wait(r.json()["operation"]))["state"] == "succeeded"
        r = await client.post(
            "/api/v1/bindings", json={"instance": "db1", "namespace": "staging", "kind": "key"}
        )
        assert (await platform.wait(r.json()["operation"]))["state"] == "succeeded"
        shown = await client.get("/api/v1/bindings/db1-web", params={"namespace": "staging"})
        password = shown.json()["credentials"]["password"]
        yield Staging(platform, instance_id, binding_id, operation_id, password)


# What a non-member sends to each route of the table, aimed at staging. A route added to
# ROUTES without an entry here fails the test below, so none can be left out.
_NAME = {
    "/brokers": "fake",
    "/namespaces": "staging",
    "/instances": "db1",
    "/bindings": "db1-web",
    "/marketplace": "fake",
    "/apps": "web",
}
_BODY: dict[str, dict[str, Any] | None] = {
    "register_broker": {"name": "b2", "url": "http://127.0.0.1:1"},
    "create_namespace": {"name": "staging", "members": ["alice"]},
    "replace_namespace": {"members": ["alice"]},
    "provision": {"service": "fake", "plan": "sync", "name": "db2", "namespace": "staging"},
    "update_instance": {"parameters": {"size": 2}},
    "bind": {"instance": "db1", "namespace": "staging", "app": "evil"},
}
# Routes that are not about one namespace's records answer alice normally (no staging data);
# a list of records answers for every namespace (``*``), and 404 for staging alone.
_GLOBAL = {"healthz", "whoami", "list_brokers", "get_broker", "list_namespaces", "list_audit"}
_GLOBAL |= {"list_operations"}  # filtered like the audit trail: staging's are left out
_LISTS = {"list_instances", "list_bindings"}


def _request(route: tuple[Any, ...], operation_id: str) -> tuple[str, str, Any]:
    method, path, handler, *_ = route
    prefix = "/" + path.split("/")[1]
    url = (
        path.replace("{name}", _NAME.get(prefix, "x"))
        .replace("{service}", "fake")
        .replace("{app}", "web")
        .replace("{id}", operation_id)
    )
    return method, f"/api/v1{url}", _BODY.get(handler)


async def test_every_route_gives_a_non_member_nothing_of_a_members_only_namespace(
    staging: Staging,
) -> None:
    """alice, not a member of staging, gets 404 (or 403 for admin-only routes), or a global
    answer with nothing of staging in it, from every route of the table; nothing changes."""
    admin = staging.platform.client
    before = {
        path: (await admin.get(path, params={"namespace": "staging"})).json()
        for path in ("/api/v1/instances", "/api/v1/bindings")
    }
    secrets = {
        staging.instance_id,
        staging.binding_id,
        staging.operation_id,
        staging.password,
        "bob",
        "db1",
    }
    seen = set()
    async with staging.platform.as_user(ALICE_TOKEN) as alice:
        for route in ROUTES:
            method, url, body = _request(route, staging.operation_id)
            handler = route[2]
            seen.add(handler)
            for params in ({"namespace": "staging"}, {"namespace": "*"}):
                r = await alice.request(method, url, params=params, json=body)
                if handler in _GLOBAL or (handler in _LISTS and params["namespace"] == "*"):
                    assert r.status_code == 200, (handler, r.text)
                elif handler in ("register_broker", "refresh_broker", "remove_broker"):
                    assert r.status_code in (400, 403, 404), (handler, r.text)
                elif handler in (
                    "create_namespace",
                    "replace_namespace",
                    "delete_namespace",
                ):
                    assert r.status_code == 403, (handler, r.text)
                elif params["namespace"] == "*" and handler not in ("get_operation",):
                    assert r.status_code in (400, 404), (handler, r.text)
                else:
                    assert r.status_code == 404, (handler, r.status_code, r.text)
                # The operation id is what alice sent in that one route; anything else
                # of staging in an answer is a leak.
                text = r.text
                if handler == "get_operation":
                    text = text.replace(staging.operation_id, "")
                leaked = {s for s in secrets if s in text} - (
                    {"db1"} if r.status_code in (400, 404) and "db1" in url else set()
                )
                assert not leaked, (handler, params, leaked, r.text)
    assert seen == {route[2] for route in ROUTES}
    for path, shown in before.items():
        assert (await admin.get(path, params={"namespace": "staging"})).json() == shown
    instances = (await admin.get("/api/v1/instances", params={"namespace": "*"})).json()
    assert [i["name"] for i in instances["items"] if i["namespace"] == "staging"] == ["db1"]
    audit = (await admin.get("/api/v1/audit")).json()["items"]
    assert not [e for e in audit if e["user"] == "alice"]


async def test_a_member_sees_and_acts_in_the_namespace(staging: Staging) -> None:
    """bob, the member, lists, reads, binds to and audits staging like the admin would."""
    async with staging.platform.as_user(BOB_TOKEN) as bob:
        names = [n["name"] for n in (await bob.get("/api/v1/namespaces")).json()["items"]]
        assert names == ["default", "staging"]
        every = (await bob.get("/api/v1/instances", params={"namespace": "*"})).json()
        assert [i["name"] for i in every["items"]] == ["db1"]
        r = await bob.get("/api/v1/instances/db1", params={"namespace": "staging"})
        assert r.status_code == 200 and r.json()["id"] == staging.instance_id
        r = await bob.get(f"/api/v1/operations/{staging.operation_id}")
        assert r.status_code == 200, r.text
        r = await bob.post(
            "/api/v1/bindings", json={"instance": "db1", "namespace": "staging", "app": "bobs"}
        )
        assert r.status_code == 202, r.text
        await staging.platform.wait(r.json()["operation"])
        targets = {e["target"] for e in (await bob.get("/api/v1/audit")).json()["items"]}
        assert "staging/db1" in targets and "staging/db1-bobs" in targets
        operations = (await bob.get("/api/v1/operations")).json()["items"]
        assert staging.operation_id in {o["id"] for o in operations}


async def test_lists_leave_out_namespaces_the_user_is_not_a_member_of(staging: Staging) -> None:
    """alice's lists (also of every namespace) hold only what is in namespaces open to her."""
    async with staging.platform.as_user(ALICE_TOKEN) as alice:
        r = await alice.post(
            "/api/v1/instances", json={"service": "fake", "plan": "sync", "name": "mine"}
        )
        assert r.status_code == 202, r.text  # default lists no members: open to everyone
        await staging.platform.wait(r.json()["operation"])
        names = [n["name"] for n in (await alice.get("/api/v1/namespaces")).json()["items"]]
        assert names == ["default"]
        every = (await alice.get("/api/v1/instances", params={"namespace": "*"})).json()
        assert [(i["namespace"], i["name"]) for i in every["items"]] == [("default", "mine")]
        bindings = (await alice.get("/api/v1/bindings", params={"namespace": "*"})).json()
        assert bindings["items"] == []
        operations = (await alice.get("/api/v1/operations")).json()["items"]
        assert operations and {o["namespace"] for o in operations} == {"default"}
        audit = (await alice.get("/api/v1/audit")).json()["items"]
        assert audit and not [e for e in audit if e["target"].startswith("staging")]
        assert {e["target"] for e in audit if e["action"] == "broker.register"} == {"fake"}
        hidden = await alice.get("/api/v1/audit", params={"target": "staging/db1"})
        assert hidden.json()["items"] == []


async def test_a_hidden_namespace_answers_like_one_that_does_not_exist(
    staging: Staging,
) -> None:
    """The 404 for staging is the 404 for a namespace nobody created: same code, same form."""
    async with staging.platform.as_user(ALICE_TOKEN) as alice:
        hidden = await alice.get("/api/v1/instances/db1", params={"namespace": "staging"})
        absent = await alice.get("/api/v1/instances/db1", params={"namespace": "nowhere"})
    assert (hidden.status_code, absent.status_code) == (404, 404)
    assert hidden.json()["error"] == absent.json()["error"] == "namespace_not_found"
    assert hidden.json()["message"].replace("staging", "X") == absent.json()["message"].replace(
        "nowhere", "X"
    )


async def test_the_admin_manages_members_and_a_new_member_gets_in(staging: Staging) -> None:
    """Replacing the settings with alice among the members opens staging to her; settings
    without ``members`` keep them; an empty list opens the namespace to all again."""
    admin = staging.platform.client
    read = await admin.get("/api/v1/namespaces/staging")
    r = await admin.put(
        "/api/v1/namespaces/staging",
        json={"members": ["bob", "alice"]},
        headers={"If-Match": read.headers["etag"]},
    )
    assert r.status_code == 200 and r.json()["members"] == ["alice", "bob"], r.text
    async with staging.platform.as_user(ALICE_TOKEN) as alice:
        r = await alice.get("/api/v1/instances/db1", params={"namespace": "staging"})
        assert r.status_code == 200, r.text
    r = await admin.put("/api/v1/namespaces/staging", json={"members": ["bob"]})
    assert r.status_code == 200, r.text
    async with staging.platform.as_user(ALICE_TOKEN) as alice:
        r = await alice.get("/api/v1/instances/db1", params={"namespace": "staging"})
        assert r.status_code == 404, r.text
    bad = await admin.put("/api/v1/namespaces/staging", json={"members": ["has space"]})
    assert bad.status_code == 400, bad.text
    # Settings sent without members (a file from before membership) keep them: fail closed.
    kept = await admin.put("/api/v1/namespaces/staging", json={"description": "old file"})
    assert kept.status_code == 200 and kept.json()["members"] == ["bob"], kept.text
    opened = await admin.put("/api/v1/namespaces/staging", json={"members": []})
    assert opened.json()["members"] == [], opened.text
    async with staging.platform.as_user(ALICE_TOKEN) as alice:
        r = await alice.get("/api/v1/instances/db1", params={"namespace": "staging"})
        assert r.status_code == 200, r.text  # no members listed: open to every user
