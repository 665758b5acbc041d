"""``bay marketplace``: the services and plans on offer, and each plan's parameters.

Parameters are rendered from the plans' JSON schemas: name, type, whether required, default,
the allowed range or values, and whether the value is sensitive (never shown once set).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Group

from servicebay.cli import _config
from servicebay.cli import _parameters as params
from servicebay.cli._api import Plan, Service
from servicebay.cli.output import (
    NamespaceOption,
    OutputFormat,
    OutputOption,
    emit,
    run,
    stdout,
    table,
)

# Schemas a plan may carry, and how a person calls each one.
_ACTIONS = (
    ("instance_create", "provision"),
    ("instance_update", "update"),
    ("binding_create", "bind"),
)


def marketplace(
    service: Annotated[
        str | None, typer.Argument(help="Show this service's plans and parameters.")
    ] = None,
    plan: Annotated[str | None, typer.Option("--plan", help="Only this plan.")] = None,
    namespace: NamespaceOption = "default",
    output: OutputOption = OutputFormat.table,
) -> None:
    """List services and plans; with SERVICE, show each plan's parameters.

    Example: bay marketplace sandbox --plan param
    """
    run(_marketplace(service, plan, namespace, output))


async def _marketplace(
    service: str | None, plan: str | None, namespace: str, output: OutputFormat
) -> None:
    async with _config.connect() as api:
        if service is None:
            services = await api.marketplace(namespace)
            rows = [
                (s["name"], ", ".join(p["name"] for p in s["plans"]), s["broker"], s["description"])
                for s in services
            ]
            emit(services, output, table(["SERVICE", "PLANS", "BROKER", "DESCRIPTION"], rows))
            return
        offering = await api.service(service, namespace)
    plans = [params.find_plan(offering, plan)] if plan else offering["plans"]
    if output is not OutputFormat.table:
        emit({**offering, "plans": plans}, output)
        return
    stdout().print(_service_view(offering, plans))


def _service_view(service: Service, plans: list[Plan]) -> Group:
    """Plans table, then one parameters table per plan and schema."""
    plan_rows = [
        (p["name"], p.get("free"), p.get("bindable"), p.get("plan_updateable"), p["description"])
        for p in plans
    ]
    parts: list[Any] = [
        table(
            ["PLAN", "FREE", "BINDABLE", "UPDATEABLE", "DESCRIPTION"],
            plan_rows,
            title=f"{service['name']} ({service['broker']}): {service['description']}",
        )
    ]
    for plan in plans:
        for action, verb in _ACTIONS:
            rows = params.describe(params.plan_schema(plan, action))
            if rows:
                parts.append("")
                parts.append(_parameters_table(f"plan {plan['name']}: {verb} parameters", rows))
        constraints = plan.get("constraints")
        rows = params.describe(constraints)
        if rows:
            parts.append("")
            parts.append(_parameters_table(f"plan {plan['name']}: namespace constraints", rows))
    return Group(*parts)


def _parameters_table(title: str, rows: list[dict[str, Any]]) -> Any:
    """One row per parameter: what it is, what it accepts."""
    return table(
        ["PARAMETER", "TYPE", "REQUIRED", "DEFAULT", "ALLOWED", "SENSITIVE", "DESCRIPTION"],
        [
            (
                row["name"],
                row["type"],
                row["required"],
                row["default"],
                row["allowed"],
                row["sensitive"],
                row["description"],
            )
            for row in rows
        ],
        title=title,
    )


def register(app: typer.Typer) -> None:
    """Add ``marketplace`` to ``app``."""
    app.command("marketplace")(marketplace)
