"""Each instance keeps its API view, rendered as JSON text, in ``instances.view_json``.

A listing of 10,000 instances then reads stored text instead of joining four tables and
building some thirty JSON values per row (on PostgreSQL that building alone took ~150 ms).
Triggers keep the text in step with every write that changes what it shows: the instance row,
its last operation, and the names of its plan, service and broker; a write from any process,
or straight to the database, is covered. The view equals what ``records.instance_view``
renders in Python; tests hold the two equal on both databases.

Revision ID: 0003
Revises: 0002
"""

# Every SQL text below is assembled from this module's own constants, never from input.
# ruff: noqa: S608

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Instance columns the view shows (a write to any other column renders nothing).
_INSTANCE_COLUMNS = (
    "namespace, name, plan_pk, state, parameters_shown, dashboard_url, maintenance_info, "
    "last_operation_id, created_by, created_at, updated_at"
)
# Operation columns the view shows.
_OPERATION_COLUMNS = (
    "kind, state, description, namespace, instance_name, binding_name, created_by, "
    "created_at, updated_at, finished_at, attempts, orphan_mitigation_id, parent_id"
)


def _fields(ts: str, row: str) -> tuple[str, str]:
    """The instance's and its last operation's key/value pairs; ``ts`` renders a timestamp
    as the API does (six fraction digits, none when all are zero, and a Z); ``row`` names
    the instance row (``i`` or ``NEW``)."""
    operation = ", ".join(
        [
            "'id', lo.id",
            "'kind', lo.kind",
            "'state', lo.state",
            "'description', lo.description",
            "'namespace', lo.namespace",
            "'instance', lo.instance_name",
            "'binding', lo.binding_name",
            "'created_by', lo.created_by",
            f"'created_at', {ts.format('lo.created_at')}",
            f"'updated_at', {ts.format('lo.updated_at')}",
            f"'finished_at', {ts.format('lo.finished_at')}",
            "'attempts', lo.attempts",
            "'orphan_mitigation', lo.orphan_mitigation_id",
            "'parent', lo.parent_id",
        ]
    )
    instance = ", ".join(
        [
            f"'id', {row}.id",
            f"'name', {row}.name",
            f"'namespace', {row}.namespace",
            "'service', s.name",
            "'plan', p.name",
            "'broker', b.name",
            f"'state', {row}.state",
            "'parameters', {parameters}",
            f"'dashboard_url', {row}.dashboard_url",
            "'maintenance_info', {maintenance_info}",
            f"'created_by', {row}.created_by",
            f"'created_at', {ts.format(row + '.created_at')}",
            f"'updated_at', {ts.format(row + '.updated_at')}",
            "'last_operation', {last_operation}",
        ]
    )
    return instance, operation


# SQLite holds timestamps as text with six fraction digits.
_SQLITE_TS = "(replace(replace(CAST({} AS TEXT), ' ', 'T'), '.000000', '') || 'Z')"


def _sqlite_view(where: str) -> str:
    """A scalar subquery rendering the view of the instance ``where`` selects."""
    instance, operation = _fields(_SQLITE_TS, "i")
    # json() around the CASE: some SQLite builds drop the JSON subtype through CASE, and the
    # operation would nest as a string; json() makes it an object again (NULL stays NULL).
    body = instance.format(
        parameters="json(i.parameters_shown)",
        maintenance_info="json(i.maintenance_info)",
        last_operation=f"json(CASE WHEN lo.id IS NULL THEN NULL ELSE json_object({operation}) END)",
    )
    return (
        f"(SELECT json_object({body}) FROM instances AS i"
        " JOIN plans AS p ON p.id = i.plan_pk"
        " JOIN services AS s ON s.id = p.service_pk"
        " JOIN brokers AS b ON b.id = s.broker_id"
        " LEFT JOIN operations AS lo ON lo.id = i.last_operation_id"
        f" WHERE {where})"
    )


def _sqlite_refresh(where: str) -> str:
    """Re-render the view of each instance ``where`` selects (it may name ``NEW``)."""
    return f"UPDATE instances SET view_json = {_sqlite_view('i.id = instances.id')} WHERE {where};"


def _sqlite_triggers() -> list[str]:
    plans_of_service = "plan_pk IN (SELECT id FROM plans WHERE service_pk = NEW.id)"
    plans_of_broker = (
        "plan_pk IN (SELECT p.id FROM plans AS p JOIN services AS s ON s.id = p.service_pk"
        " WHERE s.broker_id = NEW.id)"
    )
    rules = [
        ("instance_view_insert", "AFTER INSERT ON instances", "", "id = NEW.id"),
        (
            "instance_view_update",
            f"AFTER UPDATE OF {_INSTANCE_COLUMNS} ON instances",
            "",
            "id = NEW.id",
        ),
        (
            "instance_view_operation_insert",
            "AFTER INSERT ON operations",
            "",
            "last_operation_id = NEW.id",
        ),
        (
            "instance_view_operation_update",
            f"AFTER UPDATE OF {_OPERATION_COLUMNS} ON operations",
            "",
            "last_operation_id = NEW.id",
        ),
        (
            "instance_view_plan",
            "AFTER UPDATE OF name ON plans",
            "NEW.name IS NOT OLD.name",
            "plan_pk = NEW.id",
        ),
        (
            "instance_view_service",
            "AFTER UPDATE OF name ON services",
            "NEW.name IS NOT OLD.name",
            plans_of_service,
        ),
        (
            "instance_view_broker",
            "AFTER UPDATE OF name ON brokers",
            "NEW.name IS NOT OLD.name",
            plans_of_broker,
        ),
    ]
    return [
        f"CREATE TRIGGER {name} {event} FOR EACH ROW"
        f"{' WHEN ' + when if when else ''} BEGIN {_sqlite_refresh(where)} END"
        for name, event, when, where in rules
    ]


