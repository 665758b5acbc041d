"""The sandbox broker's equivalent written with the `openbrokerapi` package: the benchmark's peer.

Same catalog shape (service `sandbox`, plans `sync` and `async`), same credentials in bind
responses, state in memory (the peer keeps nothing durable; ours does). Served the way the
package recommends for production: a real WSGI server in front of the package's Flask blueprint
(waitress by default, `gevent` as its own `api.serve` does when gevent is installed).

Run: python openbrokerapi_sandbox.py PORT USERNAME PASSWORD [waitress|gevent]
"""

from __future__ import annotations

import logging
import secrets
import sys
import threading

from openbrokerapi import api, errors
from openbrokerapi.catalog import ServicePlan
from openbrokerapi.service_broker import (
    BindDetails,
    Binding,
    DeprovisionDetails,
    DeprovisionServiceSpec,
    ProvisionDetails,
    ProvisionedServiceSpec,
    Service,
    ServiceBroker,
    UnbindDetails,
    UnbindSpec,
)

SERVICE_ID = "sandbox-peer-service"


class SandboxPeer(ServiceBroker):
    """In-memory sandbox: instances and bindings in dicts behind a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._instances: dict[str, ProvisionDetails] = {}
        self._bindings: dict[str, dict[str, str]] = {}

    def catalog(self) -> Service:
        plans = [
            ServicePlan(id="sandbox-peer-sync", name="sync", description="synchronous"),
            ServicePlan(id="sandbox-peer-async", name="async", description="asynchronous"),
        ]
        return Service(
            id=SERVICE_ID,
            name="sandbox",
            description="sandbox peer",
            bindable=True,
            plans=plans,
            # No plan_updateable, instances_/bindings_retrievable: this peer implements neither
            # update nor fetch, and declaring them would be a lie `bay broker check` catches.
        )

    def provision(
        self, instance_id: str, details: ProvisionDetails, async_allowed: bool, **kwargs: object
    ) -> ProvisionedServiceSpec:
        with self._lock:
            if instance_id in self._instances:
                raise errors.ErrInstanceAlreadyExists()
            self._instances[instance_id] = details
        return ProvisionedServiceSpec()

    def deprovision(
        self, instance_id: str, details: DeprovisionDetails, async_allowed: bool, **kwargs: object
    ) -> DeprovisionServiceSpec:
        with self._lock:
            if self._instances.pop(instance_id, None) is None:
                raise errors.ErrInstanceDoesNotExist()
        return DeprovisionServiceSpec(is_async=False)

    def bind(
        self,
        instance_id: str,
        binding_id: str,
        details: BindDetails,
        async_allowed: bool,
        **kwargs: object,
    ) -> Binding:
        password = secrets.token_urlsafe(18)
        credentials = {
            "uri": f"sandbox://{binding_id}:{password}@sandbox.local/{instance_id}",
            "username": binding_id,
            "password": password,
        }
        with self._lock:
            if binding_id in self._bindings:
                raise errors.ErrBindingAlreadyExists()
            self._bindings[binding_id] = credentials
        return Binding(credentials=credentials)

    def unbind(
        self,
        instance_id: str,
        binding_id: str,
        details: UnbindDetails,
        async_allowed: bool,
        **kwargs: object,
    ) -> UnbindSpec:
        with self._lock:
            if self._bindings.pop(binding_id, None) is None:
                raise errors.ErrBindingDoesNotExist()
        return UnbindSpec(is_async=False)


def main() -> None:
    port, username, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    server = sys.argv[4] if len(sys.argv) > 4 else "waitress"
    logging.basicConfig(level=logging.WARNING)
    logger = logging.getLogger("peer")
    credentials = api.BrokerCredentials(username, password)
    if server == "gevent":
        api.serve(SandboxPeer(), credentials, logger=logger, host="127.0.0.1", port=port)
        return
    import waitress
    from flask import Flask

    app = Flask("openbrokerapi-peer")
    app.register_blueprint(api.get_blueprint(SandboxPeer(), credentials, logger))
    waitress.serve(app, host="127.0.0.1", port=port, threads=8, _quiet=True)


if __name__ == "__main__":
    main()
