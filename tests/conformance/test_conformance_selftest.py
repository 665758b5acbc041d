"""The self-test passes a conforming broker and names the rule a broken one breaks.

The conforming broker is the sandbox served by the SDK; the broken ones are the same app behind
middleware that breaks exactly one rule (see ``sb_conformance_support``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from sb_conformance_support import IgnoreVersionHeader, NewCredentialsOnRetry, serve_in_thread
from typer.testing import CliRunner

from servicebay.broker import BrokerSettings, create_app
from servicebay.cli.broker_check import register
from servicebay.conformance import Outcome, Report, run_checks
from servicebay.examples.sandbox import SandboxBroker

USER, PASSWORD = "check-user", "check-password"


def sandbox_app(tmp_path: Path) -> Any:
    settings = BrokerSettings(
        username=USER, password=PASSWORD, db=f"sqlite:///{tmp_path / 'broker.db'}"
    )
    return create_app(SandboxBroker(), settings=settings)


@pytest.fixture
def sandbox_url(tmp_path: Path) -> Iterator[str]:
    with serve_in_thread(sandbox_app(tmp_path)) as url:
        yield url


def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """bay broker (test stand-in)."""

    register(app)
    return app


def outcomes(report: Report) -> dict[str, Outcome]:
    return {r.check: r.outcome for r in report.results}


async def test_sandbox_passes_every_check(sandbox_url: str) -> None:
    """Against the sandbox broker nothing fails or warns, and every plan's lifecycle ran."""
    report = await run_checks(sandbox_url, username=USER, password=PASSWORD, poll_timeout=60)
    bad = [r for r in report.results if r.outcome in (Outcome.FAIL, Outcome.WARN)]
    assert not bad, "\n".join(f"{r.check}: {r.detail}" for r in bad)
    seen = outcomes(report)
    for check in (
        "catalog.schemas",
        "version.missing",
        "version.provision",
        "version.every_endpoint",
        "auth.provision",
        "auth.every_endpoint",
        "input.schema",
        "input.unchanged",
        "input.maintenance_info",
        "plan[sandbox/sync].bind.idempotent",
        "plan[sandbox/sync].provision.conflict",
        "plan[sandbox/sync].bind.conflict",
        "plan[sandbox/async].provision.poll",
        "plan[sandbox/async].provision.dashboard_url",
        "plan[sandbox/async].provision.async_required",
        "plan[sandbox/async].bind.poll",
        "plan[sandbox/async].deprovision.poll",
        "plan[sandbox/unbindable].bind.not_bindable",
        "plan[sandbox/rotatable].bind.rotate",
        "plan[sandbox/param].fetch_instance",
    ):
        assert seen.get(check) is Outcome.PASS, (check, seen.get(check))


def test_cli_exits_zero_and_prints_the_table(sandbox_url: str) -> None:
    """`bay broker check` exits 0 on a conforming broker and prints the summary."""
    result = CliRunner().invoke(
        cli(),
        ["check", sandbox_url, "--username", USER, "--password", PASSWORD, "--plan", "sync"],
    )
    assert result.exit_code == 0, result.output
    assert re.search(r"[1-9][0-9]+ passed, 0 failed", result.output), result.output
    assert "Binding" in result.output  # the spec section column


def test_piped_table_keeps_one_line_per_check(sandbox_url: str) -> None:
    """Not a terminal: rows never wrap, so each check is one line (grep-able), none continued."""
    result = CliRunner().invoke(
        cli(),
        ["check", sandbox_url, "--username", USER, "--password", PASSWORD, "--plan", "sync"],
        env={"COLUMNS": "80"},
    )
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("│")]
    assert rows and not [row for row in rows if re.match(r"│\s+│", row)], result.output
    assert any("plan[sandbox/sync].bind.idempotent" in row for row in rows)


def test_cli_json_output_never_contains_credentials(sandbox_url: str) -> None:
    """The report is printable: no password from any bind response appears in it."""
    result = CliRunner().invoke(
        cli(),
        [
            "check",
            sandbox_url,
            "--username",
            USER,
            "--password",
            PASSWORD,
            "--plan",
            "sync",
            "--json",
        ],
    )
    data = json.loads(result.output)
    assert data["ok"] is True
    assert PASSWORD not in result.output
    assert "sandbox://" not in result.output  # bind credentials' uri


