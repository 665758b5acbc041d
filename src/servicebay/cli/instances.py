"""``bay provision|update|deprovision|instances|instance|purge``: service instances.

Parameters are typed and checked against the plan's schema before anything is sent
(``_parameters``); async work is followed with a live progress display (``output.follow``)
unless ``--no-wait``. Sensitive parameters are redacted in every output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from servicebay.cli import _config
from servicebay.cli import _parameters as params
from servicebay.cli._api import JSON, Instance, PlatformAPI
from servicebay.cli.output import (
    AnyNamespaceOption,
    CLIError,
    NamespaceOption,
    NoWaitOption,
    OutputFormat,
    OutputOption,
    details,
    emit,
    fail,
    follow,
    run,
    state_text,
    table,
)

InstanceName = Annotated[str, typer.Argument(help="Name of the instance.")]
ParamOption = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        "-p",
        help="Parameter key=value (typed by the plan's schema; a.b=v nests; key:=JSON raw).",
    ),
]
ParamsFileOption = Annotated[
    Path | None, typer.Option("--params-file", help="JSON or YAML file with parameters.")
]
DryRunOption = Annotated[
    bool,
    typer.Option(
        "--dry-run", help="Show what would be sent and whether it would be accepted; send nothing."
    ),
]


def provision(
    service: Annotated[str, typer.Argument(help="Service to provision (see bay marketplace).")],
    name: InstanceName,
    plan: Annotated[str, typer.Option("--plan", help="Plan of the service.")],
    param: ParamOption = None,
    params_file: ParamsFileOption = None,
    namespace: NamespaceOption = "default",
    dry_run: DryRunOption = False,
    no_wait: NoWaitOption = False,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Create a service instance.

    Example: bay provision sandbox demo --plan param -p size=3 -p secret=s3cret
    """
    run(
        _provision(
            service, name, plan, param or [], params_file, namespace, dry_run, no_wait, output
        )
    )


async def _provision(
    service: str,
    name: str,
    plan_name: str,
    assignments: list[str],
    params_file: Path | None,
    namespace: str,
    dry_run: bool,
    no_wait: bool,
    output: OutputFormat,
) -> None:
    async with _config.connect() as api:
        plan = params.find_plan(await api.service(service, namespace), plan_name)
        schema = params.plan_schema(plan, "instance_create")
        parameters = params.from_command_line(assignments, params_file, schema)
        if dry_run:
            report = await api.provision(
                service, plan_name, name, namespace, parameters, dry_run=True
            )
            show_dry_run(report, schema, output)
            return
        # Checked here first so a mistake costs no round trip and names field, rule and range.
        params.check(schema, plan.get("constraints"), parameters, namespace)
        accepted = await api.provision(service, plan_name, name, namespace, parameters)
        await follow(api, accepted["operation"], what=f"provision {name}", no_wait=no_wait)
        await _show_after(api, accepted["instance"], no_wait, output)


