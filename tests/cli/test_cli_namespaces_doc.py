"""The namespaces walk-through in docs/platform.md is a real session: replayed, it prints alike."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from conftest import Bay, run_platform
from servicebay.testing import ServedBroker

DOC = Path(__file__).resolve().parents[2] / "docs" / "platform.md"
MARKER = "<!-- replayed by tests/cli/test_cli_namespaces_doc.py -->"
# What differs from run to run: times, ids, and how many progress lines a wait happened to see.
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PROGRESS = re.compile(r"^\S+ \S+: (queued|in progress)\b")


def _session() -> list[tuple[str, list[str]]]:
    """The documented commands (continuation lines joined) with the output shown under each."""
    block = DOC.read_text().split(MARKER, 1)[1]
    match = re.match(r"\s*```console\n(.*?)```", block, re.DOTALL)
    assert match, "the marker must be followed by a ```console block"
    steps: list[tuple[str, list[str]]] = []
    continued = ""
    for line in match.group(1).splitlines():
        if continued or line.startswith("$ "):
            text = continued + line.removeprefix("$ ").strip()
            if text.endswith("\\"):
                continued = text[:-1] + " "
                continue
            continued = ""
            steps.append((text, []))
        else:
            steps[-1][1].append(line)
    return steps


def _normal(lines: list[str]) -> list[str]:
    kept = [line.rstrip() for line in lines if not _PROGRESS.match(line)]
    return [_UUID.sub("<id>", _TIME.sub("<time>", line)) for line in kept]


def test_namespaces_walkthrough_replays(tmp_path: Path, sandbox: ServedBroker) -> None:
    """Each documented command gives the documented output and exit status."""
    steps = _session()
    assert len(steps) > 10
    with run_platform(tmp_path / "platform") as platform:
        bay = Bay(platform, tmp_path / "home")
        registered = bay(
            "broker", "register", "sandbox", sandbox.url,
            "--username", sandbox.username, "--password", sandbox.password,
        )  # fmt: skip
        assert registered.exit_code == 0, registered.output
        last = 0
        for command, shown in steps:
            if command == "echo $?":
                assert shown == [str(last)], f"exit status before {command!r}"
                continue
            argv = shlex.split(command)
            assert argv[0] == "bay"
            result = bay(*argv[1:])
            last = result.exit_code
            printed = result.stderr.splitlines() + result.stdout.splitlines()
            assert _normal(printed) == _normal(shown), command
