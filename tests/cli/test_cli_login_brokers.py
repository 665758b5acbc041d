"""`bay login` and `bay broker register|list|refresh|remove` against a real platform."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from conftest import ADMIN_TOKEN, Bay, run_platform, unique
from servicebay.testing import ServedBroker


def test_login_stores_url_and_token_privately(bay: Bay) -> None:
    """login checks the token, writes cli.json 0600, and never prints the token."""
    result = bay("login", "--url", bay.platform.url, "--token", ADMIN_TOKEN)
    assert result.exit_code == 0, result.output
    assert ADMIN_TOKEN not in result.stdout + result.stderr
    assert "admin" in result.stdout
    stored = bay.home / "cli.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert json.loads(stored.read_text()) == {"url": bay.platform.url, "token": ADMIN_TOKEN}


def test_stored_login_is_used_by_later_commands(bay: Bay) -> None:
    """After login, commands work without SERVICEBAY_TOKEN in the environment."""
    assert bay("login", "--url", bay.platform.url, "--token", ADMIN_TOKEN).exit_code == 0
    result = bay("broker", "list", token="")
    assert result.exit_code == 0, result.output
    assert bay("logout").exit_code == 0
    assert not (bay.home / "cli.json").exists()


def test_login_with_wrong_token_exits_3_and_stores_nothing(bay: Bay) -> None:
    """A token the platform does not know: exit 3, one line, no cli.json."""
    result = bay("login", "--url", bay.platform.url, "--token", "wrong-token")
    assert result.exit_code == 3
    assert result.stderr.startswith("error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (bay.home / "cli.json").exists()


def test_broker_lifecycle(tmp_path: Path, sandbox: ServedBroker) -> None:
    """register shows services, list shows the broker, refresh reports, remove forgets it;
    the broker's password is never printed."""
    with run_platform(tmp_path / "platform") as platform:
        bay = Bay(platform, tmp_path / "home")
        result = bay(
            "broker",
            "register",
            "sbx",
            sandbox.url,
            "--username",
            sandbox.username,
            "--password",
            sandbox.password,
        )
        assert result.exit_code == 0, result.output
        assert "sandbox" in result.stdout
        listed = bay("broker", "list", "-o", "json")
        assert [b["name"] for b in json.loads(listed.stdout)] == ["sbx"]
        assert sandbox.password not in listed.stdout + result.stdout + result.stderr
        refreshed = bay("broker", "refresh", "sbx")
        assert refreshed.exit_code == 0, refreshed.output
        assert "catalog unchanged" in refreshed.stderr
        removed = bay("broker", "remove", "sbx")
        assert removed.exit_code == 0, removed.output
        assert json.loads(bay("broker", "list", "-o", "json").stdout) == []


def test_register_unreachable_broker_exits_13(bay: Bay) -> None:
    """A broker URL nobody answers: the platform says so, exit 13."""
    result = bay(
        "broker",
        "register",
        unique("gone"),
        "http://127.0.0.1:9",
        "--username",
        "u",
        "--password",
        "p",
    )
    assert result.exit_code == 13, result.output
    assert result.stderr.startswith("error: ")


def test_duplicate_broker_name_exits_5(bay: Bay, registered: str) -> None:
    """Registering a name that is taken: conflict, exit 5."""
    result = bay("broker", "register", registered, "http://127.0.0.1:9")
    assert result.exit_code == 5, result.output


def test_remove_unknown_broker_exits_4(bay: Bay) -> None:
    """Unknown broker: exit 4."""
    assert bay("broker", "remove", unique("nope")).exit_code == 4


def test_login_on_the_same_machine_uses_the_platform_token_file(bay: Bay) -> None:
    """With no --token, a local platform's token file (written by `bay server`) is used."""
    bay.home.mkdir(parents=True)
    (bay.home / "platform.token").write_text(ADMIN_TOKEN + "\n")
    result = bay("login", "--url", bay.platform.url, token="")
    assert result.exit_code == 0, result.output
    assert json.loads((bay.home / "cli.json").read_text())["token"] == ADMIN_TOKEN


def test_login_without_a_terminal_reads_the_token_from_stdin(bay: Bay) -> None:
    """No token anywhere and no terminal: login reads it from stdin (no prompt) and checks it."""
    result = bay("login", "--url", bay.platform.url, token="", input=ADMIN_TOKEN + "\n")
    assert result.exit_code == 0, result.output
    assert "API token" not in result.stderr
    assert ADMIN_TOKEN not in result.stdout + result.stderr
