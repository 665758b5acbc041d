"""`bay update` and `bay provision --dry-run` against a real platform: what is sent, what is kept.

Per OSB an update sends only the parameters the user gives (no schema defaults); the platform
records the old parameters with the given ones on top. A value sensitive under any plan the
instance ever had stays encrypted at rest and ``***`` in every output.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Bay, RunningPlatform, unique


def _parameters(bay: Bay, name: str) -> object:
    result = bay("instance", name, "-o", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["parameters"]


def _stored_bytes(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(home.glob("platform.db*")))


def test_plan_change_keeps_a_write_only_value_hidden(
    bay: Bay, registered: str, platform: RunningPlatform
) -> None:
    """param (secret writeOnly) → sync (secret unknown): still ``***`` in output and never stored
    in clear, also after further updates on the plan that does not mark it."""
    secret = "PlanChangeSecret" + unique("x").replace("-", "")
    name = unique("leak")
    created = bay(
        "provision", "sandbox", name, "--plan", "param", "-p", "size=4", "-p", f"secret={secret}"
    )
    assert created.exit_code == 0, created.output
    dry = bay("update", name, "--plan", "sync", "-p", "size=5", "--dry-run", "-o", "json")
    assert dry.exit_code == 0, dry.output
    assert secret not in dry.stdout + dry.stderr
    moved = bay("update", name, "--plan", "sync")
    assert moved.exit_code == 0, moved.output
    assert secret not in moved.stdout + moved.stderr
    assert _parameters(bay, name) == {"size": 4, "secret": "***"}
    again = bay("update", name, "-p", "size=6")
    assert again.exit_code == 0, again.output
    assert secret not in again.stdout + again.stderr
    assert _parameters(bay, name) == {"size": 6, "secret": "***"}
    for fmt in ("table", "json", "yaml"):
        assert secret not in bay("instance", name, "-o", fmt).stdout
    assert secret.encode() not in _stored_bytes(platform.home)


def test_secret_given_on_plan_change_is_hidden_when_old_plan_marks_it(
    bay: Bay, registered: str, platform: RunningPlatform
) -> None:
    """A value given with the plan change, sensitive only under the old plan, is hidden."""
    secret = "GivenOnChange" + unique("x").replace("-", "")
    name = unique("leak")
    assert bay("provision", "sandbox", name, "--plan", "param").exit_code == 0
    moved = bay("update", name, "--plan", "sync", "-p", f"secret={secret}")
    assert moved.exit_code == 0, moved.output
    assert secret not in moved.stdout + moved.stderr
    assert _parameters(bay, name) == {"size": 1, "secret": "***"}
    assert secret.encode() not in _stored_bytes(platform.home)


def test_update_sends_only_the_given_parameters(bay: Bay, registered: str) -> None:
    """-p name=bar on an instance of size 4: size stays 4 (no default sent or recorded)."""
    name = unique("upd")
    created = bay("provision", "sandbox", name, "--plan", "param", "-p", "size=4", "-p", "name=foo")
    assert created.exit_code == 0, created.output
    dry = bay("update", name, "-p", "name=bar", "--dry-run", "-o", "json")
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["request"]["parameters"] == {"name": "bar"}
    updated = bay("update", name, "-p", "name=bar")
    assert updated.exit_code == 0, updated.output
    assert _parameters(bay, name) == {"size": 4, "name": "bar"}


def test_plan_change_alone_sends_no_parameters(bay: Bay, registered: str) -> None:
    """--plan without -p: the dry run shows no parameters and the recorded ones stay."""
    name = unique("upd")
    assert bay("provision", "sandbox", name, "--plan", "param", "-p", "size=4").exit_code == 0
    dry = bay("update", name, "--plan", "sync", "--dry-run", "-o", "json")
    assert dry.exit_code == 0, dry.output
    assert "parameters" not in json.loads(dry.stdout)["request"]
    assert bay("update", name, "--plan", "sync").exit_code == 0
    assert _parameters(bay, name) == {"size": 4}


def test_dry_run_provision_of_a_taken_name_is_refused(bay: Bay, registered: str) -> None:
    """--dry-run answers as the real command would: the name exists → exit 5."""
    name = unique("dry")
    assert bay("provision", "sandbox", name, "--plan", "sync").exit_code == 0
    dry = bay("provision", "sandbox", name, "--plan", "sync", "--dry-run")
    assert dry.exit_code == 5, dry.output
    assert "already exists" in dry.stderr


def test_plan_change_to_unbindable_refused_while_bound(bay: Bay, registered: str) -> None:
    """With an app binding, a move to a non-bindable plan is refused (exit 5), nothing sent."""
    name = unique("bnd")
    assert bay("provision", "sandbox", name, "--plan", "sync").exit_code == 0
    bound = bay("bind", name, "--app", unique("app"))
    assert bound.exit_code == 0, bound.output
    for extra in ([], ["--dry-run"]):
        refused = bay("update", name, "--plan", "unbindable", *extra)
        assert refused.exit_code == 5, refused.output
        assert "not bindable" in refused.stderr
    result = bay("instance", name, "-o", "json")
    shown = json.loads(result.stdout)
    assert shown["plan"] == "sync"
    assert shown["last_operation"]["kind"] == "provision"
