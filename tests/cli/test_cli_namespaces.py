"""`bay namespace` and `bay -n`: plan visibility, constraints checked before sending, quotas."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import typer
import yaml
from typer.testing import Result

from conftest import ADMIN_TOKEN, Bay, unique
from servicebay.cli._reference import _walk
from servicebay.cli.commands import build_app


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
    assert f"size: must be <= 2 (got 3) [namespace {ns}]" in result.stderr
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


# -- bay namespace ------------------------------------------------------------------------------


def _one_line_error(result: Result) -> str:
    """The single `error: ...` line a failed command prints on stderr."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _staging(bay: Bay, *extra: str) -> str:
    """`bay namespace create` with the param plan capped at size 2..3 and async hidden."""
    ns = unique("stage")
    result = bay(
        "namespace", "create", ns,
        "--visible-plan", "sandbox/sync",
        "--visible-plan", "sandbox/param",
        "--constraint", "sandbox/param:size<=3",
        "--constraint", "sandbox/param:size>=2",
        *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return ns


def test_namespace_create_stores_settings_as_the_api_models_them(bay: Bay, registered: str) -> None:
    """Flags become visible_plans, one merged JSON schema per target, and max_instances."""
    ns = unique("stage")
    result = bay(
        "namespace", "create", ns, "--description", "staging area",
        "--visible-plan", "sandbox/param",
        "--constraint", "sandbox/param:size<=3",
        "--constraint", "sandbox/param:size>=2",
        "--constraint", "sandbox:name=alpha,beta",
        "--max-instances", "4", "-o", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)
    assert created["visible_plans"] == ["sandbox/param"]
    assert created["constraints"] == {
        "sandbox/param": {"properties": {"size": {"maximum": 3, "minimum": 2}}},
        "sandbox": {"properties": {"name": {"enum": ["alpha", "beta"]}}},
    }
    assert (created["max_instances"], created["instance_count"]) == (4, 0)
    assert created["description"] == "staging area"
    assert json.loads(bay("namespace", "show", ns, "-o", "json").stdout) == created


def test_namespace_show_renders_rules_and_list_has_counts(bay: Bay, registered: str) -> None:
    """show: each constraint as a readable rule; list: the namespace with its quota."""
    ns = _staging(bay, "--max-instances", "3")
    shown = bay("namespace", "show", ns)
    assert shown.exit_code == 0, shown.output
    rule = next(line for line in shown.stdout.splitlines() if line.startswith("sandbox/param"))
    assert rule.split() == ["sandbox/param", "size", "2..3"]
    assert "sandbox/sync, sandbox/param" in shown.stdout
    assert "0 of 3" in shown.stdout
    listed = bay("namespace", "list")
    row = next(line for line in listed.stdout.splitlines() if line.startswith(ns))
    assert "0 of 3" in row and "sandbox/param" in row
    names = [n["name"] for n in json.loads(bay("namespace", "list", "-o", "json").stdout)]
    assert {"default", ns} <= set(names)


def test_marketplace_in_namespace_shows_only_visible_plans(bay: Bay, registered: str) -> None:
    """The hidden async plan is absent; the param plan lists the namespace's constraint."""
    ns = _staging(bay)
    market = json.loads(bay("marketplace", "-n", ns, "-o", "json").stdout)
    assert [p["name"] for p in market[0]["plans"]] == ["sync", "param"]
    table = bay("marketplace", "-n", ns).stdout
    line = next(line for line in table.splitlines() if line.startswith("sandbox"))
    assert "sync, param" in line and "async" not in line
    detail = bay("marketplace", "sandbox", "--plan", "param", "-n", ns).stdout
    assert "plan param: namespace constraints" in detail
    # The default namespace still offers every plan.
    everything = json.loads(bay("marketplace", "-o", "json").stdout)
    assert "async" in [p["name"] for p in everything[0]["plans"]]


def test_provision_outside_constraint_is_refused_locally_and_creates_nothing(
    bay: Bay, registered: str
) -> None:
    """size=5 against size<=3: exit 2 naming field, rule and range; nothing reaches the platform."""
    ns = _staging(bay)
    result = bay("provision", "sandbox", "big", "--plan", "param", "-p", "size=5", "-n", ns)
    assert result.exit_code == 2
    line = _one_line_error(result)
    assert f"size: must be <= 3 (got 5) [namespace {ns}]" in line
    assert json.loads(bay("instances", "-n", ns, "-o", "json").stdout) == []
    assert json.loads(bay("namespace", "show", ns, "-o", "json").stdout)["instance_count"] == 0
    low = bay("provision", "sandbox", "small", "--plan", "param", "-p", "size=1", "-n", ns)
    assert low.exit_code == 2
    assert f"size: must be >= 2 (got 1) [namespace {ns}]" in _one_line_error(low)
    ok = bay("provision", "sandbox", "fits", "--plan", "param", "-p", "size=3", "-n", ns)
    assert ok.exit_code == 0, ok.output
    listed = json.loads(bay("instances", "-n", ns, "-o", "json").stdout)
    assert [(i["name"], i["parameters"]["size"]) for i in listed] == [("fits", 3)]
    # An update is held to the same rules, and so is the platform's own check (dry run).
    grown = bay("update", "fits", "-p", "size=4", "-n", ns)
    assert grown.exit_code == 2
    assert f"size: must be <= 3 (got 4) [namespace {ns}]" in _one_line_error(grown)
    dry = bay("update", "fits", "-p", "size=4", "-n", ns, "--dry-run", "-o", "json")
    assert dry.exit_code == 2
    assert f"[namespace {ns}]" in _one_line_error(dry)
    shown = json.loads(bay("instance", "fits", "-n", ns, "-o", "json").stdout)
    assert shown["parameters"]["size"] == 3


def test_hidden_plan_cannot_be_provisioned(bay: Bay, registered: str) -> None:
    """A plan left out of --visible-plan is unknown in the namespace (exit 4, plans named)."""
    ns = _staging(bay)
    result = bay("provision", "sandbox", "x", "--plan", "async", "-n", ns)
    assert result.exit_code == 4
    assert "plans: sync, param" in _one_line_error(result)


def test_quota_refused_with_the_limit(bay: Bay, registered: str) -> None:
    """--max-instances 1: the second provision exits 7 saying the limit; only one exists."""
    ns = _staging(bay, "--max-instances", "1")
    assert bay("provision", "sandbox", "one", "--plan", "sync", "-n", ns).exit_code == 0
    result = bay("provision", "sandbox", "two", "--plan", "sync", "-n", ns)
    assert result.exit_code == 7
    assert "allows at most 1 instance(s)" in _one_line_error(result)
    assert [i["name"] for i in json.loads(bay("instances", "-n", ns, "-o", "json").stdout)] == [
        "one"
    ]


def test_delete_refuses_a_namespace_with_instances(bay: Bay, registered: str) -> None:
    """delete with an instance: exit 5 and what to do; once empty it goes (show: exit 4)."""
    ns = _staging(bay)
    assert bay("provision", "sandbox", "keep", "--plan", "sync", "-n", ns).exit_code == 0
    refused = bay("namespace", "delete", ns)
    assert refused.exit_code == 5
    line = _one_line_error(refused)
    assert "still has 1 instance(s)" in line and f"bay instances -n {ns}" in line
    assert bay("namespace", "show", ns).exit_code == 0
    assert bay("deprovision", "keep", "-n", ns).exit_code == 0
    deleted = bay("namespace", "delete", ns)
    assert deleted.exit_code == 0, deleted.output
    gone = bay("namespace", "show", ns)
    assert gone.exit_code == 4
    assert "not found" in _one_line_error(gone)


def test_update_changes_only_what_its_flags_name(bay: Bay, registered: str) -> None:
    """update merges a new rule, hides a plan, lifts the quota; other settings stay."""
    ns = _staging(bay, "--max-instances", "2", "--description", "kept")
    result = bay(
        "namespace", "update", ns,
        "--constraint", "sandbox/param:name=alpha",
        "--hide-plan", "sandbox/sync",
        "--unlimited", "-o", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    updated = json.loads(result.stdout)
    assert updated["visible_plans"] == ["sandbox/param"]
    assert updated["constraints"]["sandbox/param"]["properties"] == {
        "size": {"maximum": 3, "minimum": 2},
        "name": {"enum": ["alpha"]},
    }
    assert updated["max_instances"] is None and updated["description"] == "kept"
    again = bay(
        "namespace", "update", ns, "--all-plans", "--remove-constraint", "sandbox/param",
        "-o", "json",
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["visible_plans"] is None
    assert json.loads(again.stdout)["constraints"] == {}
    # The rule is gone, so size=5 (the plan allows up to 10) is now accepted.
    ok = bay("provision", "sandbox", "grown", "--plan", "param", "-p", "size=5", "-n", ns)
    assert ok.exit_code == 0, ok.output


def test_show_yaml_round_trips_through_from_file(bay: Bay, registered: str, tmp_path: Path) -> None:
    """`show -o yaml` edited and given to `update --from-file` replaces the settings."""
    ns = _staging(bay)
    exported = yaml.safe_load(bay("namespace", "show", ns, "-o", "yaml").stdout)
    exported["max_instances"] = 7
    exported["constraints"]["sandbox/param"]["properties"]["size"]["maximum"] = 4
    path = tmp_path / "ns.yaml"
    path.write_text(yaml.safe_dump(exported))
    result = bay("namespace", "update", ns, "--from-file", str(path), "-o", "json")
    assert result.exit_code == 0, result.output
    updated = json.loads(result.stdout)
    assert updated["max_instances"] == 7
    assert updated["constraints"]["sandbox/param"]["properties"]["size"]["maximum"] == 4
    # A file creates a namespace as well; flags apply on top of it.
    other = unique("copy")
    created = bay(
        "namespace", "create", other, "-f", str(path), "--max-instances", "1", "-o", "json"
    )
    assert created.exit_code == 0, created.output
    copy = json.loads(created.stdout)
    assert (copy["visible_plans"], copy["max_instances"]) == (updated["visible_plans"], 1)


@pytest.mark.parametrize(
    ("rule", "stored"),
    [
        (
            "sandbox/param:limits.rooms<=10",
            {"properties": {"limits": {"properties": {"rooms": {"maximum": 10}}}}},
        ),
        ("sandbox:tier=small, 2,true", {"properties": {"tier": {"enum": ["small", 2, True]}}}),
        ("sandbox:size>=1.5", {"properties": {"size": {"minimum": 1.5}}}),
        ('sandbox:={"required": ["name"]}', {"required": ["name"]}),
    ],
)
def test_constraint_forms_store_the_schema_they_stand_for(
    bay: Bay, registered: str, rule: str, stored: dict[str, object]
) -> None:
    """Nested fields, typed value lists, decimal bounds and raw schemas."""
    result = bay("namespace", "create", unique("form"), "--constraint", rule, "-o", "json")
    assert result.exit_code == 0, result.output
    assert list(json.loads(result.stdout)["constraints"].values()) == [stored]


def test_raw_schema_constraint_is_enforced_too(bay: Bay, registered: str) -> None:
    """A `:=` schema (name required) refuses a provision without it, before sending."""
    ns = unique("raw")
    rule = 'sandbox/param:={"required": ["name"]}'
    assert bay("namespace", "create", ns, "--constraint", rule).exit_code == 0
    result = bay("provision", "sandbox", "anon", "--plan", "param", "-n", ns)
    assert result.exit_code == 2
    assert f"[namespace {ns}]" in _one_line_error(result)
    assert "name" in _one_line_error(result)


def test_first_visible_plan_on_an_open_namespace_says_the_rest_is_hidden(
    bay: Bay, registered: str
) -> None:
    """update --visible-plan where every plan was visible: a note says the others are hidden."""
    ns = unique("open")
    assert bay("namespace", "create", ns).exit_code == 0
    result = bay("namespace", "update", ns, "--visible-plan", "sandbox/sync")
    assert result.exit_code == 0, result.output
    assert "every other plan is now hidden (visible: sandbox/sync)" in result.stderr
    market = json.loads(bay("marketplace", "-n", ns, "-o", "json").stdout)
    assert [p["name"] for p in market[0]["plans"]] == ["sync"]


def test_typos_are_reported_as_warnings(bay: Bay, registered: str) -> None:
    """A visible plan that matches nothing, a rule on a parameter no plan has: warned."""
    result = bay(
        "namespace", "create", unique("typo"),
        "--visible-plan", "sandbox/parm",
        "--visible-plan", "sandbox/param",
        "--constraint", "sandbox/param:sise<=3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning: visible plan sandbox/parm matches no plan in the catalog" in result.stderr
    assert "warning: constraint on sandbox/param: no visible plan has parameter 'sise'" in (
        result.stderr
    )


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["create", "x", "--constraint", "size<=3"], 2, "expected TARGET:FIELD<=N"),
        (["create", "x", "--constraint", "sandbox:size<=big"], 2, "a bound must be a number"),
        (["create", "x", "--constraint", "sandbox:={oops"], 2, "not valid JSON"),
        (["create", "x", "--visible-plan", "sandbox"], 2, "must be 'service/plan'"),
        (["create", "Bad_Name"], 2, "must be a lowercase name"),
        (["create", "default"], 5, "already exists"),
        (["create", "x", "--constraint", 'sandbox:={"type": "nope"}'], 2, "constraints.sandbox"),
        (["show", "no-such-ns"], 4, "namespace"),
        (["show", "a/b"], 2, "must be a lowercase name"),
        (["update", "default"], 2, "nothing to update"),
        (["update", "default", "--hide-plan", "sandbox/sync"], 2, "not among the visible"),
        (["update", "default", "--remove-constraint", "sandbox"], 2, "no rule on it"),
        (["delete", "default"], 2, "cannot be deleted"),
        (["delete", "no-such-ns"], 4, "namespace"),
    ],
)
def test_wrong_input_exits_with_one_line(
    bay: Bay, registered: str, args: list[str], code: int, words: str
) -> None:
    """Each mistake: its exit code and one `error:` line saying what is wrong."""
    result = bay("namespace", *args)
    assert result.exit_code == code, result.output
    assert words in _one_line_error(result)


@pytest.mark.parametrize(
    ("command", "content", "words"),
    [
        ("create", {"max_instance": 3}, "unknown field(s) max_instance (settings: description"),
        ("create", {"constraints": ["size<=3"]}, "constraints must map SERVICE[/PLAN]"),
        ("create", {"max_instances": "three"}, "max_instances"),
        ("create", "[1, 2", "is not valid JSON/YAML"),
        ("update", {"name": "other", "max_instances": 1}, "is for another namespace"),
    ],
)
def test_bad_namespace_file_is_refused(
    bay: Bay, tmp_path: Path, command: str, content: object, words: str
) -> None:
    """A namespace file with a misspelt, mistyped or foreign setting: exit 2, what is wrong."""
    path = tmp_path / "ns.yaml"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    name = unique("file") if command == "create" else "default"
    result = bay("namespace", command, name, "--from-file", str(path))
    assert result.exit_code == 2, result.output
    assert words in _one_line_error(result)
    if command == "create":
        assert bay("namespace", "show", name).exit_code == 4


# -- -n everywhere -----------------------------------------------------------------------------

# Every command that works on instances, bindings, keys or the marketplace.
NAMESPACED = [
    "marketplace", "provision", "update", "deprovision", "purge", "instances", "instance",
    "bind", "unbind", "bindings", "key create", "key list", "key show", "key delete", "run",
]  # fmt: skip


def test_every_instance_binding_and_marketplace_command_takes_n() -> None:
    """-n/--namespace with SERVICEBAY_NAMESPACE on each of them, and the same help."""
    root = typer.main.get_command(build_app())
    commands = {" ".join(path[1:]): command for path, command in _walk(root, ["bay"])}
    helps = set()
    for name in NAMESPACED:
        option = next(p for p in commands[name].params if p.name == "namespace")
        assert set(option.opts) == {"-n", "--namespace"}, name
        assert option.envvar == "SERVICEBAY_NAMESPACE", name
        helps.add(option.help.replace("Namespace, or * for all", "Namespace to work in"))
    assert len(helps) == 1


def test_login_namespace_is_the_default_for_later_commands(bay: Bay, registered: str) -> None:
    """`bay login -n NS` makes NS the namespace of commands given no -n; -n and the env win."""
    ns = _staging(bay)
    assert bay("provision", "sandbox", "here", "--plan", "sync", "-n", ns).exit_code == 0
    unset: dict[str, str | None] = {"SERVICEBAY_NAMESPACE": None}
    login = bay("login", "--url", bay.platform.url, "--token", ADMIN_TOKEN, "-n", ns, env=unset)
    assert login.exit_code == 0, login.output
    assert json.loads((bay.home / "cli.json").read_text())["namespace"] == ns
    listed = json.loads(bay("instances", "-o", "json", env=unset).stdout)
    assert [i["name"] for i in listed] == ["here"]
    assert bay("instance", "here", env=unset).exit_code == 0
    refused = bay("provision", "sandbox", "big", "--plan", "param", "-p", "size=9", env=unset)
    assert f"[namespace {ns}]" in _one_line_error(refused)  # says where the rule came from
    # An explicit -n, or SERVICEBAY_NAMESPACE, still wins over the stored one.
    assert bay("instance", "here", "-n", "default", env=unset).exit_code == 4
    assert bay("instance", "here").exit_code == 4  # the fixture sets SERVICEBAY_NAMESPACE=default
    # Logging in again to the same platform keeps it.
    again = bay("login", "--url", bay.platform.url, "--token", ADMIN_TOKEN, env=unset)
    assert again.exit_code == 0
    assert json.loads((bay.home / "cli.json").read_text())["namespace"] == ns


def test_login_with_unknown_namespace_stores_nothing(bay: Bay) -> None:
    """A namespace that does not exist: exit 4 and no cli.json."""
    result = bay("login", "--url", bay.platform.url, "--token", ADMIN_TOKEN, "-n", "nope-ns")
    assert result.exit_code == 4
    assert "nope-ns" in _one_line_error(result)
    assert not (bay.home / "cli.json").exists()


def test_error_stays_on_one_line_on_a_narrow_stderr(bay: Bay, registered: str) -> None:
    """A reason longer than the terminal is not wrapped: scripts read exactly one line."""
    ns = _staging(bay)
    assert bay("provision", "sandbox", "keep", "--plan", "sync", "-n", ns).exit_code == 0
    refused = bay("namespace", "delete", ns, env={"COLUMNS": "40"})
    assert refused.exit_code == 5
    assert len(_one_line_error(refused)) > 40
