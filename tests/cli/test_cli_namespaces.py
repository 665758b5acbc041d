"""Namespaces seen through `bay -n`: their constraints are checked before anything is sent."""

from __future__ import annotations

import json

import httpx

from conftest import ADMIN_TOKEN, Bay, unique


def _namespace(bay: Bay, **settings: object) -> str:
    name = unique("ns")
    answer = httpx.post(
        f"{bay.platform.url}/api/v1/namespaces",
        json={"name": name, **settings},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert answer.status_code == 201, answer.text
    return name


def test_namespace_constraint_is_checked_client_side(bay: Bay, registered: str) -> None:
    """A namespace capping size at 2: size=3 is refused with the constraint named."""
    ns = _namespace(bay, constraints={"sandbox/param": {"properties": {"size": {"maximum": 2}}}})
    result = bay("provision", "sandbox", "capped", "--plan", "param", "-p", "size=3", "-n", ns)
    assert result.exit_code == 2
    assert "size: must be <= 2 (got 3) [namespace constraint]" in result.stderr
    ok = bay("provision", "sandbox", "capped", "--plan", "param", "-p", "size=2", "-n", ns)
    assert ok.exit_code == 0, ok.output
    listed = json.loads(bay("instances", "-n", ns, "-o", "json").stdout)
    assert [(i["name"], i["namespace"]) for i in listed] == [("capped", ns)]
    # The same name lives side by side in another namespace.
    assert "capped" not in [i["name"] for i in json.loads(bay("instances", "-o", "json").stdout)]


def test_invisible_plan_is_not_offered(bay: Bay, registered: str) -> None:
    """A namespace that only shows the sync plan: other plans are unknown there (exit 4)."""
    ns = _namespace(bay, visible_plans=["sandbox/sync"])
    market = json.loads(bay("marketplace", "-n", ns, "-o", "json").stdout)
    assert [p["name"] for p in market[0]["plans"]] == ["sync"]
    result = bay("provision", "sandbox", "x", "--plan", "param", "-n", ns)
    assert result.exit_code == 4
    assert "plans: sync" in result.stderr


def test_quota_exceeded_exits_7(bay: Bay, registered: str) -> None:
    """max_instances reached: refused by rule, exit 7."""
    ns = _namespace(bay, max_instances=1)
    assert bay("provision", "sandbox", "one", "--plan", "sync", "-n", ns).exit_code == 0
    result = bay("provision", "sandbox", "two", "--plan", "sync", "-n", ns)
    assert result.exit_code == 7, result.output


def test_all_namespaces_listing(bay: Bay, registered: str) -> None:
    """`-n '*'` lists instances of every namespace."""
    ns = _namespace(bay)
    assert bay("provision", "sandbox", "wide", "--plan", "sync", "-n", ns).exit_code == 0
    listed = json.loads(bay("instances", "-n", "*", "-o", "json").stdout)
    assert (ns, "wide") in [(i["namespace"], i["name"]) for i in listed]