def update(
    name: InstanceName,
    plan: Annotated[str | None, typer.Option("--plan", help="Move to this plan.")] = None,
    param: ParamOption = None,
    params_file: ParamsFileOption = None,
    namespace: NamespaceOption = "default",
    dry_run: DryRunOption = False,
    no_wait: NoWaitOption = False,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Change an instance's plan or parameters.

    Example: bay update demo -p size=5
    """
    run(_update(name, plan, param or [], params_file, namespace, dry_run, no_wait, output))


async def _update(
    name: str,
    plan_name: str | None,
    assignments: list[str],
    params_file: Path | None,
    namespace: str,
    dry_run: bool,
    no_wait: bool,
    output: OutputFormat,
) -> None:
    if plan_name is None and not assignments and params_file is None:
        fail("nothing to update: give --plan, -p or --params-file")
    async with _config.connect() as api:
        instance = await api.instance(name, namespace)
        offering = await api.service(instance["service"], namespace)
        plan = params.find_plan(offering, plan_name or instance["plan"])
        schema = params.plan_schema(plan, "instance_update")
        parameters: JSON | None = None
        if assignments or params_file:
            parameters = params.from_command_line(assignments, params_file, schema)
        if dry_run:
            report = await api.update(
                name, namespace, plan=plan_name, parameters=parameters, dry_run=True
            )
            show_dry_run(report, schema, output)
            return
        if parameters is not None:
            # Only what is given is sent (spec: no defaults on update), so only that is checked.
            params.check(schema, plan.get("constraints"), parameters, namespace, defaults=False)
        accepted = await api.update(name, namespace, plan=plan_name, parameters=parameters)
        await follow(api, accepted["operation"], what=f"update {name}", no_wait=no_wait)
        await _show_after(api, accepted["instance"], no_wait, output)


def deprovision(
    name: InstanceName,
    namespace: NamespaceOption = "default",
    no_wait: NoWaitOption = False,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Delete a service instance (its bindings and keys must be gone first).

    Example: bay deprovision demo
    """
    run(_deprovision(name, namespace, no_wait, output))


async def _deprovision(name: str, namespace: str, no_wait: bool, output: OutputFormat) -> None:
    async with _config.connect() as api:
        accepted = await api.deprovision(name, namespace)
        operation = await follow(
            api, accepted["operation"], what=f"deprovision {name}", no_wait=no_wait
        )
    emit(operation, output, details(_operation_pairs(operation), title=f"deprovision {name}"))


def purge(
    name: InstanceName,
    namespace: NamespaceOption = "default",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Forget an instance the broker can no longer answer for (asks first).

    The platform removes the instance and its bindings WITHOUT calling the broker, and keeps
    the removed records in the operation history as evidence.

    Example: bay purge broken-demo --yes
    """
    run(_purge(name, namespace, yes, output))


async def _purge(name: str, namespace: str, yes: bool, output: OutputFormat) -> None:
    async with _config.connect() as api:
        instance = await api.instance(name, namespace)
        bindings = await api.bindings(namespace, instance=name)
        if not yes:
            question = (
                f"Purge instance {name} ({instance['service']}/{instance['plan']}, state "
                f"{instance['state']}) and {len(bindings)} binding(s)/key(s) from the platform? "
                "The broker is NOT called: anything it still holds stays there."
            )
            if not typer.confirm(question, default=False, err=True):
                raise CLIError("purge aborted: nothing was changed", 1)
        result = await api.purge(name, namespace)
    removed = ", ".join(result.get("bindings") or []) or "none"
    evidence = (result.get("operation") or {}).get("id")
    pairs = [("purged", name), ("bindings removed", removed), ("evidence in operation", evidence)]
    emit(result, output, details(pairs))


def list_instances(
    service: Annotated[str | None, typer.Option("--service", help="Only this service.")] = None,
    namespace: AnyNamespaceOption = "default",
    output: OutputOption = OutputFormat.table,
) -> None:
    """List service instances.

    Example: bay instances -n '*' -o json
    """
    run(_list(service, namespace, output))


async def _list(service: str | None, namespace: str, output: OutputFormat) -> None:
    async with _config.connect() as api:
        items = await api.instances(namespace, service=service)
    rows = [
        (
            i["name"],
            i["namespace"],
            i["service"],
            i["plan"],
            i["state"],
            _last_operation_text(i),
        )
        for i in items
    ]
    emit(
        items,
        output,
        table(["NAME", "NAMESPACE", "SERVICE", "PLAN", "STATE", "LAST OPERATION"], rows),
    )


def show_instance(
    name: InstanceName,
    namespace: NamespaceOption = "default",
    output: OutputOption = OutputFormat.table,
) -> None:
    """Show one instance: plan, state, parameters (sensitive ones redacted), last operation.

    Example: bay instance demo -o yaml
    """
    run(_show(name, namespace, output))


async def _show(name: str, namespace: str, output: OutputFormat) -> None:
    async with _config.connect() as api:
        instance = await api.instance(name, namespace)
    emit(instance, output, instance_table(instance))


async def _show_after(
    api: PlatformAPI, accepted: Instance, no_wait: bool, output: OutputFormat
) -> None:
    """Show the instance as it is now (as accepted, with --no-wait)."""
    instance = accepted if no_wait else await api.instance(accepted["name"], accepted["namespace"])
    emit(instance, output, instance_table(instance))


def instance_table(instance: Instance) -> Table:
    """An instance as a field/value table."""
    return details(
        [
            ("name", instance["name"]),
            ("namespace", instance["namespace"]),
            ("service", instance["service"]),
            ("plan", instance["plan"]),
            ("broker", instance.get("broker")),
            ("state", instance["state"]),
            ("parameters", instance.get("parameters") or {}),
            ("dashboard", instance.get("dashboard_url")),
            ("created", f"{instance.get('created_at')} by {instance.get('created_by')}"),
            ("last operation", _last_operation_text(instance)),
        ]
    )


def _last_operation_text(instance: Instance | Any) -> str | None:
    """``provision succeeded`` plus the description, if it says more."""
    operation = instance.get("last_operation")
    if not operation:
        return None
    text = state_text(operation["state"], operation.get("description"), separator=": ")
    return f"{operation['kind']} {text}"


def _operation_pairs(operation: Any) -> list[tuple[str, Any]]:
    return [
        ("operation", operation["id"]),
        ("kind", operation["kind"]),
        ("state", operation["state"]),
        ("description", operation.get("description")),
    ]


def show_dry_run(report: JSON, schema: JSON | None, output: OutputFormat) -> None:
    """Print what would be sent and the verdict; exit 2 if it would be refused."""
    request = dict(report.get("request") or {})
    # The platform redacts already; redacting again costs nothing and guards every output.
    if "parameters" in request:
        request["parameters"] = params.redact(schema, request["parameters"] or {})
    report = {**report, "request": request}
    target = report.get("target") or {}
    problems = [str(p.get("message", p)) for p in report.get("problems") or []]
    pairs = [
        ("would be", "accepted" if report.get("accepted") else "refused"),
        ("target", f"{target.get('method')} {target.get('url')}{target.get('path')}"),
        ("broker", target.get("broker")),
        ("service", report.get("service")),
        ("plan", report.get("plan")),
        ("namespace", report.get("namespace")),
        ("parameters", request.get("parameters", "none sent")),
        ("context", request.get("context")),
    ]
    pairs += [("problem", problem) for problem in problems]
    emit(report, output, details(pairs, title="dry run: nothing was sent"))
    if not report.get("accepted"):
        raise CLIError("would be refused: " + ("; ".join(problems) or "see report"), 2)


def register(app: typer.Typer) -> None:
    """Add the instance commands to ``app``."""
    app.command("provision")(provision)
    app.command("update")(update)
    app.command("deprovision")(deprovision)
    app.command("purge")(purge)
    app.command("instances")(list_instances)
    app.command("instance")(show_instance)
