"""Every list command takes ``-n '*'`` (every namespace) the way ``bay instances`` does."""

from __future__ import annotations

import json

from conftest import Bay, unique


def _two_namespaces_with_a_binding(bay: Bay, app: str) -> tuple[str, str]:
    other = unique("ns")
    assert bay("namespace", "create", other).exit_code == 0
    instance = unique("anyns")
    for namespace in ("default", other):
        made = bay("provision", "sandbox", instance, "--plan", "sync", "-n", namespace)
        assert made.exit_code == 0, made.output
        bound = bay("bind", instance, "--app", app, "-n", namespace)
        assert bound.exit_code == 0, bound.output
        key = bay("key", "create", instance, "-n", namespace)
        assert key.exit_code == 0, key.output
    return instance, other


def test_bindings_and_keys_of_every_namespace(bay: Bay, registered: str) -> None:
    """`bay bindings -n '*'` and `bay key list X -n '*'` list both namespaces' records."""
    app = unique("app")
    instance, other = _two_namespaces_with_a_binding(bay, app)
    listed = bay("bindings", "--app", app, "-n", "*", "-o", "json")
    assert listed.exit_code == 0, listed.output
    assert sorted(b["namespace"] for b in json.loads(listed.stdout)) == sorted(["default", other])
    table = bay("bindings", "--app", app, "-n", "*")
    assert table.exit_code == 0 and "NAMESPACE" in table.stdout and other in table.stdout
    keys = bay("key", "list", instance, "-n", "*", "-o", "json")
    assert keys.exit_code == 0, keys.output
    assert sorted(k["namespace"] for k in json.loads(keys.stdout)) == sorted(["default", other])
    one = bay("bindings", "--app", app, "-n", other, "-o", "json")
    assert [b["namespace"] for b in json.loads(one.stdout)] == [other]


def test_operations_api_takes_every_namespace(bay: Bay, registered: str) -> None:
    """GET /api/v1/operations?namespace=* answers 200 with operations of several namespaces."""
    import httpx

    other = unique("ns")
    assert bay("namespace", "create", other).exit_code == 0
    for namespace in ("default", other):
        name = unique("ops")
        assert bay("provision", "sandbox", name, "--plan", "sync", "-n", namespace).exit_code == 0
    answer = httpx.get(
        f"{bay.platform.url}/api/v1/operations",
        params={"namespace": "*", "limit": 1000},
        headers={"Authorization": f"Bearer {bay.token}"},
    )
    assert answer.status_code == 200, answer.text
    assert {"default", other} <= {o["namespace"] for o in answer.json()["items"]}
