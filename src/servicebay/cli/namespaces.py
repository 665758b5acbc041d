"""``bay namespace create|list|show|update|delete``: where instances live side by side.

A namespace (test, staging, development…) has the settings of the API's ``NamespaceSettings``:
``visible_plans`` (``service/plan`` or ``service/*``; none given = every plan), ``constraints``
(JSON schemas keyed ``service`` or ``service/plan`` that parameters must also meet, written short
with ``--constraint``, see ``_constraints``), ``max_instances`` (none = no limit) and a
``description``. The platform replaces settings as a whole (``PUT``), so ``update`` reads the
namespace, changes what its flags name and sends the result. ``--from-file`` takes the same
fields as JSON or YAML; ``bay namespace show NAME -o yaml`` writes such a file.

After a write the namespace's marketplace is read back, and a visible plan that matches nothing
or a constraint on a parameter no visible plan has is reported on stderr: either is a typo the
platform cannot see.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group

from servicebay.cli import _config
from servicebay.cli import _constraints as rules
from servicebay.cli import _parameters as params
from servicebay.cli._api import JSON, Namespace, PlatformAPI, PlatformError
from servicebay.cli.output import (
    CLIError,
    OutputFormat,
    OutputOption,
    details,
    emit,
    fail,
    note,
    run,
    table,
)

# The API's rule for names (platform/api/models.py NAME_PATTERN), checked here as well so that a
# name with a '/' is refused as a name instead of reaching another route.
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
SETTINGS = ("description", "visible_plans", "constraints", "max_instances", "members")
# Fields `bay namespace show -o yaml` prints that a file may carry back; the platform sets them.
_READ_ONLY = ("instance_count", "created_at", "updated_at")

namespace_app = typer.Typer(
    name="namespace",
    help="Namespaces: plan visibility, parameter constraints and an instance quota.",
    no_args_is_help=True,
)

NameArg = Annotated[str, typer.Argument(help="Name of the namespace.")]
DescriptionOption = Annotated[
    str | None, typer.Option("--description", help="What the namespace is for.")
]
VisiblePlanOption = Annotated[
    list[str] | None,
    typer.Option(
        "--visible-plan",
        help="Make SERVICE/PLAN (or SERVICE/*) visible; once any is given, other plans are hidden.",
    ),
]
ConstraintOption = Annotated[
    list[str] | None,
    typer.Option(
        "--constraint",
        help="Extra parameter rule: TARGET:FIELD<=N, TARGET:FIELD>=N, TARGET:FIELD=A,B or "
        "TARGET:=JSON-SCHEMA; TARGET is SERVICE or SERVICE/PLAN.",
    ),
]
MaxInstancesOption = Annotated[
    int | None,
    typer.Option("--max-instances", min=0, help="Most instances the namespace may hold."),
]
MemberOption = Annotated[
    list[str] | None,
    typer.Option(
        "--member",
        help="Let USER use the namespace; once it has members, only they (and admin) may.",
    ),
]
FromFileOption = Annotated[
    Path | None,
    typer.Option(
        "--from-file",
        "-f",
        help="JSON or YAML with description, visible_plans, constraints, max_instances, "
        "members; flags apply on top.",
    ),
]


@namespace_app.command("create")
def create_namespace(
    name: NameArg,
    description: DescriptionOption = None,
    visible_plan: VisiblePlanOption = None,
    constraint: ConstraintOption = None,
    max_instances: MaxInstancesOption = None,
    member: MemberOption = None,
    from_file: FromFileOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Create a namespace, optionally with visible plans, constraints, an instance quota and
    members (without members, every user may use it).

    Example: bay namespace create staging --member alice --constraint 'sandbox:size<=3'
    """
    run(
        _create(
            name, description, visible_plan, constraint, max_instances, member, from_file, output
        )
    )


async def _create(
    name: str,
    description: str | None,
    visible_plan: list[str] | None,
    constraint: list[str] | None,
    max_instances: int | None,
    member: list[str] | None,
    from_file: Path | None,
    output: OutputFormat,
) -> None:
    _check_name(name)
    # A file's own name is not checked here: creating from another namespace's export copies it.
    settings = load_settings(from_file) if from_file else {}
    settings.pop("name", None)
    if visible_plan:
        settings["visible_plans"] = _added(settings.get("visible_plans") or [], visible_plan)
    if constraint:
        settings["constraints"] = rules.apply(settings.get("constraints") or {}, constraint)
    if description is not None:
        settings["description"] = description
    if max_instances is not None:
        settings["max_instances"] = max_instances
    if member:
        settings["members"] = _added(settings.get("members") or [], member)
    await _write(name, settings, output, create=True)


