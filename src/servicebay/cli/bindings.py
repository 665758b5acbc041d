"""``bay bind|unbind|bindings``: connect an app to an instance, and disconnect it.

A binding gives an app credentials of its own; ``bay run --app APP`` projects them into the app's
``SERVICE_BINDING_ROOT``. Credentials are never printed here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, cast

import typer
from rich.table import Table

from servicebay.cli import _config
from servicebay.cli import _parameters as params
from servicebay.cli._api import JSON, Binding, PlatformAPI
from servicebay.cli.instances import ParamOption, ParamsFileOption
from servicebay.cli.output import (
    AnyNamespaceOption,
    CLIError,
    NamespaceOption,
    NoWaitOption,
    OutputFormat,
    OutputOption,
    details,
    emit,
    follow,
    note,
    run,
    table,
)


def bind(
    instance: Annotated[str, typer.Argument(help="Instance to bind.")],
    app: Annotated[str, typer.Option("--app", help="The app that gets the credentials.")],
    name: Annotated[
        str | None, typer.Option("--name", help="Binding name (default: INSTANCE-APP).")
    ] = None,
    param: ParamOption = None,
    params_file: ParamsFileOption = None,
    namespace: NamespaceOption = "default",
    no_wait: NoWaitOption = False,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Bind an instance to an app: the app gets credentials of its own.

    Example: bay bind chat-mq --app chat
    """
    run(create(instance, "app", app, name, param or [], params_file, namespace, no_wait, output))


async def create(
    instance_name: str,
    kind: Literal["app", "key"],
    app: str | None,
    name: str | None,
    assignments: list[str],
    params_file: Path | None,
    namespace: str,
    no_wait: bool,
    output: OutputFormat,
) -> Binding:
    """Create a binding or key after checking its parameters; follow it; show it."""
    async with _config.connect() as api:
        parameters: JSON | None = None
        if assignments or params_file:
            instance = await api.instance(instance_name, namespace)
            offering = await api.service(instance["service"], namespace)
            plan = params.find_plan(offering, instance["plan"])
            schema = params.plan_schema(plan, "binding_create")
            parameters = params.from_command_line(assignments, params_file, schema)
            params.check(schema, None, parameters)
        accepted = await api.bind(
            instance_name, namespace, kind=kind, app=app, name=name, parameters=parameters
        )
        binding: Binding = accepted["binding"]
        what = (
            f"bind {instance_name} to {app}" if kind == "app" else f"create key {binding['name']}"
        )
        await follow(api, accepted["operation"], what=what, no_wait=no_wait)
        if not no_wait:
            binding = await api.binding(binding["name"], namespace)
    binding = without_credentials(binding)
    emit(binding, output, binding_table(binding))
    if kind == "app" and not no_wait:
        note(f"app {app} finds it with: bay run --app {app} -- COMMAND")
    return binding


def unbind(
    name: Annotated[str, typer.Argument(help="Binding name, or the instance name with --app.")],
    app: Annotated[
        str | None, typer.Option("--app", help="Unbind this app from instance NAME.")
    ] = None,
    namespace: NamespaceOption = "default",
    no_wait: NoWaitOption = False,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Remove a binding: its credentials are revoked at the broker.

    Example: bay unbind chat-mq --app chat
    """
    run(_unbind(name, app, namespace, no_wait, output))


async def _unbind(
    name: str, app: str | None, namespace: str, no_wait: bool, output: OutputFormat
) -> None:
    async with _config.connect() as api:
        if app is not None:
            name = await _binding_of(api, name, app, namespace)
        await delete(api, name, namespace, no_wait, output, what=f"unbind {name}")


async def _binding_of(api: PlatformAPI, instance: str, app: str, namespace: str) -> str:
    """The one binding of ``app`` to ``instance``."""
    found = await api.bindings(namespace, instance=instance, app=app, kind="app")
    if not found:
        raise CLIError(f"app {app} has no binding to instance {instance}", 4)
    if len(found) > 1:
        names = ", ".join(b["name"] for b in found)
        raise CLIError(f"app {app} has several bindings to {instance} ({names}); name one", 5)
    return found[0]["name"]


async def delete(
    api: PlatformAPI, name: str, namespace: str, no_wait: bool, output: OutputFormat, *, what: str
) -> None:
    """Delete a binding or key and follow the work."""
    accepted = await api.unbind(name, namespace)
    operation = await follow(api, accepted["operation"], what=what, no_wait=no_wait)
    emit(
        operation,
        output,
        details([("binding", name), ("operation", operation["id"]), ("state", operation["state"])]),
    )


def list_bindings(
    instance: Annotated[str | None, typer.Option("--instance", help="Only this instance.")] = None,
    app: Annotated[str | None, typer.Option("--app", help="Only this app.")] = None,
    namespace: AnyNamespaceOption = "default",
    output: OutputOption = OutputFormat.table,
) -> None:
    """List app bindings (service keys: bay key list).

    Example: bay bindings --app chat -n '*'
    """
    run(_list(instance, app, namespace, output))


async def _list(
    instance: str | None, app: str | None, namespace: str, output: OutputFormat
) -> None:
    async with _config.connect() as api:
        items = await api.bindings(namespace, instance=instance, app=app, kind="app")
    items = [without_credentials(b) for b in items]
    rows = [
        (
            b["name"],
            b["namespace"],
            b["instance"],
            b.get("app"),
            b["service"],
            b["plan"],
            b["state"],
        )
        for b in items
    ]
    columns = ["NAME", "NAMESPACE", "INSTANCE", "APP", "SERVICE", "PLAN", "STATE"]
    emit(items, output, table(columns, rows))


def without_credentials(binding: Binding) -> Binding:
    """A copy without credentials: listings and tables never carry them."""
    copy = dict(binding)
    copy.pop("credentials", None)
    return cast(Binding, copy)


def binding_table(binding: Binding) -> Table:
    """A binding or key as a field/value table (no credentials)."""
    operation = binding.get("last_operation")
    return details(
        [
            ("name", binding["name"]),
            ("kind", binding.get("kind")),
            ("instance", binding["instance"]),
            ("app", binding.get("app")),
            ("service", f"{binding['service']}/{binding['plan']}"),
            ("namespace", binding["namespace"]),
            ("state", binding["state"]),
            (
                "last operation",
                f"{operation.get('kind')} {operation.get('state')}" if operation else None,
            ),
        ]
    )


def register(app: typer.Typer) -> None:
    """Add ``bind``, ``unbind`` and ``bindings`` to ``app``."""
    app.command("bind")(bind)
    app.command("unbind")(unbind)
    app.command("bindings")(list_bindings)
