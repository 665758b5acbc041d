"""The management API calls one lifecycle makes: one per step RabbitMQ needs, nothing more.

The benchmark (benchmarks/rabbitmq/bench_rabbitmq.py) sends these same calls as its raw side,
so this test also keeps that comparison fair.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from servicebay.brokers.rabbitmq import user_name

pytestmark = pytest.mark.rabbitmq


async def test_a_lifecycle_makes_eight_management_calls(
    make_broker: Any,
    serve: Any,
    faulty_transport: Any,
    new_id: Any,
    rabbitmq_prefix: str,
    rabbitmq_names: Any,
) -> None:
    """Provision, bind, unbind, deprovision: vhost, limits (both at once), user, grant, delete
    user and close its connections, list users and delete vhost (concurrently)."""
    transport = faulty_transport(lambda request: None)
    instance, binding = new_id(), new_id()
    async with serve(make_broker(transport=transport)) as osb:
        transport.seen.clear()  # start-up's access check is not part of a lifecycle
        assert (await osb.provision(instance)).status_code == 201
        assert (await osb.bind(instance, binding)).status_code == 201
        assert (await osb.unbind(instance, binding)).status_code == 200
        assert (await osb.deprovision(instance)).status_code == 200
    vhost = quote(rabbitmq_prefix + instance, safe="")
    user = quote(user_name(rabbitmq_prefix, instance, binding), safe="")
    calls = [(method, path.split("?")[0]) for method, path in transport.seen]
    assert calls[:6] == [
        ("PUT", f"/api/vhosts/{vhost}"),
        ("PUT", f"/api/parameters/vhost-limits/{vhost}/limits"),
        ("PUT", f"/api/users/{user}"),
        ("PUT", f"/api/permissions/{vhost}/{user}"),
        ("DELETE", f"/api/users/{user}"),
        ("DELETE", f"/api/connections/username/{user}"),
    ]
    assert sorted(calls[6:]) == [("DELETE", f"/api/vhosts/{vhost}"), ("GET", "/api/users")]
    assert rabbitmq_names(rabbitmq_prefix) == set()