@namespace_app.command("update")
def update_namespace(
    name: NameArg,
    description: DescriptionOption = None,
    visible_plan: VisiblePlanOption = None,
    hide_plan: Annotated[
        list[str] | None,
        typer.Option("--hide-plan", help="Take SERVICE/PLAN off the visible plans."),
    ] = None,
    all_plans: Annotated[
        bool, typer.Option("--all-plans", help="Make every plan visible again.")
    ] = False,
    constraint: ConstraintOption = None,
    remove_constraint: Annotated[
        list[str] | None,
        typer.Option(
            "--remove-constraint", help="Drop every rule on TARGET (SERVICE or SERVICE/PLAN)."
        ),
    ] = None,
    max_instances: MaxInstancesOption = None,
    unlimited: Annotated[
        bool, typer.Option("--unlimited", help="Remove the instance quota.")
    ] = False,
    member: MemberOption = None,
    remove_member: Annotated[
        list[str] | None,
        typer.Option(
            "--remove-member", help="Take USER off the members (none left: open to every user)."
        ),
    ] = None,
    from_file: FromFileOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Change a namespace's settings; the ones no flag names stay as they are.

    Existing instances are not checked again; the new rules apply to later provisions and
    updates. With --from-file the file replaces every setting, then flags apply.

    Example: bay namespace update staging --constraint 'sandbox/param:size>=2' --max-instances 10
    """
    changes = _Changes(
        description, visible_plan, hide_plan, all_plans, constraint, remove_constraint,
        max_instances, unlimited, member, remove_member,
    )  # fmt: skip
    run(_update(name, from_file, changes, output))


class _Changes:
    """What ``bay namespace update`` was asked to change."""

    def __init__(
        self,
        description: str | None,
        visible_plan: list[str] | None,
        hide_plan: list[str] | None,
        all_plans: bool,
        constraint: list[str] | None,
        remove_constraint: list[str] | None,
        max_instances: int | None,
        unlimited: bool,
        member: list[str] | None = None,
        remove_member: list[str] | None = None,
    ) -> None:
        self.description = description
        self.show = visible_plan or []
        self.hide = hide_plan or []
        self.all_plans = all_plans
        self.constraints = constraint or []
        self.removed = remove_constraint or []
        self.max_instances = max_instances
        self.unlimited = unlimited
        self.members = member or []
        self.removed_members = remove_member or []

    def check(self, *, given_file: bool) -> None:
        """Refuse flags that say nothing, or contradict each other."""
        if self.empty() and not given_file:
            fail("nothing to update: give a setting flag or --from-file")
        if self.all_plans and (self.show or self.hide):
            fail("--all-plans goes alone: it makes every plan visible")
        if self.unlimited and self.max_instances is not None:
            fail("give either --max-instances or --unlimited")

    def empty(self) -> bool:
        """Whether no flag asks for a change."""
        return not (
            self.description is not None
            or self.show
            or self.hide
            or self.all_plans
            or self.constraints
            or self.removed
            or self.max_instances is not None
            or self.unlimited
            or self.members
            or self.removed_members
        )

    def applied(self, settings: JSON) -> JSON:
        """``settings`` with these changes made (checked: hiding or removing what is absent)."""
        result = dict(settings)
        if self.description is not None:
            result["description"] = self.description
        visible = result.get("visible_plans")
        if self.all_plans:
            visible = None
        if self.show:
            visible = _added(visible or [], self.show)
        for entry in self.hide:
            if visible is None or entry not in visible:
                shown = "every plan" if visible is None else ", ".join(visible) or "none"
                fail(f"--hide-plan {entry}: not among the visible plans (visible: {shown})")
            visible = [v for v in visible if v != entry]
        result["visible_plans"] = visible
        constraints = dict(result.get("constraints") or {})
        for target in self.removed:
            if constraints.pop(target, None) is None:
                known = ", ".join(constraints) or "none"
                fail(f"--remove-constraint {target}: no rule on it (targets: {known})")
        result["constraints"] = rules.apply(constraints, self.constraints)
        if self.unlimited:
            result["max_instances"] = None
        elif self.max_instances is not None:
            result["max_instances"] = self.max_instances
        if self.members or self.removed_members:
            members = _added(result.get("members") or [], self.members)
            for user in self.removed_members:
                if user not in members:
                    fail(f"--remove-member {user}: not a member (members: "
                         f"{', '.join(members) or 'none'})")  # fmt: skip
                members.remove(user)
            result["members"] = members
        return result


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        fail(f"namespace {name!r}: must be a lowercase name (a-z, 0-9, '-', 1-63 chars)")


def _added(visible: list[str], more: list[str]) -> list[str]:
    """``visible`` plus ``more``, each entry once, in the order given."""
    return list(dict.fromkeys([*visible, *more]))


def load_settings(path: Path) -> JSON:
    """Read namespace settings from a JSON/YAML file (``show -o yaml`` output is accepted).

    The file's ``name``, if any, is kept under ``name`` for the caller to compare.
    """
    data = params.load_file(path, "namespace file")
    unknown = sorted(set(data) - {*SETTINGS, *_READ_ONLY, "name"})
    if unknown:
        fail(
            f"namespace file {str(path)!r}: unknown field(s) {', '.join(unknown)} "
            f"(settings: {', '.join(SETTINGS)})"
        )
    # Flags merge into these two, so their shape is checked here; the platform checks the rest.
    if not isinstance(data.get("constraints", {}), dict):
        fail(f"namespace file {str(path)!r}: constraints must map SERVICE[/PLAN] to a schema")
    if not isinstance(data.get("visible_plans", []), list | None):
        fail(f"namespace file {str(path)!r}: visible_plans must be a list (or null: every plan)")
    return {key: data[key] for key in (*SETTINGS, "name") if key in data}


async def _write(
    name: str, settings: JSON, output: OutputFormat, *, create: bool, read_at: str | None = None
) -> None:
    async with _config.connect() as api:
        if create:
            namespace = await api.create_namespace(name, settings)
        else:
            namespace = await api.replace_namespace(name, settings, read_at=read_at)
        await _warn_unmatched(api, namespace)
    emit(namespace, output, namespace_view(namespace))


async def _update(
    name: str, from_file: Path | None, changes: _Changes, output: OutputFormat
) -> None:
    _check_name(name)
    changes.check(given_file=from_file is not None)
    read_at = None
    if from_file is not None:
        base = load_settings(from_file)
        if base.pop("name", name) != name:
            fail(f"namespace file {str(from_file)!r} is for another namespace, not {name!r}")
    else:
        async with _config.connect() as api:
            current = await api.namespace(name)
        base = {
            "description": current["description"],
            "visible_plans": current["visible_plans"],
            "constraints": current["constraints"],
            "max_instances": current["max_instances"],
            "members": current.get("members") or [],
        }
        read_at = current["updated_at"]  # the write is refused if someone changed it since
    await _write(name, changes.applied(base), output, create=False, read_at=read_at)
    if changes.show and base.get("visible_plans") is None:
        note(f"every other plan is now hidden (visible: {', '.join(changes.show)})")
    if changes.removed_members and not changes.applied(base).get("members"):
        note(f"namespace {name} has no members left: every user may use it now")


async def _warn_unmatched(api: PlatformAPI, namespace: Namespace) -> None:
    """Note visible plans matching no plan, and constrained parameters no visible plan has."""
    offered = {
        (service["name"], plan["name"]): plan
        for service in await api.marketplace(namespace["name"])
        for plan in service["plans"]
    }
    for entry in namespace["visible_plans"] or []:
        service, _, plan = entry.partition("/")
        if not any(s == service and plan in ("*", p) for s, p in offered):
            note(f"warning: visible plan {entry} matches no plan in the catalog")
    for target, schema in namespace["constraints"].items():
        service, _, plan_name = target.partition("/")
        plans = [p for (s, n), p in offered.items() if s == service and plan_name in ("", n)]
        for field in rules.fields(schema) if plans else []:
            if not any(_has_parameter(plan, field) for plan in plans):
                note(f"warning: constraint on {target}: no visible plan has parameter {field!r}")


def _has_parameter(plan: Any, field: str) -> bool:
    """Whether a plan may take ``field`` (dotted path): its schemas declare it, or it has none."""
    schemas = [params.plan_schema(plan, a) for a in ("instance_create", "instance_update")]
    if not any(schemas):
        return True  # no schema: any parameter is accepted, so the rule can apply
    path = field.split(".")
    return any(params.property_schema(schema, path) is not None for schema in schemas if schema)


@namespace_app.command("list")
def list_namespaces(output: OutputOption = OutputFormat.table) -> None:
    """List namespaces with their instance counts, visible plans and constrained targets.

    Example: bay namespace list -o json
    """
    run(_list(output))


async def _list(output: OutputFormat) -> None:
    async with _config.connect() as api:
        items = await api.namespaces()
    rows = [
        (
            n["name"],
            _count_text(n),
            _visible_text(n["visible_plans"]),
            ", ".join(n["constraints"]) or None,
            n["description"] or None,
        )
        for n in items
    ]
    headers = ["NAME", "INSTANCES", "VISIBLE PLANS", "CONSTRAINTS ON", "DESCRIPTION"]
    emit(items, output, table(headers, rows))


@namespace_app.command("show")
def show_namespace(name: NameArg, output: OutputOption = OutputFormat.table) -> None:
    """Show a namespace: its settings, each constraint as a rule, and its instance count.

    Example: bay namespace show staging -o yaml > staging.yaml
    """
    run(_show(name, output))


async def _show(name: str, output: OutputFormat) -> None:
    _check_name(name)
    async with _config.connect() as api:
        namespace = await api.namespace(name)
    emit(namespace, output, namespace_view(namespace))


@namespace_app.command("delete")
def delete_namespace(name: NameArg) -> None:
    """Delete a namespace that holds no instances (default cannot be deleted).

    Example: bay namespace delete staging
    """
    run(_delete(name))


async def _delete(name: str) -> None:
    _check_name(name)
    async with _config.connect() as api:
        try:
            await api.delete_namespace(name)
        except PlatformError as error:
            if error.code != "namespace_in_use":
                raise
            hint = f"{error.message}: deprovision them first (bay instances -n {name})"
            raise CLIError(hint, 5) from error
    note(f"deleted namespace {name}")


def namespace_view(namespace: Namespace) -> Group:
    """Settings as field/value pairs, then one row per constrained parameter."""
    settings = details(
        [
            ("name", namespace["name"]),
            ("description", namespace["description"] or None),
            ("visible plans", _visible_text(namespace["visible_plans"])),
            ("members", _members_text(namespace.get("members") or [])),
            ("instances", _count_text(namespace)),
            ("created", namespace["created_at"]),
            ("updated", namespace["updated_at"]),
        ]
    )
    rows = [
        row for target, schema in namespace["constraints"].items() for row in _rules(target, schema)
    ]
    if not rows:
        return Group(settings)
    return Group(settings, "", table(["TARGET", "PARAMETER", "RULE"], rows, title="constraints"))


def _rules(target: str, schema: JSON) -> list[tuple[str, Any, Any]]:
    """A constraint as readable rules (``size``, ``<= 3``); a schema of another shape as JSON."""
    described: list[tuple[str, Any, Any]] = [
        (target, row["name"], row["allowed"]) for row in params.describe(schema) if row["allowed"]
    ]
    rest = {key: value for key, value in schema.items() if key != "properties"}
    if rest or not described:
        described.append((target, None, rest or schema))
    return described


def _members_text(members: list[str]) -> str:
    return ", ".join(members) if members else "none (open to every user)"


def _visible_text(visible: list[str] | None) -> str:
    if visible is None:
        return "all"
    return ", ".join(visible) or "none"


def _count_text(namespace: Namespace) -> str:
    limit = namespace["max_instances"]
    count = namespace["instance_count"]
    return f"{count} (no limit)" if limit is None else f"{count} of {limit}"


def register(app: typer.Typer) -> None:
    """Add the ``namespace`` group to ``app``."""
    app.add_typer(namespace_app, name="namespace")
