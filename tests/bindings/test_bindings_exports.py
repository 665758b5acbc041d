"""The public surface of servicebay.bindings is pinned: changing it is a visible decision."""

from __future__ import annotations

import servicebay.bindings as bindings


def test_bindings_all_is_pinned() -> None:
    """`__all__` lists exactly the documented names, each one present and documented."""
    assert sorted(bindings.__all__) == sorted(
        [
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
    )
    for name in bindings.__all__:
        member = getattr(bindings, name)
        if callable(member):
            assert member.__doc__, f"{name} has no docstring"