def test_refused_credentials_are_said_first_and_nothing_else_is_checked(sandbox_url: str) -> None:
    """A wrong password: one line saying the broker refused the credentials, exit 3, no table."""
    result = CliRunner().invoke(
        cli(), ["check", sandbox_url, "--username", USER, "--password", "nope"]
    )
    assert result.exit_code == 3, result.output
    assert result.output.splitlines()[0] == (
        "error: the broker refused these credentials (401 on GET /v2/catalog): "
        "check --username/--password"
    )
    assert "version." not in result.output and "catalog.fetch" not in result.output


async def test_refused_credentials_are_one_failed_check() -> None:
    """run_checks stops at the refusal: a single failed `auth.accepted`, nothing misleading."""
    with serve_in_thread(_refusing_app()) as url:
        report = await run_checks(url, bearer_token="not-the-token")
    assert [r.check for r in report.results] == ["auth.accepted"]
    assert report.credentials_refused and not report.ok


def _refusing_app() -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = (await receive())["type"].rpartition(".")[2]  # startup | shutdown
                await send({"type": f"lifespan.{event}.complete"})
                if event == "shutdown":
                    return
        body = b'{"error": "Unauthorized", "description": "who are you?"}'
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


@pytest.mark.parametrize("selector", ["small", "nosuch/sync"])
def test_unknown_plan_is_an_error_naming_the_plans(sandbox_url: str, selector: str) -> None:
    """`--plan` naming no plan of the catalog: exit 2 and the plans there are, nothing run."""
    result = CliRunner().invoke(
        cli(),
        ["check", sandbox_url, "--username", USER, "--password", PASSWORD, "--plan", selector],
    )
    assert result.exit_code == 2, result.output
    first = result.output.splitlines()[0]
    assert first.startswith(f"error: no plan {selector!r} in the broker's catalog; its plans: ")
    assert "sandbox/sync" in first and "sandbox/async" in first
    assert "passed" not in result.output


def test_broker_ignoring_the_version_header_fails_version_checks(tmp_path: Path) -> None:
    """A broker answering 200 without X-Broker-API-Version fails `version.missing`, exit 1."""
    with serve_in_thread(IgnoreVersionHeader(sandbox_app(tmp_path))) as url:
        result = CliRunner().invoke(
            cli(),
            ["check", url, "--username", USER, "--password", PASSWORD, "--plan", "sync", "--json"],
        )
    assert result.exit_code == 1
    data = {r["check"]: r for r in json.loads(result.output)["results"]}
    assert data["version.missing"]["outcome"] == "fail"
    assert "200" in data["version.missing"]["detail"]
    assert data["version.unsupported"]["outcome"] == "fail"
    assert data["version.provision"]["outcome"] == "fail"
    assert data["version.every_endpoint"]["outcome"] == "fail"
    assert data["auth.every_endpoint"]["outcome"] == "pass"
    assert data["plan[sandbox/sync].bind.idempotent"]["outcome"] == "pass"


async def test_broker_handing_out_new_credentials_on_retry_fails_idempotency(
    tmp_path: Path,
) -> None:
    """A retried bind answering fresh credentials fails `bind.idempotent` (and only that)."""
    with serve_in_thread(NewCredentialsOnRetry(sandbox_app(tmp_path))) as url:
        report = await run_checks(url, username=USER, password=PASSWORD, plans=["sync"])
    result = report.get("plan[sandbox/sync].bind.idempotent")
    assert result.outcome is Outcome.FAIL
    assert "credentials differ" in result.detail
    assert [r.check for r in report.failed] == ["plan[sandbox/sync].bind.idempotent"]
    assert not report.ok


async def test_unreachable_broker_is_a_failed_check_not_a_crash() -> None:
    """Nothing listening: one failed `broker.reachable` check."""
    report = await run_checks("http://127.0.0.1:9", username=USER, password=PASSWORD)
    assert [r.check for r in report.failed] == ["broker.reachable"]


async def test_bearer_token_only_broker_passes_with_the_token(tmp_path: Path) -> None:
    """A broker configured with a bearer token is checked with it: auth checks pass."""
    settings = BrokerSettings(bearer_token="t0ken-for-check", db=f"sqlite:///{tmp_path / 'b.db'}")
    with serve_in_thread(create_app(SandboxBroker(), settings=settings)) as url:
        report = await run_checks(url, bearer_token="t0ken-for-check", plans=["sync"])
    assert report.ok, [f"{r.check}: {r.detail}" for r in report.failed]
    assert report.get("auth.missing").outcome is Outcome.PASS
    assert report.get("auth.wrong_bearer").outcome is Outcome.PASS
