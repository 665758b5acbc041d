"""Names the broker gives to what it creates in RabbitMQ, and the URIs it hands out.

Names are derived from the OSB ids alone, never stored elsewhere: a retried or resumed
operation finds what an interrupted one created, and deprovision finds every user of an
instance by name. The vhost keeps the instance id readable; a user name carries digests of the
instance and binding ids, so one instance's users share a prefix no other instance's can share
(ids are arbitrary strings; digests have a fixed length and no separator inside).
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote

__all__ = ["amqp_uri", "user_name", "user_prefix", "vhost_name"]

_DIGEST_CHARS = 16  # 64 bits: collisions between ids of one broker are not a concern


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:_DIGEST_CHARS]


def vhost_name(prefix: str, instance_id: str) -> str:
    """The vhost of a service instance."""
    return f"{prefix}{instance_id}"


def user_prefix(prefix: str, instance_id: str) -> str:
    """What every user name of the instance's bindings starts with."""
    return f"{prefix}{_digest(instance_id)}-"


def user_name(prefix: str, instance_id: str, binding_id: str) -> str:
    """The RabbitMQ user of a binding."""
    return user_prefix(prefix, instance_id) + _digest(binding_id)


def amqp_uri(*, tls: bool, host: str, port: int, username: str, password: str, vhost: str) -> str:
    """An AMQP URI per RabbitMQ's URI spec: every part percent-encoded, the vhost as one
    path segment (so ``/`` in a vhost name becomes ``%2F``)."""
    scheme = "amqps" if tls else "amqp"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # RFC 3986: an IPv6 literal goes in brackets
    userinfo = f"{quote(username, safe='')}:{quote(password, safe='')}"
    return f"{scheme}://{userinfo}@{host}:{port}/{quote(vhost, safe='')}"
