"""The OSB route table's machinery: path templates, matching, and what an endpoint receives.

`BrokerGate` (in `_middleware`) matches each request against the `RouteTable` that `_app`
declares and calls the endpoint for its method with an `OSBRequest`; the endpoint answers a
`Reply`. A path template names its ids in braces, ``{instance_id:osb_id}``: the ``osb_id``
part matches any segment, even an empty one, so that an empty id is answered 400 by the
endpoint rather than 404. The template, not a concrete id, labels the request's metrics.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope

if TYPE_CHECKING:  # the lifecycle's modules import the validators, which import this one
    from servicebay.broker._lifecycle import Lifecycle, Reply

__all__ = ["Endpoint", "OSBRequest", "Route", "RouteTable", "route_path"]

_ID = re.compile(r"\{(\w+)(?::osb_id)?\}")


class OSBRequest:
    """One request as an endpoint sees it: ids from the path, the query, the body's stream."""

    __slots__ = ("_query", "lifecycle", "path_params", "receive", "scope")

    def __init__(
        self, scope: Scope, receive: Receive, path_params: dict[str, str], lifecycle: Lifecycle
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.path_params = path_params
        self.lifecycle = lifecycle
        self._query: dict[str, str] | None = None

    @property
    def query_params(self) -> Mapping[str, str]:
        """The query string's parameters (the last value of a repeated name, blanks kept)."""
        if self._query is None:
            raw = bytes(self.scope.get("query_string", b"")).decode("latin-1")
            self._query = dict(parse_qsl(raw, keep_blank_values=True)) if raw else {}
        return self._query


Endpoint = Callable[[OSBRequest], Awaitable["Reply"]]


class Route:
    """One path template and its endpoint per HTTP method (HEAD answers as GET)."""

    __slots__ = ("handlers", "path", "pattern")

    def __init__(self, path: str, **handlers: Endpoint) -> None:
        if "GET" in handlers:
            handlers["HEAD"] = handlers["GET"]
        self.path = path
        self.handlers = handlers
        parts = _ID.split(path)  # literal, name, literal, name, ..., literal
        regex = "".join(
            re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]*)" for i, part in enumerate(parts)
        )
        self.pattern = re.compile(f"^{regex}$")


class RouteTable:
    """Routes tried in order; the first whose template matches the path is the request's."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes

    def match(self, path: str) -> tuple[Route, dict[str, str]] | None:
        """The route for ``path`` and the ids it names, or None."""
        for route in self.routes:
            found = route.pattern.match(path)
            if found is not None:
                return route, found.groupdict()
        return None


def route_path(scope: Scope) -> str:
    """The request's path below the app's mount point (``root_path``), as a router sees it."""
    path: str = scope["path"]
    root: Any = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :]
    return path
