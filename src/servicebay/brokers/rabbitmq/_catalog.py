"""The RabbitMQ broker's catalog: one service, three plans, each with its limits' schema.

Every plan lets the user choose ``max_connections`` and ``max_queues`` (applied as vhost limits,
so RabbitMQ itself refuses the connection or queue beyond them) and ``default_queue_type``
(applied as the vhost's default queue type). Plans differ in their defaults and maxima. The
schemas are draft-04 (spec "Input Parameters Schema Object": platforms MUST support draft-04).
Ids are fixed so a restarted broker offers the same catalog.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from servicebay import osb

__all__ = ["PLANS", "QUEUE_TYPES", "SERVICE_ID", "PlanLimits", "catalog", "limits_of"]

SERVICE_ID = "660c461d-3d52-44cc-8e27-1fe3ae415742"
QUEUE_TYPES = ("classic", "quorum", "stream")


@dataclass(frozen=True)
class PlanLimits:
    """Defaults and maxima of one plan's vhost limits."""

    plan_id: str
    name: str
    description: str
    connections_default: int
    connections_max: int
    queues_default: int
    queues_max: int
    free: bool = True


PLANS: tuple[PlanLimits, ...] = (
    PlanLimits(
        "ce5488e8-404a-40fe-a920-722a579758f2",
        "standard",
        "A vhost of its own with generous limits (1,000 connections and queues by default).",
        connections_default=1000,
        connections_max=10000,
        queues_default=1000,
        queues_max=10000,
    ),
    PlanLimits(
        "8ac7b68d-516a-48e8-a03f-2cfbcdddd1e7",
        "shared",
        "A vhost of its own on the shared cluster: up to 500 connections and 500 queues.",
        connections_default=100,
        connections_max=500,
        queues_default=100,
        queues_max=500,
    ),
    PlanLimits(
        "7fae1440-7fb4-4b0b-bdb6-02fc2f35a805",
        "limited",
        "A small vhost for tests and trials: up to 10 connections and 20 queues.",
        connections_default=5,
        connections_max=10,
        queues_default=10,
        queues_max=20,
    ),
)


def limits_of(plan: osb.Plan) -> PlanLimits:
    """The limits of one of this catalog's plans."""
    for limits in PLANS:
        if limits.plan_id == plan.id:
            return limits
    raise osb.BadRequest(f"plan {plan.name!r} is not a plan of the rabbitmq service")


def _schema(limits: PlanLimits, *, with_defaults: bool) -> dict[str, Any]:
    """The parameters schema; update schemas carry no defaults (only what is sent changes)."""

    def default(value: Any) -> dict[str, Any]:
        return {"default": value} if with_defaults else {}

    return {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "max_connections": {
                "type": "integer",
                "minimum": 1,
                "maximum": limits.connections_max,
                **default(limits.connections_default),
                "description": "Most client connections open at once in this vhost.",
            },
            "max_queues": {
                "type": "integer",
                "minimum": 1,
                "maximum": limits.queues_max,
                **default(limits.queues_default),
                "description": "Most queues that can exist in this vhost.",
            },
            "default_queue_type": {
                "type": "string",
                "enum": list(QUEUE_TYPES),
                **default("classic"),
                "description": "Type of queues declared without x-queue-type. Set at "
                "provision; RabbitMQ cannot change it afterwards.",
            },
        },
    }


def _plan(limits: PlanLimits) -> osb.Plan:
    return osb.Plan(
        id=limits.plan_id,
        name=limits.name,
        description=limits.description,
        free=limits.free,
        bindable=True,
        binding_rotatable=True,
        plan_updateable=True,
        metadata={
            "displayName": limits.name.capitalize(),
            "bullets": [
                f"up to {limits.connections_max} connections",
                f"up to {limits.queues_max} queues",
                "classic, quorum or stream queues",
            ],
        },
        schemas=osb.Schemas(
            service_instance=osb.ServiceInstanceSchemas(
                create=osb.InputParameters(parameters=_schema(limits, with_defaults=True)),
                update=osb.InputParameters(parameters=_schema(limits, with_defaults=False)),
            )
        ),
    )


def catalog() -> osb.Catalog:
    """The broker's catalog: the ``rabbitmq`` service and its plans."""
    return osb.Catalog(
        services=[
            osb.Service(
                name="rabbitmq",
                id=SERVICE_ID,
                description="RabbitMQ virtual hosts with a user of their own per binding.",
                tags=["rabbitmq", "amqp", "messaging"],
                bindable=True,
                instances_retrievable=True,
                bindings_retrievable=True,
                plan_updateable=True,
                metadata={
                    "displayName": "RabbitMQ",
                    "providerDisplayName": "servicebay",
                },
                plans=[_plan(limits) for limits in PLANS],
            )
        ]
    )
