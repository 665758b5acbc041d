"""`bay broker check`: run the OSB conformance self-test against a running broker.

A thin layer over :func:`servicebay.conformance.run_checks`: parse flags, run, print the table,
exit 0 when every MUST holds and 1 when any check failed; 2 when ``--plan`` names no plan of
the catalog, 3 when the broker refused the credentials (then nothing else was checked).
Registered onto the `bay broker` sub-app by :func:`register`.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

if TYPE_CHECKING:  # imported by the command itself: `bay` starts without the checks
    from servicebay.conformance import Report


def check(
    url: Annotated[str, typer.Argument(help="Base URL of the broker, e.g. http://127.0.0.1:8080")],
    username: Annotated[
        str | None, typer.Option(envvar="SERVICEBAY_BROKER_USERNAME", help="Basic auth user.")
    ] = None,
    password: Annotated[
        str | None, typer.Option(envvar="SERVICEBAY_BROKER_PASSWORD", help="Basic auth password.")
    ] = None,
    bearer_token: Annotated[
        str | None,
        typer.Option(envvar="SERVICEBAY_BROKER_BEARER_TOKEN", help="Bearer token (also checked)."),
    ] = None,
    plan: Annotated[
        list[str] | None,
        typer.Option(help="Only run the lifecycle on this plan (name or service/plan); repeat."),
    ] = None,
    poll_timeout: Annotated[
        float, typer.Option(help="Seconds to poll when a plan sets no maximum_polling_duration.")
    ] = 120.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Check a running broker against the Open Service Broker API v2.17.

    Creates, binds and deletes throwaway instances on every plan (ids start with
    `conformance-`), and sends malformed requests on purpose. Exit code 1 if any check fails,
    2 if --plan names no plan of the catalog, 3 if the broker refuses the credentials.

    Example: bay broker check http://127.0.0.1:8080 --username admin
    """
    from servicebay.conformance import UnknownPlanError, run_checks

    try:
        report = asyncio.run(
            run_checks(
                url,
                username=username,
                password=password,
                bearer_token=bearer_token,
                plans=plan or None,
                poll_timeout=poll_timeout,
            )
        )
    except UnknownPlanError as error:
        _fail(str(error), code=2)
    if report.credentials_refused and not as_json:
        _fail(f"{report.failed[0].detail}: {_credentials_hint(username, bearer_token)}", code=3)
    if as_json:
        typer.echo(json.dumps(_as_dicts(report), indent=2))
    else:
        report.render(_console())
    raise typer.Exit(3 if report.credentials_refused else 0 if report.ok else 1)


def _console() -> Console:
    """A terminal's width on a terminal; piped, rows never wrap (one grep-able line per check)."""
    console = Console()
    if console.is_terminal:
        return console
    return Console(width=100_000, soft_wrap=True)


def _credentials_hint(username: str | None, bearer_token: str | None) -> str:
    if username is not None:
        return "check --username/--password"
    if bearer_token is not None:
        return "check --bearer-token"
    return "give --username/--password or --bearer-token"


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _as_dicts(report: Report) -> dict[str, object]:
    return {
        "url": report.url,
        "ok": report.ok,
        "results": [
            {
                "check": r.check,
                "outcome": r.outcome.value,
                "asserts": r.title,
                "section": r.section,
                "detail": r.detail,
            }
            for r in report.results
        ],
    }


def register(app: typer.Typer) -> None:
    """Add the ``check`` command to the ``bay broker`` sub-app."""
    app.command("check")(check)
