"""Where an app looks bindings up: a snapshot of every binding, and the queries on it.

:func:`load` decides the source once: the binding root if it exists, else the
``VCAP_SERVICES``-style environment variable, else nothing. :class:`Bindings` answers
``find(type=..., name=...)`` with exactly one binding or a clear error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import overload

from servicebay.bindings import _environment, _layout
from servicebay.bindings._binding import Binding
from servicebay.bindings._errors import AmbiguousBinding, BindingNotFound


class Bindings(Sequence[Binding]):
    """An immutable snapshot of an app's bindings, sorted by name, with lookups.

    ``source`` says where they came from, e.g. ``SERVICE_BINDING_ROOT=/bindings`` or
    ``VCAP_SERVICES``; it appears in error messages so a missing binding is easy to chase.
    """

    __slots__ = ("_items", "source")

    def __init__(self, items: Sequence[Binding] = (), *, source: str = "no binding source") -> None:
        self._items = tuple(sorted(items, key=lambda binding: binding.name))
        self.source = source

    def filter(
        self,
        type: str | None = None,
        name: str | None = None,
        *,
        provider: str | None = None,
    ) -> list[Binding]:
        """Return every binding matching all the given criteria (none given: all)."""
        return [
            binding
            for binding in self._items
            if (type is None or binding.type == type)
            and (name is None or binding.name == name)
            and (provider is None or binding.provider == provider)
        ]

    def find(
        self,
        type: str | None = None,
        name: str | None = None,
        *,
        provider: str | None = None,
    ) -> Binding:
        """Return the one binding matching the criteria.

        Raises :class:`BindingNotFound` when none matches and :class:`AmbiguousBinding` when
        several do; both messages name the candidates (names and types, never values).
        """
        matches = self.filter(type, name, provider=provider)
        query = _describe_query(type, name, provider)
        if not matches:
            present = ", ".join(f"{b.name} (type {b.type})" for b in self._items) or "none"
            raise BindingNotFound(
                f"no binding matches {query} in {self.source}; bindings present: {present}"
            )
        if len(matches) > 1:
            names = [binding.name for binding in matches]
            raise AmbiguousBinding(
                f"{len(matches)} bindings match {query} in {self.source}: "
                f"{', '.join(names)}; pass name= to choose one",
                names,
            )
        return matches[0]

    def get(self, name: str) -> Binding | None:
        """Return the binding called ``name``, or ``None``."""
        return next((binding for binding in self._items if binding.name == name), None)

    @property
    def names(self) -> list[str]:
        """The bindings' names, sorted."""
        return [binding.name for binding in self._items]

    @overload
    def __getitem__(self, index: int) -> Binding: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Binding]: ...
    def __getitem__(self, index: int | slice) -> Binding | Sequence[Binding]:
        """Return a binding (or a slice of them) by position."""
        return self._items[index]

    def __iter__(self) -> Iterator[Binding]:
        """Iterate over the bindings, sorted by name."""
        return iter(self._items)

    def __len__(self) -> int:
        """Return how many bindings there are."""
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        """Snapshots are equal when they hold equal bindings (the source is not compared)."""
        if not isinstance(other, Bindings):
            return NotImplemented
        return self._items == other._items

    def __hash__(self) -> int:
        """Hash by content, consistent with ``__eq__``."""
        return hash(self._items)

    def __repr__(self) -> str:
        """Show the source and binding names, never a value."""
        return f"Bindings(source={self.source!r}, names={self.names!r})"


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path | None:
    """Return the binding root: ``root`` if given, else ``$SERVICE_BINDING_ROOT``, else None."""
    if root is not None:
        return Path(root)
    value = os.environ.get(_layout.ROOT_ENV)
    return Path(value) if value else None


def load(
    root: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Bindings:
    """Read every binding from the root, or from ``VCAP_SERVICES`` when no root exists.

    ``environ`` defaults to ``os.environ``; pass a mapping to read another environment.
    """
    env = os.environ if environ is None else environ
    path = Path(root) if root is not None else _root_from(env)
    if path is not None and path.is_dir():
        return Bindings(_layout.read_root(path), source=f"{_layout.ROOT_ENV}={path}")
    document = env.get(_environment.ENV_VAR)
    if document:
        return Bindings(_environment.parse_services(document), source=_environment.ENV_VAR)
    where = f"{_layout.ROOT_ENV}={path} (missing)" if path else f"{_layout.ROOT_ENV} unset"
    return Bindings((), source=f"{where} and {_environment.ENV_VAR} unset")


def _root_from(env: Mapping[str, str]) -> Path | None:
    """Return the root named by an environment mapping, if any."""
    value = env.get(_layout.ROOT_ENV)
    return Path(value) if value else None


def _describe_query(type: str | None, name: str | None, provider: str | None) -> str:
    """Spell a query for an error message, e.g. ``type='rabbitmq'``."""
    parts = [
        f"{key}={value!r}"
        for key, value in (("type", type), ("name", name), ("provider", provider))
        if value is not None
    ]
    return ", ".join(parts) or "any binding"
