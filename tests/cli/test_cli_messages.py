"""What `bay` says when something is off: one readable line, the right exit code, no noise."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import Bay, unique
from servicebay.cli._api import PlatformAPI
from servicebay.cli.output import state_text


def _record_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    sent: list[tuple[str, str]] = []
    real_call = PlatformAPI._call

    async def recording(self: PlatformAPI, method: str, path: str, **kwargs: Any) -> Any:
        sent.append((method, path))
        return await real_call(self, method, path, **kwargs)

    monkeypatch.setattr(PlatformAPI, "_call", recording)
    return sent


@pytest.mark.parametrize("name", ["", "Upper", "a_b", "x-"])
def test_invalid_instance_name_is_refused_locally(
    bay: Bay, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """`bay instance ''`: one line naming the rule, exit 2, no request made."""
    sent = _record_calls(monkeypatch)
    result = bay("instance", name)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: instance name {name!r} is not valid: use a-z, 0-9")
    assert sent == []


def test_empty_instance_name_never_matches_every_binding(
    bay: Bay, registered: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bay unbind '' --app A` is refused locally (exit 2), not taken as "any instance"."""
    app = unique("app")
    name = unique("kept")
    assert bay("provision", "sandbox", name, "--plan", "sync").exit_code == 0
    assert bay("bind", name, "--app", app).exit_code == 0
    sent = _record_calls(monkeypatch)
    result = bay("unbind", "", "--app", app)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: instance name '' is not valid")
    assert sent == []
    listed = json.loads(bay("bindings", "--app", app, "-o", "json").stdout)
    assert [b["instance"] for b in listed] == [name]


def test_declined_purge_says_so_plainly(bay: Bay, registered: str) -> None:
    """Answering no, or not answering at all: exit 1, a plain message, instance kept."""
    name = unique("purge")
    assert bay("provision", "sandbox", name, "--plan", "sync").exit_code == 0
    declined = bay("purge", name, input="n\n")
    assert declined.exit_code == 1
    assert declined.stderr.strip().endswith("error: purge aborted: nothing was changed")
    assert "CLIError" not in declined.stderr
    silent = bay("purge", name, input="")
    assert silent.exit_code == 1
    assert silent.stderr.strip().endswith("error: aborted: no answer given; nothing was changed")
    assert "Abort" not in silent.stderr
    assert bay("instance", name).exit_code == 0


def test_login_without_token_or_terminal_says_what_to_do(bay: Bay) -> None:
    """No token anywhere and nothing piped in: exit 3 and how to give one."""
    result = bay("login", "--url", bay.platform.url, token="", input="")
    assert result.exit_code == 3, result.output
    assert result.stderr.strip() == (
        "error: no token given and no terminal to ask for one: use --token or SERVICEBAY_TOKEN"
    )


@pytest.mark.parametrize(
    ("state", "description", "shown"),
    [
        ("succeeded", "succeeded", "succeeded"),
        ("succeeded", None, "succeeded"),
        ("failed", "failed: it broke", "failed: it broke"),
        ("in progress", "step 1 of 4", "in progress — step 1 of 4"),
    ],
)
def test_state_is_said_once(state: str, description: str | None, shown: str) -> None:
    """A description that repeats the state is not shown after it again."""
    assert state_text(state, description) == shown


def test_async_progress_does_not_repeat_words(bay: Bay, registered: str) -> None:
    """An async provision ends 'provision X: succeeded', a failed one '... failed: reason'."""
    name = unique("slow")
    done = bay("provision", "sandbox", name, "--plan", "async", "-p", "delay_seconds=0.2")
    assert done.exit_code == 0, done.output
    assert "succeeded — succeeded" not in done.stderr
    assert f"provision {name}: succeeded" in done.stderr
    bad = unique("bad")
    failed = bay(
        "provision", "sandbox", bad, "--plan", "async", "-p", "delay_seconds=0", "-p", "fail=true"
    )
    assert failed.exit_code == 8
    assert "failed — failed" not in failed.stderr
    assert "failed: failed" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1].startswith(f"error: provision {bad} failed: ")


def test_not_found_and_exists_name_the_instance_alike(bay: Bay, registered: str) -> None:
    """Both messages name the instance as namespace/name."""
    name = unique("same")
    missing = bay("instance", name)
    assert missing.exit_code == 4
    assert f"instance 'default/{name}' not found" in missing.stderr
    assert bay("provision", "sandbox", name, "--plan", "sync").exit_code == 0
    taken = bay("provision", "sandbox", name, "--plan", "sync")
    assert taken.exit_code == 5
    assert f"instance 'default/{name}' already exists" in taken.stderr


def test_unknown_parameter_lists_the_allowed_names(bay: Bay, registered: str) -> None:
    """`-p sizee=1`: the message lists the names the plan takes."""
    result = bay("provision", "sandbox", unique("typo"), "--plan", "param", "-p", "sizee=1")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: invalid parameters: sizee: is not allowed "
        "(allowed: delay_seconds, fail, name, secret, size)"
    )


def test_run_with_no_bindings_warns(bay: Bay, registered: str) -> None:
    """`bay run --app nobody`: a warning on stderr, the command still runs."""
    app = unique("nobody")
    result = bay("run", "--app", app, "--", "true")
    assert result.exit_code == 0, result.output
    assert f"warning: no bindings for app {app!r} in namespace 'default'" in result.stderr
