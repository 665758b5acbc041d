"""servicebay.platform — the service catalog: brokers, plans, namespaces, instances, bindings.

``create_app(settings)`` is the ASGI app (HTTP API under ``/api/v1`` plus a small web page);
``Worker`` drives operations to brokers from the database. ``bay server`` runs both in one
process; ``bay worker`` runs more workers against the same database. See docs/platform.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from servicebay.platform.api.app import create_app
    from servicebay.platform.settings import PlatformSettings
    from servicebay.platform.worker import Worker

__all__ = ["PlatformSettings", "Worker", "create_app"]

# Imported when first used, not with the package: `bay` loads ``servicebay.platform.keys`` and
# ``.settings`` for every command, and the app and the worker would bring SQLAlchemy, Starlette
# and the rest along (about a second before any command could start).
_LAZY = {
    "create_app": "servicebay.platform.api.app",
    "PlatformSettings": "servicebay.platform.settings",
    "Worker": "servicebay.platform.worker",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
