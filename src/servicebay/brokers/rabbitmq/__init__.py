"""servicebay.brokers.rabbitmq: an OSB broker for RabbitMQ, written with the public SDK.

A service instance is a RabbitMQ virtual host with the plan's limits; a binding is a user with a
random password and rights on that vhost only. Serve it with::

    bay broker serve servicebay.brokers.rabbitmq:broker --username admin --password secret

configured through ``SERVICEBAY_RABBITMQ_*`` (see ``RabbitMQBrokerSettings`` and
docs/rabbitmq-broker.md).
"""

from __future__ import annotations

from servicebay.brokers.rabbitmq._broker import RabbitMQBroker
from servicebay.brokers.rabbitmq._catalog import PLANS, SERVICE_ID, PlanLimits
from servicebay.brokers.rabbitmq._management import ManagementAPI, ManagementAPIError
from servicebay.brokers.rabbitmq._names import user_name, vhost_name
from servicebay.brokers.rabbitmq._settings import (
    ENV_PREFIX,
    ConfigurationError,
    RabbitMQBrokerSettings,
    check_management_access,
)

__all__ = [
    "ENV_PREFIX",
    "PLANS",
    "SERVICE_ID",
    "ConfigurationError",
    "ManagementAPI",
    "ManagementAPIError",
    "PlanLimits",
    "RabbitMQBroker",
    "RabbitMQBrokerSettings",
    "broker",
    "check_management_access",
    "user_name",
    "vhost_name",
]

#: The broker `bay broker serve servicebay.brokers.rabbitmq:broker` serves; its settings are read
#: from the environment when it starts.
broker = RabbitMQBroker()
