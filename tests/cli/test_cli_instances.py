"""`bay provision|update|deprovision|instances|instance|purge` against a real platform."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import Bay, unique
from servicebay.cli._api import PlatformAPI


def _instance(bay: Bay, name: str) -> dict[str, object]:
    result = bay("instance", name, "-o", "json")
    assert result.exit_code == 0, result.output
    data: dict[str, object] = json.loads(result.stdout)
    return data


def test_provision_sync_types_parameters_and_redacts_secret(bay: Bay, registered: str) -> None:
    """-p values are typed by the schema; the secret never shows in table, JSON or YAML."""
    name = unique("prov")
    result = bay(
        "provision", "sandbox", name, "--plan", "param", "-p", "size=3", "-p", "secret=hunter2xyz"
    )
    assert result.exit_code == 0, result.output
    assert "hunter2xyz" not in result.stdout + result.stderr
    assert "ready" in result.stdout
    instance = _instance(bay, name)
    assert instance["state"] == "ready"
    assert instance["parameters"] == {"size": 3, "secret": "***"}
    for fmt in ("table", "json", "yaml"):
        shown = bay("instance", name, "-o", fmt)
        assert "hunter2xyz" not in shown.stdout
    assert yaml.safe_load(bay("instance", name, "-o", "yaml").stdout)["name"] == name
    listed = bay("instances", "-o", "json")
    assert name in [i["name"] for i in json.loads(listed.stdout)]
    assert "hunter2xyz" not in bay("instances").stdout


def test_invalid_parameter_is_refused_before_sending(
    bay: Bay, registered: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """size=50 on a 1..10 field: exit 2 naming field, rule and range; no POST is made."""
    sent: list[tuple[str, str]] = []
    real_call = PlatformAPI._call

    async def recording(self: PlatformAPI, method: str, path: str, **kwargs: Any) -> Any:
        sent.append((method, path))
        return await real_call(self, method, path, **kwargs)

    monkeypatch.setattr(PlatformAPI, "_call", recording)
    name = unique("bad")
    result = bay("provision", "sandbox", name, "--plan", "param", "-p", "size=50")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: invalid parameters: size: must be <= 10 (got 50)"
    assert sent == [("GET", "/marketplace/sandbox")]
    assert bay("instance", name).exit_code == 4


def test_unknown_parameter_is_refused(bay: Bay, registered: str) -> None:
    """A parameter the plan does not know is refused, named."""
    result = bay("provision", "sandbox", unique("bad"), "--plan", "param", "-p", "colour=red")
    assert result.exit_code == 2
    assert "colour" in result.stderr


def test_dry_run_shows_request_and_sends_nothing(bay: Bay, registered: str) -> None:
    """--dry-run: target, plan, parameters after defaults (redacted), verdict; no instance."""
    name = unique("dry")
    result = bay(
        "provision",
        "sandbox",
        name,
        "--plan",
        "param",
        "-p",
        "secret=hunter2xyz",
        "--dry-run",
        "-o",
        "json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["accepted"] is True
    assert report["plan"] == "param"
    assert report["request"]["parameters"] == {"size": 1, "secret": "***"}
    assert report["target"]["method"] == "PUT"
    assert "hunter2xyz" not in result.stdout + result.stderr
    assert bay("instance", name).exit_code == 4


def test_dry_run_that_would_be_refused_exits_2(bay: Bay, registered: str) -> None:
    """A dry run with bad parameters prints the verdict and exits 2 with the reason."""
    result = bay(
        "provision", "sandbox", unique("dry"), "--plan", "param", "-p", "size=0", "--dry-run"
    )
    assert result.exit_code == 2
    assert "refused" in result.stdout
    assert "size: must be >= 1 (got 0)" in result.stderr


def test_async_provision_shows_progress(bay: Bay, registered: str) -> None:
    """An async plan: progress lines on stderr until the instance is ready."""
    name = unique("async")
    result = bay("provision", "sandbox", name, "--plan", "async", "-p", "delay_seconds=1")
    assert result.exit_code == 0, result.output
    assert f"provision {name}: " in result.stderr
    assert _instance(bay, name)["state"] == "ready"


def test_no_wait_returns_at_once(bay: Bay, registered: str) -> None:
    """--no-wait: the command returns while the instance is still being provisioned."""
    name = unique("nowait")
    result = bay(
        "provision",
        "sandbox",
        name,
        "--plan",
        "async",
        "-p",
        "delay_seconds=3",
        "--no-wait",
        "-o",
        "json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["state"] == "provisioning"
    assert "accepted" in result.stderr


def test_failed_operation_exits_8_with_reason(bay: Bay, registered: str) -> None:
    """An async provision the broker fails: exit 8 and the broker's reason."""
    name = unique("fail")
    result = bay(
        "provision",
        "sandbox",
        name,
        "--plan",
        "async",
        "-p",
        "fail=true",
        "-p",
        "delay_seconds=0",
    )
    assert result.exit_code == 8, result.output
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: provision {name} failed")


