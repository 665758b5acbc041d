"""``bay key create|list|show|delete INSTANCE``: service keys, credentials for use outside an app.

A key has the lifecycle of a binding (kind ``key`` on the platform). Its credentials are shown
only by ``bay key show INSTANCE NAME --reveal``; every other output shows them as ``***``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Group

from servicebay.cli import _config
from servicebay.cli._api import Binding, PlatformAPI
from servicebay.cli._parameters import REDACTED
from servicebay.cli.bindings import binding_table, create, delete, without_credentials
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
    note,
    run,
    table,
)

key_app = typer.Typer(
    name="key", help="Service keys: credentials for use outside an app.", no_args_is_help=True
)

InstanceArg = Annotated[str, typer.Argument(help="Instance the key belongs to.")]
KeyArg = Annotated[str, typer.Argument(help="Name of the key.")]


@key_app.command("create")
def create_key(
    instance: InstanceArg,
    name: Annotated[
        str | None, typer.Option("--name", help="Key name (default: INSTANCE-key-XXXXXX).")
    ] = None,
    param: ParamOption = None,
    params_file: ParamsFileOption = None,
    namespace: NamespaceOption = "default",
    no_wait: NoWaitOption = False,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Create a service key for an instance.

    Example: bay key create demo --name ci-key
    """
    key = run(
        create(instance, "key", None, name, param or [], params_file, namespace, no_wait, output)
    )
    note(f"see its credentials with: bay key show {instance} {key['name']} --reveal")


@key_app.command("list")
def list_keys(
    instance: InstanceArg,
    namespace: AnyNamespaceOption = "default",
    output: OutputOption = OutputFormat.table,
) -> None:
    """List an instance's service keys.

    Example: bay key list demo
    """
    run(_list(instance, namespace, output))


async def _list(instance: str, namespace: str, output: OutputFormat) -> None:
    async with _config.connect() as api:
        found = await api.bindings(namespace, instance=instance, kind="key")
    keys = [without_credentials(k) for k in found]
    rows = [
        (k["name"], k["namespace"], k["state"], k.get("created_by"), k.get("created_at"))
        for k in keys
    ]
    emit(keys, output, table(["NAME", "NAMESPACE", "STATE", "CREATED BY", "CREATED"], rows))


@key_app.command("show")
def show_key(
    instance: InstanceArg,
    name: KeyArg,
    reveal: Annotated[
        bool, typer.Option("--reveal", help="Print the credentials in clear text.")
    ] = False,
    namespace: NamespaceOption = "default",
    output: OutputOption = OutputFormat.table,
) -> None:
    """Show a service key; its credentials only with --reveal.

    Example: bay key show demo ci-key --reveal -o json
    """
    run(_show(instance, name, reveal, namespace, output))


async def _show(
    instance: str, name: str, reveal: bool, namespace: str, output: OutputFormat
) -> None:
    async with _config.connect() as api:
        key = await _key(api, instance, name, namespace)
    credentials: dict[str, Any] | None = key.get("credentials")
    if key.get("credentials_hidden"):
        raise CLIError(f"key {name}: credentials visible only to its creator or an admin", 3)
    if credentials is not None and not reveal:
        credentials = {field: REDACTED for field in credentials}
    shown = {**without_credentials(key), "credentials": credentials}
    view = details([(f"credentials.{k}", v) for k, v in (credentials or {}).items()])
    emit(shown, output, Group(binding_table(key), view))


@key_app.command("delete")
def delete_key(
    instance: InstanceArg,
    name: KeyArg,
    namespace: NamespaceOption = "default",
    no_wait: NoWaitOption = False,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Delete a service key: its credentials are revoked at the broker.

    Example: bay key delete demo ci-key
    """
    run(_delete(instance, name, namespace, no_wait, output))


async def _delete(
    instance: str, name: str, namespace: str, no_wait: bool, output: OutputFormat
) -> None:
    async with _config.connect() as api:
        await _key(api, instance, name, namespace)
        await delete(api, name, namespace, no_wait, output, what=f"delete key {name}")


async def _key(api: PlatformAPI, instance: str, name: str, namespace: str) -> Binding:
    """Return the key ``name`` of ``instance``; a binding or another instance's key is not one."""
    key = await api.binding(name, namespace)
    if key.get("kind") != "key" or key["instance"] != instance:
        raise CLIError(f"instance {instance} has no key {name}", 4)
    return key


def register(app: typer.Typer) -> None:
    """Add the ``key`` group to ``app``."""
    app.add_typer(key_app, name="key")
