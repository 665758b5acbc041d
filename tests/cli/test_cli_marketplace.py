"""`bay marketplace`: services, plans, and parameters rendered from the plans' schemas."""

from __future__ import annotations

import json

from conftest import Bay


def test_marketplace_lists_services_and_plans(bay: Bay, registered: str) -> None:
    """The sandbox service appears with its plans."""
    result = bay("marketplace")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if line.startswith("sandbox"))
    for plan in ("sync", "async", "param"):
        assert plan in line


def test_marketplace_service_renders_parameters(bay: Bay, registered: str) -> None:
    """A plan's parameters: type, default, range, and which are sensitive."""
    result = bay("marketplace", "sandbox", "--plan", "param")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "integer" in rows["size"]
    assert "1..10" in rows["size"]
    assert "yes" in rows["secret"]  # the SENSITIVE column


def test_marketplace_json_has_schemas(bay: Bay, registered: str) -> None:
    """-o json gives the full service with each plan's schemas."""
    result = bay("marketplace", "sandbox", "-o", "json")
    assert result.exit_code == 0, result.output
    service = json.loads(result.stdout)
    plans = {plan["name"]: plan for plan in service["plans"]}
    schema = plans["param"]["schemas"]["instance_create"]
    assert schema["properties"]["size"]["maximum"] == 10


def test_unknown_service_and_plan_exit_4(bay: Bay, registered: str) -> None:
    """Unknown service or plan: exit 4 with what exists."""
    assert bay("marketplace", "no-such-service").exit_code == 4
    result = bay("marketplace", "sandbox", "--plan", "nope")
    assert result.exit_code == 4
    assert "plans: " in result.stderr
