"""`bay namespace create|update --member/--remove-member` and what a non-member then sees.

A namespace with members is used only by them and the admin; for anyone else it does not
exist (lists leave it out, naming it is "not found"). Without members it is open to all.
"""

from __future__ import annotations

import json

from conftest import ALICE_TOKEN, Bay, unique


def _show(bay: Bay, name: str) -> dict[str, object]:
    result = bay("namespace", "show", name, "-o", "json")
    assert result.exit_code == 0, result.output
    shown: dict[str, object] = json.loads(result.stdout)
    return shown


def test_members_are_added_removed_and_shown(bay: Bay) -> None:
    """--member adds, --remove-member takes off, other settings and members survive updates."""
    ns = unique("team")
    made = bay("namespace", "create", ns, "--member", "carol", "--member", "alice")
    assert made.exit_code == 0, made.output
    assert "alice, carol" in made.stdout
    assert _show(bay, ns)["members"] == ["alice", "carol"]
    assert bay("namespace", "update", ns, "--max-instances", "3").exit_code == 0
    assert _show(bay, ns)["members"] == ["alice", "carol"]
    changed = bay("namespace", "update", ns, "--remove-member", "carol", "--member", "dave")
    assert changed.exit_code == 0, changed.output
    assert _show(bay, ns)["members"] == ["alice", "dave"]
    wrong = bay("namespace", "update", ns, "--remove-member", "zed")
    assert wrong.exit_code != 0
    assert "--remove-member zed: not a member (members: alice, dave)" in wrong.stderr
    opened = bay("namespace", "update", ns, "--remove-member", "alice", "--remove-member", "dave")
    assert opened.exit_code == 0, opened.output
    assert "every user may use it now" in opened.stderr
    assert "none (open to every user)" in bay("namespace", "show", ns).stdout


def test_a_non_member_does_not_see_the_namespace_or_its_instances(
    bay: Bay, registered: str
) -> None:
    """alice is not a member of a namespace whose only member is carol: `-n '*'` leaves out
    its instance, and naming it answers not found, as for a namespace that does not exist."""
    ns = unique("staging")
    assert bay("namespace", "create", ns, "--member", "carol").exit_code == 0
    made = bay("provision", "sandbox", "hidden", "--plan", "sync", "-n", ns)
    assert made.exit_code == 0, made.output
    every = json.loads(bay("instances", "-n", "*", "-o", "json", token=ALICE_TOKEN).stdout)
    assert ns not in {i["namespace"] for i in every}
    listed = json.loads(bay("namespace", "list", "-o", "json", token=ALICE_TOKEN).stdout)
    assert ns not in {n["name"] for n in listed}
    shown = bay("instance", "hidden", "-n", ns, token=ALICE_TOKEN)
    absent = bay("instance", "hidden", "-n", unique("nowhere"), token=ALICE_TOKEN)
    assert shown.exit_code == absent.exit_code != 0
    assert f"namespace {ns!r} not found" in shown.stderr
    gone = bay("deprovision", "hidden", "-n", ns, token=ALICE_TOKEN)
    assert gone.exit_code != 0
    assert [i["name"] for i in json.loads(bay("instances", "-n", ns, "-o", "json").stdout)] == [
        "hidden"
    ]
