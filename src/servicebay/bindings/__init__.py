"""servicebay.bindings — service bindings as an app sees them (servicebinding.io layout).

An app finds its credentials without configuration::

    from servicebay import bindings

    mq = bindings.find(type="rabbitmq")      # one Binding, or a clear error
    connect(mq["uri"])

Bindings are read from ``$SERVICE_BINDING_ROOT/<binding-name>/<entry>`` (spec: "Workload
Projection"); when no root exists, from a ``VCAP_SERVICES``-style JSON environment variable.
:func:`watch` / :func:`awatch` report changes so rotated credentials are picked up without a
restart. :func:`write`, :func:`remove` and :func:`project` are the writer's side, used by the
platform and ``bay run``: files 0600, directories 0700, each binding replaced atomically.

Where it sits: apps (and ``servicebay.chat``) read; ``servicebay.cli`` writes. It depends on
nothing else in servicebay.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from servicebay.bindings import _layout
from servicebay.bindings._binding import Binding
from servicebay.bindings._collection import Bindings, load, resolve_root
from servicebay.bindings._environment import ENV_VAR
from servicebay.bindings._errors import (
    AmbiguousBinding,
    BindingError,
    BindingNotFound,
    InvalidBinding,
)
from servicebay.bindings._layout import ROOT_ENV
from servicebay.bindings._watch import Watcher, awatch, watch

__all__ = [
    "ENV_VAR",
    "ROOT_ENV",
    "AmbiguousBinding",
    "Binding",
    "BindingError",
    "BindingNotFound",
    "Bindings",
    "InvalidBinding",
    "Watcher",
    "all",
    "awatch",
    "find",
    "load",
    "project",
    "remove",
    "watch",
    "write",
]


def find(
    type: str | None = None,
    name: str | None = None,
    *,
    provider: str | None = None,
    root: str | os.PathLike[str] | None = None,
) -> Binding:
    """Return the one binding matching ``type``/``name``/``provider`` (see :meth:`Bindings.find`).

    Example::

        mq = bindings.find(type="rabbitmq")
    """
    return load(root).find(type, name, provider=provider)


def all(root: str | os.PathLike[str] | None = None) -> Bindings:
    """Return every binding of the app, sorted by name (an empty snapshot if there are none).

    Example::

        for binding in bindings.all():
            print(binding.name, binding.type)
    """
    return load(root)


def write(binding: Binding, root: str | os.PathLike[str] | None = None) -> Path:
    """Write ``binding`` under the root atomically (files 0600, directories 0700); return its path.

    Example::

        bindings.write(Binding.from_credentials("chat-mq", "rabbitmq", {"uri": uri}), root)
    """
    return _layout.write(_require_root(root), binding)


def remove(name: str, root: str | os.PathLike[str] | None = None) -> bool:
    """Remove the binding ``name`` from the root; return whether it existed.

    Example::

        bindings.remove("chat-mq", root)
    """
    return _layout.remove(_require_root(root), name)


def project(items: Iterable[Binding], root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Make the root hold exactly ``items`` (write changed ones, remove the rest).

    Example::

        bindings.project([mq_binding, db_binding], "/tmp/app-bindings")
    """
    return _layout.project(_require_root(root), items)


def _require_root(root: str | os.PathLike[str] | None) -> Path:
    """Return the root to write to, or explain that there is none."""
    path = resolve_root(root)
    if path is None:
        raise BindingError(f"no binding root: pass root= or set {ROOT_ENV}")
    return path
