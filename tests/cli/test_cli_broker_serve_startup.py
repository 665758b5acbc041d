"""`bay broker serve`: a broker that cannot start says why in one line; the banner and logs.

Brokers whose ``startup`` raises are served in a real process (uvicorn runs the lifespan);
each test waits for the process to exit by itself, so none of them sleeps or kills.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from servicebay import broker as sb
from servicebay.cli.broker import LogFormat, configure_logging
from servicebay.osb import Catalog, Plan, Service

PASSWORD = "startup-pw-8e1f0c"


class ConfigurationError(Exception):
    """What a broker author raises for settings it cannot start with (like the RabbitMQ one)."""


class _Idle(sb.Broker):
    catalog = Catalog(
        services=[
            Service(
                id="5b1d2e3f-0000-4000-8000-00000000c001",
                name="idle",
                description="Never starts.",
                bindable=False,
                plans=[Plan(id="5b1d2e3f-0000-4000-8000-00000000c002", name="p", description="P")],
            )
        ]
    )


class MisconfiguredBroker(_Idle):
    async def startup(self) -> None:
        raise ConfigurationError("the frobnicator at http://127.0.0.1:1 refused user 'admin'")


class CrashingBroker(_Idle):
    async def startup(self) -> None:
        raise RuntimeError("boom in startup")


def _serve(tmp_path: Path, target: str, *args: str, **env: str) -> tuple[int, str]:
    """Run `bay broker serve` until it exits by itself (60 s at most); its code and output."""
    child = {k: v for k, v in os.environ.items() if not k.startswith("SERVICEBAY_BROKER_")}
    child["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    command = [sys.executable, "-m", "servicebay.cli.broker", "serve", f"{__name__}:{target}"]
    result = subprocess.run(
        [*command, "--port", "0", *args],
        env={**child, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def test_a_configuration_error_at_startup_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    """The author's ConfigurationError: `error: <its message>`, exit 2, no traceback."""
    code, output = _serve(
        tmp_path,
        "MisconfiguredBroker",
        "--username",
        "admin",
        SERVICEBAY_BROKER_PASSWORD=PASSWORD,
    )
    assert code == 2, output
    assert output.splitlines()[-1] == (
        "error: the frobnicator at http://127.0.0.1:1 refused user 'admin'"
    )
    assert "Traceback" not in output


def test_with_workers_a_startup_error_is_said_and_the_exit_code_is_2(tmp_path: Path) -> None:
    """--workers 2: the workers' `error:` line, no traceback, and the parent exits 2 (not 0)."""
    code, output = _serve(
        tmp_path,
        "MisconfiguredBroker",
        "--username",
        "admin",
        "--workers",
        "2",
        SERVICEBAY_BROKER_PASSWORD=PASSWORD,
    )
    assert code == 2, output
    assert "error: the frobnicator at http://127.0.0.1:1 refused user 'admin'" in output
    assert "Traceback" not in output


def test_any_other_startup_exception_is_named_in_one_line(tmp_path: Path) -> None:
    """A bug in the author's startup: its type and message on one line, exit 2."""
    code, output = _serve(
        tmp_path, "CrashingBroker", "--username", "admin", SERVICEBAY_BROKER_PASSWORD=PASSWORD
    )
    assert code == 2, output
    assert output.splitlines()[-1] == (
        "error: the broker's startup failed: RuntimeError: boom in startup"
    )
    assert "Traceback" not in output


def test_debug_log_level_shows_the_startup_traceback(tmp_path: Path) -> None:
    """--log-level debug keeps the traceback for the author, and still ends with the line."""
    code, output = _serve(
        tmp_path,
        "CrashingBroker",
        "--username",
        "admin",
        "--log-level",
        "debug",
        SERVICEBAY_BROKER_PASSWORD=PASSWORD,
    )
    assert code == 2, output
    assert "Traceback" in output
    assert output.splitlines()[-1].startswith("error: the broker's startup failed: RuntimeError")


def test_password_flag_warns_and_the_hint_never_names_an_unset_variable(tmp_path: Path) -> None:
    """--password: a warning about ps; the curl hint asks for the password instead."""
    code, output = _serve(
        tmp_path, "MisconfiguredBroker", "--username", "admin", "--password", PASSWORD
    )
    assert code == 2, output
    assert (
        "warning: --password is visible to other users in ps; "
        "prefer SERVICEBAY_BROKER_PASSWORD" in output
    )
    assert "curl -u admin -H" in output  # curl prompts for the password
    assert "$SERVICEBAY_BROKER_PASSWORD" not in output
    assert PASSWORD not in output


def test_password_from_the_environment_is_named_in_the_hint_without_warning(
    tmp_path: Path,
) -> None:
    """SERVICEBAY_BROKER_PASSWORD: no warning; the hint uses the variable."""
    code, output = _serve(
        tmp_path,
        "MisconfiguredBroker",
        "--username",
        "admin",
        SERVICEBAY_BROKER_PASSWORD=PASSWORD,
    )
    assert code == 2, output
    assert "warning:" not in output
    assert "curl -u admin:$SERVICEBAY_BROKER_PASSWORD -H" in output
    assert PASSWORD not in output


def test_bearer_token_hint_lets_the_shell_expand_the_variable(tmp_path: Path) -> None:
    """The token's variable is in double quotes, so the copied command sends the token."""
    code, output = _serve(
        tmp_path, "MisconfiguredBroker", SERVICEBAY_BROKER_BEARER_TOKEN="t0ken-startup"
    )
    assert code == 2, output
    assert 'curl -H "Authorization: Bearer $SERVICEBAY_BROKER_BEARER_TOKEN"' in output


@pytest.mark.parametrize(("level", "shown"), [("info", False), ("debug", True)])
def test_httpx_request_lines_only_at_debug(
    level: str, shown: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """httpx/httpcore log each outgoing request at INFO: shown only with --log-level debug."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    levels = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    configure_logging(level, LogFormat.json)
    try:
        logging.getLogger("httpx").info("HTTP Request: GET http://127.0.0.1:15672/api/overview")
        logging.getLogger("httpcore.http11").debug("send_request_headers.started")
        logging.getLogger("httpx").warning("a warning still shows")
        err = capsys.readouterr().err
    finally:
        structlog.reset_defaults()
        root.handlers, root.level = saved
        for name, saved_level in levels.items():
            logging.getLogger(name).setLevel(saved_level)
    assert ("HTTP Request" in err) is shown
    assert ("send_request_headers" in err) is shown
    assert "a warning still shows" in err
