"""A typed client of the platform's HTTP API (``/api/v1``), the only way the CLI reaches it.

Every ``bay`` command is a thin layer over one or two calls here. The transport is injectable
(httpx), so tests can point the same client at any app. Errors come back as
:class:`PlatformError` carrying the API's stable ``error`` code and message; ``output`` turns
them into exit codes. Shapes follow /api/v1 as documented by the platform (PLATFORM_API).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal, NotRequired, TypedDict, cast
from urllib.parse import urlsplit, urlunsplit

import httpx

JSON = dict[str, Any]
Kind = Literal["app", "key"]


class Operation(TypedDict):
    """Long work on the platform: provision, update, deprovision, bind, unbind, purge."""

    id: str
    kind: str
    state: str  # queued | in progress | succeeded | failed
    description: str | None
    namespace: str
    instance: str | None
    binding: str | None
    created_at: str
    finished_at: str | None
    orphan_mitigation: NotRequired[str | None]


class Broker(TypedDict):
    """A registered broker; its credentials are never returned."""

    name: str
    url: str
    auth: str
    services: list[str]
    catalog_fetched_at: str | None
    created_at: str


class Namespace(TypedDict):
    """A namespace: which plans its users see, extra parameter rules, an instance quota.

    ``visible_plans`` None means every plan; ``constraints`` maps ``service`` or
    ``service/plan`` to a JSON schema that parameters must also meet. ``members`` are the
    users who may use it besides the admin (empty: every user).
    """

    name: str
    description: str
    visible_plans: list[str] | None
    constraints: dict[str, JSON]
    max_instances: int | None
    members: list[str]
    instance_count: int
    created_at: str
    updated_at: str


class Plan(TypedDict):
    """A plan in the marketplace, with its parameter schemas."""

    name: str
    id: str
    description: str
    free: bool
    bindable: bool
    plan_updateable: bool
    schemas: dict[str, JSON | None]
    constraints: NotRequired[JSON | None]
    maintenance_info: NotRequired[JSON | None]


class Service(TypedDict):
    """A service offering in the marketplace."""

    name: str
    broker: str
    description: str
    tags: list[str]
    bindable: bool
    plan_updateable: bool
    plans: list[Plan]


class Instance(TypedDict):
    """A service instance; sensitive parameters arrive redacted."""

    id: str
    name: str
    namespace: str
    service: str
    plan: str
    broker: str
    state: str
    parameters: JSON
    dashboard_url: str | None
    created_by: str
    created_at: str
    last_operation: Operation | None


class Binding(TypedDict):
    """A binding (``kind`` app) or service key (``kind`` key)."""

    id: str
    name: str
    namespace: str
    instance: str
    service: str
    plan: str
    kind: str
    app: str | None
    state: str
    created_by: str
    created_at: str
    last_operation: Operation | None
    credentials: NotRequired[JSON]
    credentials_hidden: NotRequired[bool]


class AppBinding(TypedDict):
    """One binding of an app as ``bay run`` projects it (servicebinding.io type/provider)."""

    name: str
    instance: str
    type: str
    provider: str
    service: str
    plan: str
    credentials: NotRequired[JSON]
    credentials_hidden: bool


class PlatformError(Exception):
    """The platform refused a request: HTTP status, stable error code, readable message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        problems: list[JSON] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.problems = problems or []


