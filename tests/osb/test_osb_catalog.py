"""Catalog helpers: lookups, effective flags, schema accessors."""

from typing import Any

import pytest
from pydantic import ValidationError

from servicebay import osb

SCHEMA = {"type": "object", "properties": {"size": {"type": "integer"}}}


def _service(**overrides: Any) -> osb.Service:
    plans = overrides.pop("plans", None) or [
        {"id": "p1", "name": "small", "description": "small"},
        {
            "id": "p2",
            "name": "large",
            "description": "large",
            "bindable": False,
            "plan_updateable": True,
            "free": False,
            "schemas": {
                "service_instance": {
                    "create": {"parameters": SCHEMA},
                    "update": {"parameters": {}},
                },
                "service_binding": {"create": {"parameters": SCHEMA}},
            },
        },
    ]
    data = {"id": "s1", "name": "svc", "description": "d", "bindable": True, "plans": plans}
    return osb.Service.model_validate({**data, **overrides})


def test_find_service_and_plan_by_id_and_name() -> None:
    """Lookups by id and by (case-sensitive) name find the right objects or None."""
    catalog = osb.Catalog(services=[_service()])
    service = catalog.find_service("s1")
    assert service is not None
    assert catalog.find_service("nope") is None
    assert catalog.find_service_by_name("svc") is service
    assert catalog.find_service_by_name("SVC") is None
    plan = service.find_plan("p2")
    assert plan is not None and plan.name == "large"
    assert service.find_plan("p3") is None
    assert service.find_plan_by_name("small") is service.plans[0]


def test_plan_flags_override_service_flags() -> None:
    """A plan's bindable / plan_updateable win; otherwise the service's (default false)."""
    service = _service()
    small, large = service.plans
    assert small.effective_bindable(service) is True
    assert large.effective_bindable(service) is False
    assert small.effective_updateable(service) is False
    assert large.effective_updateable(service) is True
    updateable = _service(plan_updateable=True)
    assert updateable.plans[0].effective_updateable(updateable) is True


def test_free_defaults_to_true() -> None:
    """free is true unless the plan says false."""
    small, large = _service().plans
    assert small.is_free and not large.is_free


def test_schema_accessors() -> None:
    """The three schema accessors return the declared schemas or None."""
    small, large = _service().plans
    assert small.instance_create_schema() is None
    assert small.instance_update_schema() is None
    assert small.binding_create_schema() is None
    assert large.instance_create_schema() == SCHEMA
    assert large.instance_update_schema() == {}
    assert large.binding_create_schema() == SCHEMA


def test_models_are_frozen() -> None:
    """Models cannot be changed after validation."""
    service = _service()
    with pytest.raises(ValidationError, match="frozen"):
        service.name = "other"  # type: ignore[misc]


def test_bind_request_effective_app_guid() -> None:
    """bind_resource.app_guid wins over the deprecated top-level app_guid."""
    both = osb.BindRequest(
        service_id="s", plan_id="p", app_guid="old", bind_resource=osb.BindResource(app_guid="new")
    )
    assert both.effective_app_guid == "new"
    assert osb.BindRequest(service_id="s", plan_id="p", app_guid="old").effective_app_guid == "old"
    assert osb.BindRequest(service_id="s", plan_id="p").effective_app_guid is None


def test_operation_state_terminality() -> None:
    """Only succeeded and failed end polling."""
    assert not osb.OperationState.IN_PROGRESS.is_terminal
    assert osb.OperationState.SUCCEEDED.is_terminal
    assert osb.OperationState.FAILED.is_terminal
    assert osb.OperationState("in progress") is osb.OperationState.IN_PROGRESS


def test_display_metadata_follows_profile_conventions() -> None:
    """displayName, imageUrl, bullets and costs are read by the profile's names."""
    service = _service(
        metadata={"displayName": "Chat", "imageUrl": "data:x", "documentationUrl": "http://d"},
        plans=[
            {
                "id": "p",
                "name": "small",
                "description": "d",
                "metadata": {
                    "bullets": ["50 users"],
                    "costs": [{"amount": {"usd": 99}, "unit": "MONTHLY"}],
                    "displayName": "Small",
                },
            }
        ],
    )
    shown = service.display_metadata()
    assert shown is not None
    assert (shown.display_name, shown.image_url) == ("Chat", "data:x")
    assert shown.documentation_url == "http://d"
    plan = service.plans[0].display_metadata()
    assert plan is not None and plan.bullets == ["50 users"] and plan.display_name == "Small"
    assert plan.costs == [osb.Cost(amount={"usd": 99.0}, unit="MONTHLY")]


def test_display_metadata_off_convention_is_none_not_an_error() -> None:
    """Metadata that ignores the conventions does not break the catalog."""
    service = _service(
        metadata={"displayName": ["not", "a", "string"]},
        plans=[{"id": "p", "name": "n", "description": "d", "metadata": {"costs": "free"}}],
    )
    assert service.display_metadata() is None
    assert service.plans[0].display_metadata() is None
    assert _service().display_metadata() == osb.ServiceMetadata()
