"""The catalog over OSB HTTP, and parameters refused before anything is created in RabbitMQ."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.rabbitmq


async def test_catalog_offers_bindable_rabbitmq_with_three_plans(osb_session: Any) -> None:
    """Service `rabbitmq`, bindable, plans standard/shared/limited with draft-04 schemas."""
    response = await osb_session.client.get("/v2/catalog")
    assert response.status_code == 200
    (service,) = response.json()["services"]
    assert service["name"] == "rabbitmq" and service["bindable"] is True
    assert service["instances_retrievable"] and service["bindings_retrievable"]
    plans = {plan["name"]: plan for plan in service["plans"]}
    assert set(plans) == {"standard", "shared", "limited"}
    for plan in plans.values():
        create = plan["schemas"]["service_instance"]["create"]["parameters"]
        assert create["$schema"] == "http://json-schema.org/draft-04/schema#"
        assert set(create["properties"]) == {"max_connections", "max_queues", "default_queue_type"}
        assert create["properties"]["default_queue_type"]["enum"] == ["classic", "quorum", "stream"]
        assert plan["binding_rotatable"] is True
    limited = plans["limited"]["schemas"]["service_instance"]["create"]["parameters"]
    standard = plans["standard"]["schemas"]["service_instance"]["create"]["parameters"]
    assert limited["properties"]["max_connections"]["maximum"] <= 10
    assert limited["properties"]["max_queues"]["maximum"] <= 20
    assert standard["properties"]["max_connections"]["default"] >= 1000


@pytest.mark.parametrize(
    ("parameters", "named"),
    [
        ({"max_connections": 11}, "max_connections"),
        ({"max_queues": 0}, "max_queues"),
        ({"default_queue_type": "lazy"}, "default_queue_type"),
        ({"max_connections": "2"}, "max_connections"),
        ({"shards": 3}, "shards"),
    ],
)
async def test_parameters_outside_the_plan_are_refused_and_nothing_is_created(
    osb_session: Any,
    new_id: Any,
    rabbitmq_prefix: str,
    rabbitmq_names: Any,
    parameters: dict[str, Any],
    named: str,
) -> None:
    """Plan `limited` refuses out-of-range or unknown parameters with 400 naming the field."""
    response = await osb_session.provision(new_id(), "limited", **parameters)
    assert response.status_code == 400, response.text
    assert named in response.json()["description"]
    assert rabbitmq_names(rabbitmq_prefix) == set()
