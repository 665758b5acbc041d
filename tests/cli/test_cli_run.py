"""`bay run --app NAME -- COMMAND`: the command finds its credentials via servicebay.bindings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import Bay, unique

# The app: reads its binding the way a real app would, and writes what it saw to a file.
APP = """
import json, os, sys, time
from pathlib import Path
from servicebay import bindings
out = Path(sys.argv[1])
mq = bindings.find(type="sandbox")
seen = {"root": os.environ["SERVICE_BINDING_ROOT"], "name": mq.name, "provider": mq.provider,
        "keys": sorted(mq), "password": mq["password"]}
out.write_text(json.dumps(seen))
if len(sys.argv) > 2:  # wait until the binding disappears (after unbind), then report it
    deadline = time.monotonic() + 60
    while bindings.all().get(mq.name) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    out.with_suffix(".gone").write_text(str(bindings.all().get(mq.name) is None))
sys.exit(int(os.environ.get("APP_EXIT", "0")))
"""


def _bound(bay: Bay, app: str) -> tuple[str, str]:
    instance = unique("run")
    assert bay("provision", "sandbox", instance, "--plan", "sync").exit_code == 0
    assert bay("bind", instance, "--app", app).exit_code == 0
    key = f"{instance}-{app}"
    return instance, key


def test_run_projects_bindings_and_cleans_up(bay: Bay, registered: str, tmp_path: Path) -> None:
    """The app reads its credentials through servicebay.bindings; the root is removed after."""
    app = unique("app")
    _instance, binding = _bound(bay, app)
    script = tmp_path / "app.py"
    script.write_text(APP)
    out = tmp_path / "seen.json"
    result = bay("run", "--app", app, "--", sys.executable, str(script), str(out))
    assert result.exit_code == 0, result.output
    seen = json.loads(out.read_text())
    assert seen["name"] == binding
    assert seen["provider"] == "sandbox"
    assert {"password", "type", "uri", "username"} <= set(seen["keys"])
    assert seen["password"] not in result.stdout + result.stderr
    assert not Path(seen["root"]).exists()
    assert "1 binding(s)" in result.stderr


def test_run_exit_code_is_the_commands(bay: Bay, registered: str, tmp_path: Path) -> None:
    """bay run exits with its command's exit code; a missing command is 127."""
    app = unique("app")
    _bound(bay, app)
    code = bay("run", "--app", app, "--", sys.executable, "-c", "raise SystemExit(3)")
    assert code.exit_code == 3
    missing = bay("run", "--app", app, "--", "no-such-command-xyz")
    assert missing.exit_code == 127
    assert "command not found" in missing.stderr


def test_unbind_while_running_removes_the_entry(bay: Bay, registered: str, tmp_path: Path) -> None:
    """An unbind reaches a running app (a real `bay run` process): its binding disappears."""
    app = unique("app")
    _instance, binding = _bound(bay, app)
    script = tmp_path / "app.py"
    script.write_text(APP)
    out = tmp_path / "seen.json"
    env = {
        **os.environ,
        "SERVICEBAY_URL": bay.platform.url,
        "SERVICEBAY_TOKEN": bay.token,
        "SERVICEBAY_HOME": str(bay.home),
    }
    command = [sys.executable, "-m", "servicebay.cli.commands", "run", "--app", app]
    command += ["--refresh", "0.2", "--", sys.executable, str(script), str(out), "wait"]
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as runner:
        deadline = time.monotonic() + 60
        while not out.exists() and time.monotonic() < deadline and runner.poll() is None:
            time.sleep(0.05)
        assert out.exists(), runner.stderr.read() if runner.stderr else ""
        assert bay("unbind", binding).exit_code == 0
        assert runner.wait(90) == 0
    assert out.with_suffix(".gone").read_text() == "True"


def test_run_with_no_bindings_still_runs(bay: Bay, registered: str, tmp_path: Path) -> None:
    """An app without bindings gets an empty root and runs."""
    result = bay("run", "--app", unique("lonely"), "--", sys.executable, "-c", "pass")
    assert result.exit_code == 0, result.output
    assert "0 binding(s)" in result.stderr


def test_run_with_root_keeps_foreign_bindings(bay: Bay, registered: str, tmp_path: Path) -> None:
    """--root: the app's bindings are added, then taken back; others in that root stay."""
    from servicebay import bindings

    app = unique("app")
    _instance, binding = _bound(bay, app)
    root = tmp_path / "root"
    bindings.write(bindings.Binding.from_credentials("other", "db", {"uri": "x"}), root)
    script = tmp_path / "app.py"
    script.write_text(APP)
    out = tmp_path / "seen.json"
    result = bay(
        "run", "--app", app, "--root", str(root), "--", sys.executable, str(script), str(out)
    )
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["name"] == binding
    assert bindings.all(root).names == ["other"]


WATCHER = """
import json, sys, time
from pathlib import Path
from servicebay import bindings
out = Path(sys.argv[1])
seen = [bindings.find(type="sandbox")["password"]]
out.write_text(json.dumps(seen))

def changed(snapshot):
    found = snapshot.filter(type="sandbox")
    if found and found[0]["password"] not in seen:
        seen.append(found[0]["password"])
        out.write_text(json.dumps(seen))

with bindings.watch(changed, interval=0.1):
    deadline = time.monotonic() + 60
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
"""


def test_running_app_picks_up_new_credentials(bay: Bay, registered: str, tmp_path: Path) -> None:
    """Re-binding while the app runs: bindings.watch() hands it the new password, no restart."""
    app = unique("app")
    instance, binding = _bound(bay, app)
    script = tmp_path / "watcher.py"
    script.write_text(WATCHER)
    out = tmp_path / "seen.json"
    env = {
        **os.environ,
        "SERVICEBAY_URL": bay.platform.url,
        "SERVICEBAY_TOKEN": bay.token,
        "SERVICEBAY_HOME": str(bay.home),
    }
    command = [sys.executable, "-m", "servicebay.cli.commands", "run", "--app", app]
    command += ["--refresh", "0.2", "--", sys.executable, str(script), str(out)]
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as runner:
        deadline = time.monotonic() + 60
        while not out.exists() and time.monotonic() < deadline and runner.poll() is None:
            time.sleep(0.05)
        assert out.exists(), runner.stderr.read() if runner.stderr else ""
        assert bay("unbind", binding).exit_code == 0
        assert bay("bind", instance, "--app", app).exit_code == 0  # same name, new credentials
        assert runner.wait(90) == 0
    first, second = json.loads(out.read_text())
    assert first != second
