"""`bay bind|unbind|bindings` and `bay key ...` against a real platform: no credential printed
unless asked for with --reveal."""

from __future__ import annotations

import json

from conftest import ALICE_TOKEN, Bay, unique


def _ready_instance(bay: Bay) -> str:
    name = unique("inst")
    result = bay("provision", "sandbox", name, "--plan", "sync")
    assert result.exit_code == 0, result.output
    return name


def test_bind_list_unbind(bay: Bay, registered: str) -> None:
    """bind creates INSTANCE-APP, bindings lists it, unbind removes it; no credentials shown."""
    instance = _ready_instance(bay)
    result = bay("bind", instance, "--app", "web")
    assert result.exit_code == 0, result.output
    assert f"{instance}-web" in result.stdout
    assert "password" not in result.stdout
    listed = bay("bindings", "--app", "web", "-o", "json")
    items = json.loads(listed.stdout)
    assert [b["name"] for b in items if b["instance"] == instance] == [f"{instance}-web"]
    assert all("credentials" not in b for b in items)
    gone = bay("unbind", instance, "--app", "web")
    assert gone.exit_code == 0, gone.output
    assert bay("bindings", "--instance", instance, "-o", "json").stdout.strip() == "[]"
    assert bay("deprovision", instance).exit_code == 0


def test_bind_with_name_and_unbind_by_name(bay: Bay, registered: str) -> None:
    """--name sets the binding name; unbind NAME removes it."""
    instance = _ready_instance(bay)
    assert bay("bind", instance, "--app", "api", "--name", f"{instance}-x").exit_code == 0
    assert bay("unbind", f"{instance}-x").exit_code == 0
    assert bay("unbind", f"{instance}-x").exit_code == 4


def test_bind_unbindable_plan_exits_7(bay: Bay, registered: str) -> None:
    """A plan that is not bindable: refused by rule, exit 7."""
    name = unique("nob")
    assert bay("provision", "sandbox", name, "--plan", "unbindable").exit_code == 0
    result = bay("bind", name, "--app", "web")
    assert result.exit_code == 7, result.output


def test_deprovision_with_bindings_exits_5(bay: Bay, registered: str) -> None:
    """Deprovisioning a bound instance: conflict, exit 5, instance kept."""
    instance = _ready_instance(bay)
    assert bay("bind", instance, "--app", "web").exit_code == 0
    assert bay("deprovision", instance).exit_code == 5
    assert bay("instance", instance).exit_code == 0


def test_service_key_lifecycle(bay: Bay, registered: str) -> None:
    """key create/list/show/delete; credentials appear only with --reveal."""
    instance = _ready_instance(bay)
    created = bay("key", "create", instance, "--name", f"{instance}-k")
    assert created.exit_code == 0, created.output
    key = f"{instance}-k"
    listed = bay("key", "list", instance, "-o", "json")
    assert [k["name"] for k in json.loads(listed.stdout)] == [key]
    hidden = bay("key", "show", instance, key, "-o", "json")
    assert hidden.exit_code == 0, hidden.output
    masked = json.loads(hidden.stdout)["credentials"]
    assert masked and set(masked.values()) == {"***"}
    revealed = json.loads(bay("key", "show", instance, key, "--reveal", "-o", "json").stdout)
    assert revealed["credentials"]["password"] not in ("***", "")
    assert revealed["credentials"]["password"] not in bay("key", "show", instance, key).stdout
    # Another user's key credentials are not shown to alice (not creator, not admin).
    other = bay("key", "show", instance, key, token=ALICE_TOKEN)
    assert other.exit_code == 3
    assert bay("key", "show", "other-instance", key).exit_code == 4
    assert bay("key", "delete", instance, key).exit_code == 0
    assert bay("key", "list", instance, "-o", "json").stdout.strip() == "[]"