_PG_TS = "(replace(to_char({}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), '.000000', '') || 'Z')"


def _postgres_statements() -> list[str]:
    """A BEFORE trigger renders the view into the instance row being written; writes to an
    operation or to a plan, service or broker name touch the instances they show (``SET x = x``
    on a watched column), which runs that trigger again."""
    instance, operation = _fields(_PG_TS, "NEW")
    body = instance.format(
        parameters="NEW.parameters_shown",
        maintenance_info="NEW.maintenance_info",
        last_operation=f"CASE WHEN lo.id IS NULL THEN NULL ELSE json_build_object({operation}) END",
    )
    touch = {
        "operation": "UPDATE instances SET last_operation_id = last_operation_id"
        " WHERE last_operation_id = NEW.id",
        "plan": "UPDATE instances SET plan_pk = plan_pk WHERE plan_pk = NEW.id",
        "service": "UPDATE instances SET plan_pk = plan_pk"
        " WHERE plan_pk IN (SELECT id FROM plans WHERE service_pk = NEW.id)",
        "broker": "UPDATE instances SET plan_pk = plan_pk WHERE plan_pk IN"
        " (SELECT p.id FROM plans AS p JOIN services AS s ON s.id = p.service_pk"
        " WHERE s.broker_id = NEW.id)",
    }
    statements = [
        f"""CREATE FUNCTION servicebay_instance_view() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT CAST(json_build_object({body}) AS text) INTO NEW.view_json
    FROM plans AS p
    JOIN services AS s ON s.id = p.service_pk
    JOIN brokers AS b ON b.id = s.broker_id
    LEFT JOIN operations AS lo ON lo.id = NEW.last_operation_id
    WHERE p.id = NEW.plan_pk;
    RETURN NEW;
END $$""",
        f"CREATE TRIGGER instance_view BEFORE INSERT OR UPDATE OF {_INSTANCE_COLUMNS}"
        " ON instances FOR EACH ROW EXECUTE FUNCTION servicebay_instance_view()",
    ]
    for source, update in touch.items():
        statements.append(
            f"""CREATE FUNCTION servicebay_instance_view_{source}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    {update};
    RETURN NULL;
END $$"""
        )
    statements += [
        "CREATE TRIGGER instance_view_operation AFTER INSERT OR UPDATE OF "
        f"{_OPERATION_COLUMNS} ON operations FOR EACH ROW"
        " EXECUTE FUNCTION servicebay_instance_view_operation()",
    ]
    for source, table in (("plan", "plans"), ("service", "services"), ("broker", "brokers")):
        statements.append(
            f"CREATE TRIGGER instance_view_{source} AFTER UPDATE OF name ON {table}"
            " FOR EACH ROW WHEN (NEW.name IS DISTINCT FROM OLD.name)"
            f" EXECUTE FUNCTION servicebay_instance_view_{source}()"
        )
    return statements


def upgrade() -> None:
    """Add ``view_json``, an index to find an operation's instance, the triggers, and render
    the view of every instance there is."""
    op.add_column("instances", sa.Column("view_json", sa.Text, nullable=True))
    op.create_index("ix_instances_last_operation", "instances", ["last_operation_id"])
    if op.get_bind().dialect.name == "postgresql":
        for statement in _postgres_statements():
            op.execute(statement)
        op.execute("UPDATE instances SET plan_pk = plan_pk")
    else:
        for statement in _sqlite_triggers():
            op.execute(statement)
        op.execute(_sqlite_refresh("1"))


def downgrade() -> None:
    """Drop the triggers, their functions, the index and the column."""
    if op.get_bind().dialect.name == "postgresql":
        for trigger, table in (
            ("instance_view", "instances"),
            ("instance_view_operation", "operations"),
            ("instance_view_plan", "plans"),
            ("instance_view_service", "services"),
            ("instance_view_broker", "brokers"),
        ):
            op.execute(f"DROP TRIGGER {trigger} ON {table}")
        for function in ("", "_operation", "_plan", "_service", "_broker"):
            op.execute(f"DROP FUNCTION servicebay_instance_view{function}()")
    else:
        for trigger in (
            "insert",
            "update",
            "operation_insert",
            "operation_update",
            "plan",
            "service",
            "broker",
        ):
            op.execute(f"DROP TRIGGER instance_view_{trigger}")
    op.drop_index("ix_instances_last_operation", "instances")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("view_json")