def _without_userinfo(url: str) -> str:
    """``url`` for a message: a ``user:password@`` part (never needed: the token authenticates)
    is replaced by ``***@`` so an error line cannot show a password."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


class PlatformUnreachable(PlatformError):
    """No answer from the platform: connection refused, DNS failure or timeout."""

    def __init__(self, url: str, reason: str, *, timed_out: bool = False) -> None:
        code = "timeout" if timed_out else "unreachable"
        shown = _without_userinfo(url)
        super().__init__(0, code, f"cannot reach the platform at {shown}: {reason}")
        self.timed_out = timed_out


class InvalidName(ValueError):
    """A name the platform would refuse (its ``NAME_PATTERN``), caught before any request.

    An empty or odd name would otherwise reach another route (``/instances/`` is the list,
    answered with a redirect) and come back as a puzzling error.
    """


_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # as servicebay.platform.api.models


def _named(name: str, what: str) -> str:
    """``name`` as a path segment, or :class:`InvalidName` saying what is wrong with it."""
    if not _NAME.match(name):
        raise InvalidName(
            f"{what} name {name!r} is not valid: use a-z, 0-9 and '-' (1-63 characters, "
            "starting and ending with a letter or digit)"
        )
    return name


class PlatformAPI:
    """Async client of one platform, authenticated with a bearer token.

    Example::

        async with PlatformAPI("http://127.0.0.1:8470", token) as api:
            services = await api.marketplace()
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=f"{self.url}/api/v1",
            headers=headers,
            transport=transport,
            timeout=timeout,
        )

    async def __aenter__(self) -> PlatformAPI:
        """Open the connection pool."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str | int] | None = None,
        read_timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one request; return the decoded JSON body (None for 204) or raise."""
        extra: dict[str, Any] = {}
        if read_timeout is not None:
            extra["timeout"] = read_timeout
        if headers:
            extra["headers"] = dict(headers)
        try:
            response = await self._http.request(
                method, path, json=body, params=dict(params or {}), **extra
            )
        except httpx.TimeoutException as error:
            raise PlatformUnreachable(self.url, "timed out", timed_out=True) from error
        except httpx.TransportError as error:
            raise PlatformUnreachable(self.url, type(error).__name__) from error
        if response.status_code == 204:
            return None
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.is_success:
            return data
        raise _error(response.status_code, data)

    # -- identity -----------------------------------------------------------------------------

    async def whoami(self) -> JSON:
        """Return ``{"user", "admin"}`` for the token in use."""
        return cast(JSON, await self._call("GET", "/whoami"))

    # -- brokers --------------------------------------------------------------------------------

    async def register_broker(
        self,
        name: str,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        bearer_token: str | None = None,
    ) -> Broker:
        """Register a broker; the platform fetches and validates its catalog."""
        body: JSON = {"name": name, "url": url}
        for key, value in (
            ("username", username),
            ("password", password),
            ("bearer_token", bearer_token),
        ):
            if value is not None:
                body[key] = value
        return cast(Broker, await self._call("POST", "/brokers", body=body, read_timeout=60.0))

    async def brokers(self) -> list[Broker]:
        """List registered brokers."""
        return cast(list[Broker], (await self._call("GET", "/brokers"))["items"])

    async def refresh_broker(self, name: str) -> JSON:
        """Fetch a broker's catalog again; returns ``{"broker", "changes"}``."""
        return cast(
            JSON,
            await self._call(
                "POST", f"/brokers/{_named(name, 'broker')}/refresh", read_timeout=60.0
            ),
        )

    async def remove_broker(self, name: str) -> None:
        """Unregister a broker that has no instances."""
        await self._call("DELETE", f"/brokers/{_named(name, 'broker')}")

    # -- namespaces -----------------------------------------------------------------------------

    async def create_namespace(self, name: str, settings: Mapping[str, Any]) -> Namespace:
        """Create a namespace with ``settings`` (the API's NamespaceSettings fields)."""
        body = {"name": name, **settings}
        return cast(Namespace, await self._call("POST", "/namespaces", body=body))

    async def namespaces(self) -> list[Namespace]:
        """List every namespace."""
        return cast(list[Namespace], (await self._call("GET", "/namespaces"))["items"])

    async def namespace(self, name: str) -> Namespace:
        """Return one namespace."""
        return cast(Namespace, await self._call("GET", f"/namespaces/{_named(name, 'namespace')}"))

    async def replace_namespace(
        self, name: str, settings: Mapping[str, Any], *, read_at: str | None = None
    ) -> Namespace:
        """Replace every setting of a namespace (omitted fields take the API's defaults).

        ``read_at``: the ``updated_at`` of the namespace as read; the platform refuses (412) if
        it changed since, so a read-modify-write never overwrites someone else's change.
        """
        path = f"/namespaces/{_named(name, 'namespace')}"
        headers = {"If-Match": f'"{read_at}"'} if read_at else None
        return cast(Namespace, await self._call("PUT", path, body=settings, headers=headers))

    async def delete_namespace(self, name: str) -> None:
        """Delete an empty namespace (``default`` cannot be deleted)."""
        await self._call("DELETE", f"/namespaces/{_named(name, 'namespace')}")

    # -- marketplace ----------------------------------------------------------------------------

    async def marketplace(self, namespace: str) -> list[Service]:
        """List services with the plans visible in ``namespace``."""
        data = await self._call("GET", "/marketplace", params={"namespace": namespace})
        return cast(list[Service], data["items"])

    async def service(self, name: str, namespace: str) -> Service:
        """Return one service with its plans and schemas."""
        if not name.strip():
            raise InvalidName("service name '' is not valid: give a service (see bay marketplace)")
        data = await self._call("GET", f"/marketplace/{name}", params={"namespace": namespace})
        return cast(Service, data)

    # -- instances ------------------------------------------------------------------------------

    async def provision(
        self,
        service: str,
        plan: str,
        name: str,
        namespace: str,
        parameters: JSON,
        *,
        dry_run: bool = False,
    ) -> JSON:
        """Create an instance: ``{"instance", "operation"}``, or a dry run's report."""
        body = {
            "service": service,
            "plan": plan,
            "name": name,
            "namespace": namespace,
            "parameters": parameters,
            "dry_run": dry_run,
        }
        return cast(JSON, await self._call("POST", "/instances", body=body))

    async def update(
        self,
        name: str,
        namespace: str,
        *,
        plan: str | None,
        parameters: JSON | None,
        dry_run: bool = False,
    ) -> JSON:
        """Change an instance's plan and/or parameters: ``{"instance", "operation"}`` or dry run."""
        body: JSON = {"dry_run": dry_run}
        if plan is not None:
            body["plan"] = plan
        if parameters is not None:
            body["parameters"] = parameters
        ns = {"namespace": namespace}
        return cast(
            JSON,
            await self._call(
                "PATCH", f"/instances/{_named(name, 'instance')}", body=body, params=ns
            ),
        )

    async def deprovision(self, name: str, namespace: str) -> JSON:
        """Delete an instance: ``{"instance", "operation"}``."""
        ns = {"namespace": namespace}
        return cast(
            JSON, await self._call("DELETE", f"/instances/{_named(name, 'instance')}", params=ns)
        )

    async def purge(self, name: str, namespace: str) -> JSON:
        """Forget an instance and its bindings without asking the broker."""
        ns = {"namespace": namespace}
        return cast(
            JSON,
            await self._call(
                "POST", f"/instances/{_named(name, 'instance')}/purge", body={}, params=ns
            ),
        )

    async def instances(self, namespace: str, *, service: str | None = None) -> list[Instance]:
        """List every instance of ``namespace`` (``*`` = all), following pagination."""
        items: list[Instance] = []
        after: str | None = None
        while True:
            params: dict[str, str | int] = {"namespace": namespace, "limit": 500}
            if service:
                params["service"] = service
            if after:
                params["after"] = after
            page = await self._call("GET", "/instances", params=params)
            items.extend(page["items"])
            after = page.get("next")
            if not after:
                return items

    async def instance(self, name: str, namespace: str) -> Instance:
        """Return one instance."""
        ns = {"namespace": namespace}
        return cast(
            Instance, await self._call("GET", f"/instances/{_named(name, 'instance')}", params=ns)
        )

    # -- bindings and keys ----------------------------------------------------------------------

    async def bind(
        self,
        instance: str,
        namespace: str,
        *,
        kind: Kind,
        app: str | None = None,
        name: str | None = None,
        parameters: JSON | None = None,
    ) -> JSON:
        """Create a binding (kind ``app``) or service key (kind ``key``)."""
        body: JSON = {"instance": instance, "namespace": namespace, "kind": kind}
        for key, value in (("app", app), ("name", name), ("parameters", parameters)):
            if value is not None:
                body[key] = value
        return cast(JSON, await self._call("POST", "/bindings", body=body))

    async def bindings(
        self,
        namespace: str,
        *,
        instance: str | None = None,
        app: str | None = None,
        kind: Kind | None = None,
    ) -> list[Binding]:
        """List bindings (never with credentials)."""
        params = {"namespace": namespace}
        # An empty filter would silently match everything (`bay unbind '' --app A`).
        for key, value in (("instance", instance), ("app", app)):
            if value is not None:
                params[key] = _named(value, key)
        if kind:
            params["kind"] = kind
        return cast(list[Binding], (await self._call("GET", "/bindings", params=params))["items"])

    async def binding(self, name: str, namespace: str) -> Binding:
        """Return one binding, with credentials if the caller created it or is an admin."""
        ns = {"namespace": namespace}
        return cast(
            Binding, await self._call("GET", f"/bindings/{_named(name, 'binding')}", params=ns)
        )

    async def unbind(self, name: str, namespace: str) -> JSON:
        """Delete a binding or key: ``{"binding", "operation"}``."""
        ns = {"namespace": namespace}
        return cast(
            JSON, await self._call("DELETE", f"/bindings/{_named(name, 'binding')}", params=ns)
        )

    async def app_bindings(self, app: str, namespace: str) -> list[AppBinding]:
        """Return the ready bindings of ``app`` with credentials (what ``bay run`` projects)."""
        ns = {"namespace": namespace}
        data = await self._call("GET", f"/apps/{_named(app, 'app')}/bindings", params=ns)
        return cast(list[AppBinding], data["items"])

    # -- operations -----------------------------------------------------------------------------

    async def operation(self, operation_id: str, *, wait: float = 0) -> Operation:
        """Return an operation; with ``wait`` the platform answers once terminal or after wait s."""
        params: dict[str, str | int] = {}
        if wait:
            params["wait"] = int(wait)
        return cast(
            Operation,
            await self._call(
                "GET", f"/operations/{operation_id}", params=params, read_timeout=wait + 30.0
            ),
        )


def _error(status: int, data: Any) -> PlatformError:
    """Build the error for a non-2xx answer, tolerating a body that is not the API's shape."""
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        message = str(data.get("message") or data["error"])
        problems = data.get("problems")
        return PlatformError(
            status, data["error"], message, problems if isinstance(problems, list) else None
        )
    return PlatformError(status, f"http_{status}", f"the platform answered HTTP {status}")
