"""Errors become one-line messages and documented exit codes, in one place (cli.output)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from servicebay.bindings import BindingNotFound
from servicebay.cli._api import PlatformError, PlatformUnreachable
from servicebay.cli.commands import build_app
from servicebay.cli.output import CLIError, OperationFailed, exit_code_for, one_line
from servicebay.osb import InvalidParameters, ParameterProblem


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (PlatformError(400, "bad_request", "x"), 2),
        (PlatformError(422, "invalid_parameters", "x"), 2),
        (PlatformError(401, "unauthorized", "x"), 3),
        (PlatformError(403, "plan_not_visible", "x"), 3),
        (PlatformError(404, "instance_not_found", "x"), 4),
        (PlatformError(409, "instance_exists", "x"), 5),
        (PlatformError(422, "not_bindable", "x"), 7),
        (PlatformError(500, "internal_error", "x"), 10),
        (PlatformError(502, "broker_unreachable", "x"), 13),
        (PlatformUnreachable("http://x", "ConnectError"), 11),
        (PlatformUnreachable("http://x", "timed out", timed_out=True), 12),
        (InvalidParameters("x", problems=[]), 2),
        (CLIError("x", 127), 127),
        (BindingNotFound("x"), 2),
        (
            OperationFailed(
                "provision a",
                {
                    "id": "1",
                    "kind": "provision",
                    "state": "failed",
                    "description": "boom",
                    "namespace": "default",
                    "instance": "a",
                    "binding": None,
                    "created_at": "",
                    "finished_at": None,
                },
            ),
            8,
        ),
        (RuntimeError("bug"), 1),
    ],
)
def test_exit_codes_follow_the_table(error: BaseException, code: int) -> None:
    """Each kind of failure has its documented exit code."""
    assert exit_code_for(error) == code


def test_invalid_parameters_are_one_line() -> None:
    """Several problems join into one line naming each field and rule."""
    error = InvalidParameters(
        "ignored",
        problems=[
            ParameterProblem("size", "maximum", "size: must be <= 10 (got 50)"),
            ParameterProblem("name", "type", "name: must be of type string (got 1)"),
        ],
    )
    assert one_line(error) == (
        "invalid parameters: size: must be <= 10 (got 50); name: must be of type string (got 1)"
    )


def test_unreachable_platform_exits_11(tmp_path: Path) -> None:
    """No platform listening: one line naming the URL, exit 11."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        env = {
            "SERVICEBAY_URL": f"http://127.0.0.1:{port}",
            "SERVICEBAY_TOKEN": "t",
            "SERVICEBAY_HOME": str(tmp_path),
        }
        result = CliRunner().invoke(build_app(), ["instances"], env=env)
    assert result.exit_code == 11
    assert result.stderr.strip() == (
        f"error: cannot reach the platform at http://127.0.0.1:{port}: ConnectError"
    )
    assert result.stdout == ""


def test_no_token_anywhere_exits_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without any token the command says how to log in, exit 3."""
    monkeypatch.delenv("SERVICEBAY_TOKEN", raising=False)
    monkeypatch.delenv("SERVICEBAY_URL", raising=False)
    result = CliRunner().invoke(build_app(), ["instances"], env={"SERVICEBAY_HOME": str(tmp_path)})
    assert result.exit_code == 3
    assert "bay login" in result.stderr


def test_unreachable_platform_message_never_shows_a_password_in_the_url(tmp_path: Path) -> None:
    """A URL given with user:password@ (never needed) is masked in the error line."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        env = {
            "SERVICEBAY_URL": f"http://alice:Hunter2Secret@127.0.0.1:{port}",
            "SERVICEBAY_TOKEN": "t",
            "SERVICEBAY_HOME": str(tmp_path),
        }
        result = CliRunner().invoke(build_app(), ["instances"], env=env)
    assert result.exit_code == 11
    assert "Hunter2Secret" not in result.stderr + result.stdout
    assert f"cannot reach the platform at http://***@127.0.0.1:{port}" in result.stderr
