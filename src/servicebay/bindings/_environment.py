"""The fallback source: a ``VCAP_SERVICES``-style JSON document in an environment variable.

Used only when no binding root exists, so an app written against :func:`servicebay.bindings.find`
also runs where credentials arrive the Cloud Foundry way::

    {"rabbitmq": [{"name": "chat-mq", "label": "rabbitmq", "credentials": {"uri": "amqp://..."}}]}

Each service entry becomes a :class:`Binding`: its name from ``binding_name`` or ``name``, its
``type`` from ``type`` (entry or credentials) or else the offering label, its entries from
``credentials`` (non-text values as JSON).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from servicebay.bindings._binding import PROVIDER_ENTRY, TYPE_ENTRY, Binding
from servicebay.bindings._errors import InvalidBinding

#: The environment variable read when no binding root exists.
ENV_VAR = "VCAP_SERVICES"

_NOT_NAME_CHARS = re.compile(r"[^a-z0-9\-.]+")


def parse_services(document: str) -> list[Binding]:
    """Parse a ``VCAP_SERVICES`` document into bindings, sorted by name."""
    try:
        services = json.loads(document)
    except json.JSONDecodeError as error:
        # The message says where, never what: the document holds credentials.
        raise InvalidBinding(
            f"{ENV_VAR} is not valid JSON (line {error.lineno}, column {error.colno})"
        ) from None
    if not isinstance(services, dict):
        raise InvalidBinding(f"{ENV_VAR} must be a JSON object of label -> list of services")
    found: list[Binding] = []
    for label, entries in services.items():
        if not isinstance(entries, list):
            raise InvalidBinding(f"{ENV_VAR}[{label!r}] must be a list of services")
        found.extend(_binding(str(label), entry) for entry in entries)
    return sorted(found, key=lambda binding: binding.name)


def _binding(label: str, entry: Any) -> Binding:
    """Turn one service entry of the document into a binding."""
    if not isinstance(entry, Mapping):
        raise InvalidBinding(f"{ENV_VAR}[{label!r}] holds a non-object service")
    credentials = entry.get("credentials") or {}
    if not isinstance(credentials, Mapping):
        raise InvalidBinding(f"{ENV_VAR}[{label!r}]: credentials must be an object")
    raw_name = str(entry.get("binding_name") or entry.get("name") or label)
    name = _binding_name(raw_name)
    binding_type = entry.get("type") or credentials.get(TYPE_ENTRY) or label
    provider = entry.get("provider") or credentials.get(PROVIDER_ENTRY)
    return Binding.from_credentials(
        name,
        str(binding_type),
        credentials,
        provider=str(provider) if provider else None,
    )


def _binding_name(raw: str) -> str:
    """Fold a Cloud Foundry service name ("My DB") into a binding name ("my-db")."""
    name = _NOT_NAME_CHARS.sub("-", raw.lower()).strip("-.")[:253]
    if not name:
        raise InvalidBinding(f"{ENV_VAR} service name {raw!r} has no usable character")
    return name
