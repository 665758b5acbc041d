"""The :class:`Binding` value: one projected service binding, as an app sees it.

A binding is a name, a ``type`` (the abstract classification, e.g. ``rabbitmq``), an optional
``provider`` and any number of entries (spec: servicebinding.io "Workload Projection"). Entries are
bytes on disk; the mapping interface hands them out as text, ``raw()`` as bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from servicebay.bindings._errors import InvalidBinding

# spec: Workload Projection — "Binding names MUST match [a-z0-9\-\.]{1,253}". We also refuse a
# leading dot: the writer keeps its private data directories under dot-names in the root.
_BINDING_NAME = re.compile(r"[a-z0-9\-.]{1,253}")
# spec: entry names SHOULD match [a-z0-9\-\.]{1,253}; broker credentials often use "_" and capitals,
# so we accept those too, but never a path separator or a hidden name.
_ENTRY_NAME = re.compile(r"[A-Za-z0-9_\-.]{1,253}")

#: Entries with a meaning of their own (spec: Workload Projection).
TYPE_ENTRY = "type"
PROVIDER_ENTRY = "provider"


def check_binding_name(name: str) -> str:
    """Return ``name`` if it is a valid binding name, else raise :class:`InvalidBinding`."""
    if not _BINDING_NAME.fullmatch(name) or name.startswith("."):
        raise InvalidBinding(
            f"invalid binding name {name!r}: must match [a-z0-9-.]{{1,253}} and not start with '.'"
        )
    return name


def check_entry_name(name: str) -> str:
    """Return ``name`` if it is a valid entry file name, else raise :class:`InvalidBinding`."""
    if not _ENTRY_NAME.fullmatch(name) or name.startswith("."):
        raise InvalidBinding(
            f"invalid entry name {name!r}: must match [A-Za-z0-9_-.]{{1,253}} "
            "and not start with '.'"
        )
    return name


def _to_bytes(value: Any) -> bytes:
    """Turn one credential value into the bytes of an entry file.

    Text and bytes are written as they are; anything else (numbers, booleans, nested objects)
    as JSON, which is how an app would have to parse it anyway.
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


class Binding(Mapping[str, str]):
    """One service binding: a read-only mapping of entry name to text value.

    ``binding["uri"]`` gives an entry as text; ``binding.raw("keystore")`` as bytes. The ``type``
    and ``provider`` entries are also attributes. ``repr()`` shows entry names only, never values.

    Example::

        mq = bindings.find(type="rabbitmq")
        connect(mq["uri"])
    """

    __slots__ = ("_entries", "name", "path", "provider", "type")

    def __init__(
        self,
        name: str,
        entries: Mapping[str, bytes | str],
        *,
        path: Path | None = None,
    ) -> None:
        self.name = check_binding_name(name)
        self._entries: dict[str, bytes] = {
            check_entry_name(key): _to_bytes(value) for key, value in entries.items()
        }
        if TYPE_ENTRY not in self._entries:
            raise InvalidBinding(f"binding {name!r} has no 'type' entry")
        # spec: "type" identifies the abstract classification; a hand-written file may end
        # with a newline that is not part of the value.
        self.type: str = self._entries[TYPE_ENTRY].decode().strip()
        if not self.type:
            raise InvalidBinding(f"binding {name!r} has an empty 'type' entry")
        provider = self._entries.get(PROVIDER_ENTRY)
        self.provider: str | None = provider.decode().strip() if provider is not None else None
        #: Where the binding was read from, or ``None`` (environment, not yet written).
        self.path = path

    @classmethod
    def from_credentials(
        cls,
        name: str,
        type: str,
        credentials: Mapping[str, Any],
        *,
        provider: str | None = None,
    ) -> Binding:
        """Build a binding from a broker's ``credentials`` object (one entry per key).

        Non-text values become JSON. ``type`` and ``provider`` win over same-named credentials.
        """
        entries: dict[str, bytes | str] = {
            key: _to_bytes(value) for key, value in credentials.items()
        }
        entries[TYPE_ENTRY] = type
        if provider is not None:
            entries[PROVIDER_ENTRY] = provider
        return cls(name, entries)

    def raw(self, key: str) -> bytes:
        """Return an entry's exact bytes (for binary entries such as key stores)."""
        return self._entries[key]

    def raw_entries(self) -> dict[str, bytes]:
        """Return a copy of every entry as bytes, ``type`` and ``provider`` included."""
        return dict(self._entries)

    def __getitem__(self, key: str) -> str:
        """Return an entry as UTF-8 text."""
        value = self._entries[key]
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise InvalidBinding(
                f"entry {key!r} of binding {self.name!r} is not UTF-8 text; use .raw({key!r})"
            ) from None

    def __iter__(self) -> Iterator[str]:
        """Iterate over entry names, sorted."""
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        """Return the number of entries, ``type`` and ``provider`` included."""
        return len(self._entries)

    def __eq__(self, other: object) -> bool:
        """Bindings are equal when name and every entry's bytes are equal (path is ignored)."""
        if not isinstance(other, Binding):
            return NotImplemented
        return self.name == other.name and self._entries == other._entries

    def __hash__(self) -> int:
        """Hash by name and entries, consistent with ``__eq__``."""
        return hash((self.name, tuple(sorted(self._entries.items()))))

    def __repr__(self) -> str:
        """Show name, type, provider and entry names — never a value."""
        keys = ", ".join(sorted(self._entries))
        return (
            f"Binding(name={self.name!r}, type={self.type!r}, provider={self.provider!r}, "
            f"entries=[{keys}])"
        )