def test_update_then_deprovision(bay: Bay, registered: str) -> None:
    """update changes typed parameters; deprovision removes the instance."""
    name = unique("upd")
    assert bay("provision", "sandbox", name, "--plan", "param").exit_code == 0
    result = bay("update", name, "-p", "size=7")
    assert result.exit_code == 0, result.output
    assert _instance(bay, name)["parameters"] == {"size": 7}
    bad = bay("update", name, "-p", "size=70")
    assert bad.exit_code == 2
    assert "size: must be <= 10 (got 70)" in bad.stderr
    assert bay("update", name).exit_code == 2  # nothing to update
    gone = bay("deprovision", name)
    assert gone.exit_code == 0, gone.output
    assert bay("instance", name).exit_code == 4


def test_unknown_instance_exits_4(bay: Bay, registered: str) -> None:
    """Show, update, deprovision of an unknown instance: exit 4, one line."""
    for args in (
        ("instance", "nope-x"),
        ("deprovision", "nope-x"),
        ("update", "nope-x", "-p", "size=1"),
    ):
        result = bay(*args)
        assert result.exit_code == 4, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1


def test_duplicate_name_exits_5(bay: Bay, registered: str) -> None:
    """Provisioning a taken name: conflict, exit 5."""
    name = unique("dup")
    assert bay("provision", "sandbox", name, "--plan", "sync").exit_code == 0
    assert bay("provision", "sandbox", name, "--plan", "sync").exit_code == 5


def test_purge_asks_first(bay: Bay, registered: str) -> None:
    """purge: 'no' keeps the instance (exit 1); --yes removes it without calling the broker."""
    name = unique("purge")
    assert bay("provision", "sandbox", name, "--plan", "sync").exit_code == 0
    declined = bay("purge", name, input="n\n")
    assert declined.exit_code == 1
    assert "purge aborted" in declined.stderr
    assert bay("instance", name).exit_code == 0
    confirmed = bay("purge", name, input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert bay("instance", name).exit_code == 4
    assert "evidence in operation" in confirmed.stdout


def test_plan_of_unknown_name_exits_4(bay: Bay, registered: str) -> None:
    """A plan the service does not have: exit 4, with the plans it has."""
    result = bay("provision", "sandbox", unique("x"), "--plan", "gold")
    assert result.exit_code == 4
    assert "sync" in result.stderr


def test_update_dry_run_sends_nothing(bay: Bay, registered: str) -> None:
    """update --dry-run reports a PATCH and leaves the instance as it was."""
    name = unique("upddry")
    assert bay("provision", "sandbox", name, "--plan", "param", "-p", "size=2").exit_code == 0
    result = bay("update", name, "-p", "size=4", "--dry-run", "-o", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["accepted"] is True
    assert report["target"]["method"] == "PATCH"
    assert _instance(bay, name)["parameters"] == {"size": 2}


def test_params_file_and_yaml_output(bay: Bay, registered: str, tmp_path: Path) -> None:
    """--params-file supplies parameters, -p overrides them; -o yaml is valid YAML."""
    name = unique("file")
    path = tmp_path / "params.yaml"
    path.write_text("size: 2\nname: from-file\n")
    result = bay(
        "provision",
        "sandbox",
        name,
        "--plan",
        "param",
        "--params-file",
        str(path),
        "-p",
        "size=5",
        "-o",
        "yaml",
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["parameters"] == {"size": 5, "name": "from-file"}


def test_terminal_progress_leaves_the_outcome(bay: Bay, registered: str) -> None:
    """At a terminal a live spinner follows the work; the final state stays on screen."""
    name = unique("tty")
    result = bay(
        "provision",
        "sandbox",
        name,
        "--plan",
        "async",
        "-p",
        "delay_seconds=1",
        env={"TTY_COMPATIBLE": "1"},
    )
    assert result.exit_code == 0, result.output
    assert "\x1b[?25l" in result.stderr  # the live display hid the cursor: a spinner ran
    assert f"provision {name}: succeeded" in result.stderr
