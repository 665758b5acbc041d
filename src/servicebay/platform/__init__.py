"""servicebay.platform — the service catalog: brokers, plans, namespaces, instances, bindings.

``create_app(settings)`` is the ASGI app (HTTP API under ``/api/v1`` plus a small web page);
``Worker`` drives operations to brokers from the database. ``bay server`` runs both in one
process; ``bay worker`` runs more workers against the same database. See docs/platform.md.
"""

from servicebay.platform.api.app import create_app
from servicebay.platform.settings import PlatformSettings
from servicebay.platform.worker import Worker

__all__ = ["PlatformSettings", "Worker", "create_app"]
