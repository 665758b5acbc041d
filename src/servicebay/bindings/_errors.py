"""Errors raised by :mod:`servicebay.bindings`.

Hierarchy::

    BindingError (Exception)            anything wrong with a binding or the binding root
    ├── BindingNotFound (LookupError)   ``find()`` matched nothing
    ├── AmbiguousBinding                ``find()`` matched several bindings
    └── InvalidBinding (ValueError)     a name, entry or layout the spec does not allow

Messages name bindings and entries, never their values: a value may be a credential.
"""

from __future__ import annotations


class BindingError(Exception):
    """Base class of every error raised by :mod:`servicebay.bindings`."""


class BindingNotFound(BindingError, LookupError):
    """No binding matched the query given to ``find()``."""


class AmbiguousBinding(BindingError):
    """Several bindings matched the query given to ``find()``; narrow it with ``name=``."""

    def __init__(self, message: str, names: list[str]) -> None:
        super().__init__(message)
        self.names = names


class InvalidBinding(BindingError, ValueError):
    """A binding name, entry name or binding content that the servicebinding.io layout forbids."""
