"""A small typed client of the RabbitMQ management HTTP API.

The broker's operations (``_broker.py``) speak to RabbitMQ only through this module. Every call
has a timeout; transient failures (connection errors, timeouts, 5xx answers) are retried with
exponential backoff, which is safe because every request the broker makes is idempotent (GET,
PUT of a whole object, DELETE). What RabbitMQ answers beyond that becomes an OSB error with a
readable description, so the SDK turns it into the right HTTP status:

    OSBError (servicebay.osb)
     ├── BadRequest       400 from RabbitMQ: it rejected a value we sent
     ├── NotFound         404 where the object must exist
     ├── Conflict         409 from RabbitMQ
     └── InternalError
          └── ManagementAPIError   unreachable / 5xx after retries / admin credentials refused

Descriptions name the management API's base URL and the object, never a password.
"""

from __future__ import annotations

import asyncio
import base64
import json as jsonlib
import random
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote, urlencode

import httpx

from servicebay.brokers.rabbitmq._transport import Answer, ManagementTransport, Origin
from servicebay.osb import BadRequest, Conflict, InternalError, NotFound, OSBError

__all__ = [
    "Connection",
    "LimitName",
    "ManagementAPI",
    "ManagementAPIError",
    "Permissions",
    "User",
    "VirtualHost",
]

LimitName = Literal["max-connections", "max-queues"]
QueueType = Literal["classic", "quorum", "stream"]

# 5xx answers worth another attempt; a 501 would never change.
_TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})


class ManagementAPIError(InternalError):
    """The management API could not do what was asked: unreachable, failing, or refusing us.

    ``status`` is the HTTP status of RabbitMQ's last answer, or None if none arrived.
    """

    def __init__(self, description: str, *, status: int | None = None) -> None:
        super().__init__(description)
        self.status = status


@dataclass(frozen=True)
class VirtualHost:
    """A RabbitMQ virtual host as the management API reports it."""

    name: str
    description: str = ""
    tags: tuple[str, ...] = ()
    default_queue_type: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VirtualHost:
        """Build from a ``GET /api/vhosts/{name}`` body."""
        metadata = data.get("metadata") or {}
        queue_type = data.get("default_queue_type") or metadata.get("default_queue_type")
        tags = data.get("tags") or metadata.get("tags") or []
        if isinstance(tags, str):  # older servers answer a comma-separated string
            tags = [t for t in tags.split(",") if t]
        return cls(
            name=str(data["name"]),
            description=str(data.get("description") or metadata.get("description") or ""),
            tags=tuple(str(t) for t in tags),
            # "undefined" is how RabbitMQ says "none was set".
            default_queue_type=None if queue_type in (None, "undefined") else str(queue_type),
        )


@dataclass(frozen=True)
class User:
    """A RabbitMQ user (the password hash is never read)."""

    name: str
    tags: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> User:
        """Build from a ``GET /api/users/{name}`` body."""
        tags = data.get("tags") or []
        if isinstance(tags, str):
            tags = [t for t in tags.split(",") if t]
        return cls(name=str(data["name"]), tags=tuple(str(t) for t in tags))


@dataclass(frozen=True)
class Permissions:
    """A user's configure/write/read regular expressions on one vhost."""

    user: str
    vhost: str
    configure: str = ".*"
    write: str = ".*"
    read: str = ".*"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Permissions:
        """Build from a ``GET /api/permissions/{vhost}/{user}`` body."""
        return cls(
            user=str(data["user"]),
            vhost=str(data["vhost"]),
            configure=str(data.get("configure", "")),
            write=str(data.get("write", "")),
            read=str(data.get("read", "")),
        )


@dataclass(frozen=True)
class Connection:
    """An open AMQP connection as the management API lists it."""

    name: str
    user: str
    vhost: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Connection:
        """Build from one element of ``GET /api/connections/username/{user}``."""
        return cls(name=str(data["name"]), user=str(data["user"]), vhost=str(data["vhost"]))


@dataclass
class _Retry:
    """How often and how patiently transient failures are retried."""

    attempts: int = 4
    backoff: float = 0.1
    max_backoff: float = 2.0
    _rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int) -> float:
        """Exponential backoff with jitter, so concurrent retries do not stampede."""
        ceiling = min(self.max_backoff, self.backoff * 2.0**attempt)
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)


def _segment(value: str) -> str:
    """One URL path segment: RabbitMQ names may contain '/', which must become %2F."""
    return quote(value, safe="")


class ManagementAPI:
    """Typed async client of the RabbitMQ management HTTP API.

    Example::

        async with ManagementAPI("http://127.0.0.1:15672", "admin", "secret") as api:
            vhost = await api.get_vhost("orders")

    ``transport`` defaults to the lean ``ManagementTransport`` (tests may hand in any httpx
    transport); ``verify`` is its TLS verification (True, False, or an SSL context trusting
    the server's CA). With the lean transport, requests are encoded here and exchanged as
    bytes, without httpx's client, request and response objects around them: those cost more
    CPU per request than the exchange itself, and none of what they offer is needed here (one
    base URL, basic auth, no redirects, small JSON bodies). An injected transport gets
    ``httpx.Request`` objects.
    """

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        timeout: float = 10.0,
        attempts: int = 4,
        backoff: float = 0.1,
        verify: ssl.SSLContext | bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._retry = _Retry(attempts=max(1, attempts), backoff=backoff)
        self._api_url = self.base_url + "/api"
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._headers = {
            "accept": "*/*",  # PUT /api/vhost-limits/… answers "application/json" with a 406
            "content-type": "application/json",
            "authorization": f"Basic {token}",
        }
        # Read by httpx's own transports; ManagementTransport keeps its own timeout.
        self._extensions = {"timeout": httpx.Timeout(timeout).as_dict()}
        self._transport = transport or ManagementTransport(verify=verify, timeout=timeout)
        self._lean = self._transport if isinstance(self._transport, ManagementTransport) else None
        url = httpx.URL(self._api_url)
        port = url.port or (443 if url.scheme == "https" else 80)
        self._origin: Origin = (url.scheme, url.host, port)
        self._path = url.raw_path.decode("ascii").rstrip("/")
        fixed = {"host": url.netloc.decode("ascii"), **self._headers}
        self._fixed_head = "".join(f"{name}: {value}\r\n" for name, value in fixed.items())

    async def __aenter__(self) -> ManagementAPI:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled HTTP connections."""
        await self._transport.aclose()

    # -- cluster ---------------------------------------------------------------------------

    async def overview(self) -> dict[str, Any]:
        """``GET /api/overview``: versions and cluster name (a cheap liveness probe)."""
        body = await self._json("GET", "/overview", what="the cluster overview")
        return dict(body) if isinstance(body, dict) else {}

    async def whoami(self) -> User:
        """``GET /api/whoami``: the user these credentials authenticate as, with its tags."""
        body = await self._json("GET", "/whoami", what="the admin user")
        return User.from_json(body)

    # -- virtual hosts ---------------------------------------------------------------------

    async def get_vhost(self, name: str) -> VirtualHost | None:
        """The vhost, or None if RabbitMQ has no vhost of that name."""
        body = await self._json_or_none("GET", f"/vhosts/{_segment(name)}", what=f"vhost {name!r}")
        return None if body is None else VirtualHost.from_json(body)

    async def list_vhosts(self) -> list[VirtualHost]:
        """Every vhost of the cluster."""
        body = await self._json("GET", "/vhosts", what="the vhost list")
        return [VirtualHost.from_json(item) for item in body]

    async def put_vhost(
        self,
        name: str,
        *,
        description: str = "",
        tags: tuple[str, ...] = (),
        default_queue_type: QueueType | None = None,
    ) -> bool:
        """Create the vhost, or update its description and tags if it exists; True if created.

        RabbitMQ applies ``default_queue_type`` only when it creates the vhost. 3.10 reads the
        key ``defaultqueuetype``, later releases ``default_queue_type``: both are sent.
        """
        body: dict[str, Any] = {"description": description, "tags": ",".join(tags)}
        if default_queue_type is not None:
            body["default_queue_type"] = default_queue_type
            body["defaultqueuetype"] = default_queue_type
        status = await self._send(
            "PUT", f"/vhosts/{_segment(name)}", json=body, what=f"vhost {name!r}"
        )
        return status == 201  # 204: it existed

    async def delete_vhost(self, name: str) -> bool:
        """Delete the vhost (RabbitMQ closes its connections); False if it was already gone."""
        return await self._delete(f"/vhosts/{_segment(name)}", what=f"vhost {name!r}")

    async def get_vhost_limits(self, name: str) -> dict[str, int]:
        """The vhost's limits, e.g. ``{"max-connections": 10}``; empty if none are set."""
        body = await self._json_or_none(
            "GET", f"/vhost-limits/{_segment(name)}", what=f"limits of vhost {name!r}"
        )
        limits: dict[str, int] = {}
        for item in body or []:
            for key, value in (item.get("value") or {}).items():
                limits[str(key)] = int(value)
        return limits

    async def set_vhost_limits(self, vhost: str, limits: Mapping[LimitName, int]) -> None:
        """Give the vhost exactly these limits, in one request: a limit not named is cleared.

        RabbitMQ keeps a vhost's limits in one runtime parameter (component ``vhost-limits``,
        name ``limits``); this PUT replaces it whole, so the limits change together. The
        per-limit endpoint reads and rewrites that parameter, so two of those at once can lose
        one. A vhost that does not exist is a 404.
        """
        await self._send(
            "PUT",
            f"/parameters/vhost-limits/{_segment(vhost)}/limits",
            json={"value": dict(limits)},
            what=f"limits of vhost {vhost!r}",
        )

    async def set_vhost_limit(self, vhost: str, limit: LimitName, value: int) -> None:
        """Set one vhost limit; RabbitMQ enforces it from then on."""
        await self._send(
            "PUT",
            f"/vhost-limits/{_segment(vhost)}/{limit}",
            json={"value": value},
            what=f"limit {limit} of vhost {vhost!r}",
        )

    async def clear_vhost_limit(self, vhost: str, limit: LimitName) -> None:
        """Remove one vhost limit (no limit afterwards); absent limits are fine."""
        await self._delete(
            f"/vhost-limits/{_segment(vhost)}/{limit}", what=f"limit {limit} of vhost {vhost!r}"
        )

    async def count_queues(self, vhost: str) -> int:
        """How many queues the vhost holds."""
        body = await self._json_or_none(
            "GET",
            f"/queues/{_segment(vhost)}",
            params={"columns": "name"},
            what=f"queues of vhost {vhost!r}",
        )
        return len(body or [])

    # -- users and permissions -------------------------------------------------------------

    async def get_user(self, name: str) -> User | None:
        """The user, or None if RabbitMQ has no user of that name."""
        body = await self._json_or_none("GET", f"/users/{_segment(name)}", what=f"user {name!r}")
        return None if body is None else User.from_json(body)

    async def list_users(self) -> list[User]:
        """Every user of the cluster (names and tags only: password hashes are not fetched)."""
        body = await self._json(
            "GET", "/users", params={"columns": "name,tags"}, what="the user list"
        )
        return [User.from_json(item) for item in body]

    async def put_user(self, name: str, password: str, *, tags: tuple[str, ...] = ()) -> None:
        """Create the user or replace its password and tags."""
        await self._send(
            "PUT",
            f"/users/{_segment(name)}",
            json={"password": password, "tags": ",".join(tags)},
            what=f"user {name!r}",
        )

    async def delete_user(self, name: str) -> bool:
        """Delete the user and its permissions; False if it was already gone."""
        return await self._delete(f"/users/{_segment(name)}", what=f"user {name!r}")

    async def get_permissions(self, vhost: str, user: str) -> Permissions | None:
        """The user's permissions on the vhost, or None if it has none there."""
        body = await self._json_or_none(
            "GET",
            f"/permissions/{_segment(vhost)}/{_segment(user)}",
            what=f"permissions of {user!r} on vhost {vhost!r}",
        )
        return None if body is None else Permissions.from_json(body)

    async def set_permissions(self, permissions: Permissions) -> None:
        """Grant the user exactly these permissions on the vhost."""
        await self._send(
            "PUT",
            f"/permissions/{_segment(permissions.vhost)}/{_segment(permissions.user)}",
            json={
                "configure": permissions.configure,
                "write": permissions.write,
                "read": permissions.read,
            },
            what=f"permissions of {permissions.user!r} on vhost {permissions.vhost!r}",
        )

    async def list_vhost_permissions(self, vhost: str) -> list[Permissions]:
        """Every user's permissions on the vhost (empty if the vhost is gone)."""
        body = await self._json_or_none(
            "GET", f"/vhosts/{_segment(vhost)}/permissions", what=f"permissions on {vhost!r}"
        )
        return [Permissions.from_json(item) for item in body or []]

    # -- connections -----------------------------------------------------------------------

    async def list_user_connections(self, user: str) -> list[Connection]:
        """The user's open AMQP connections, as far as the management statistics know."""
        body = await self._json_or_none(
            "GET", f"/connections/username/{_segment(user)}", what=f"connections of {user!r}"
        )
        return [Connection.from_json(item) for item in body or []]

    async def close_user_connections(self, user: str, *, reason: str) -> None:
        """Close every open connection of the user, on every node of the cluster."""
        await self._delete(
            f"/connections/username/{_segment(user)}",
            headers={"X-Reason": reason},
            what=f"connections of {user!r}",
        )

    # -- plumbing --------------------------------------------------------------------------

    async def _json(self, method: str, path: str, *, what: str, **kwargs: Any) -> Any:
        response = await self._request(method, path, what=what, **kwargs)
        if response.status == 404:
            raise NotFound(f"RabbitMQ has no {what}")
        _raise_for_status(response, what=what, method=method)
        return jsonlib.loads(response.body)

    async def _json_or_none(self, method: str, path: str, *, what: str, **kwargs: Any) -> Any:
        response = await self._request(method, path, what=what, **kwargs)
        if response.status == 404:
            return None
        _raise_for_status(response, what=what, method=method)
        return jsonlib.loads(response.body)

    async def _send(self, method: str, path: str, *, what: str, **kwargs: Any) -> int:
        response = await self._request(method, path, what=what, **kwargs)
        _raise_for_status(response, what=what, method=method)
        return response.status

    async def _delete(self, path: str, *, what: str, **kwargs: Any) -> bool:
        response = await self._request("DELETE", path, what=what, **kwargs)
        if response.status == 404:
            return False
        _raise_for_status(response, what=what, method="DELETE")
        return True

    async def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """Send with retries on transient failures; return RabbitMQ's last answer."""
        target = path + (f"?{urlencode(params)}" if params else "")
        body = b"" if json is None else jsonlib.dumps(json).encode()
        send = self._prepare(method, target, body, headers or {})
        attempts = self._retry.attempts
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await send()
            except httpx.TransportError as exc:
                if last:
                    raise ManagementAPIError(
                        f"RabbitMQ management API at {self.base_url} unreachable while "
                        f"working on {what} ({type(exc).__name__}, {attempts} attempts)"
                    ) from exc
            else:
                if response.status not in _TRANSIENT_STATUSES or last:
                    return response
            await asyncio.sleep(self._retry.delay(attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _prepare(
        self, method: str, target: str, body: bytes, headers: Mapping[str, str]
    ) -> Callable[[], Awaitable[Answer]]:
        """One attempt's sender: the encoded request for the lean transport, or an httpx one."""
        if self._lean is not None:
            lean, origin = self._lean, self._origin
            extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            if body or method in ("PUT", "POST"):
                extra += f"content-length: {len(body)}\r\n"
            line = f"{method} {self._path}{target} HTTP/1.1\r\n"
            head = f"{line}{self._fixed_head}{extra}\r\n".encode("ascii")
            return lambda: lean.exchange(origin, head, body)
        request = httpx.Request(
            method,
            self._api_url + target,
            headers={**self._headers, **headers},
            content=body or None,
            extensions=self._extensions,
        )
        return lambda: self._via_httpx(request)

    async def _via_httpx(self, request: httpx.Request) -> Answer:
        response = await self._transport.handle_async_request(request)
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        return Answer(response.status_code, response.headers.multi_items(), content)


def _reason(response: Answer) -> str:
    """RabbitMQ's own explanation from an error body, trimmed to one readable line."""
    try:
        body = jsonlib.loads(response.body)
    except ValueError:
        text = response.body.decode("utf-8", "replace").strip()
    else:
        if isinstance(body, dict):
            text = str(body.get("reason") or body.get("error") or "")
        else:
            text = str(body)
    text = " ".join(text.split())
    if text:
        return text[:300]
    try:
        return HTTPStatus(response.status).phrase
    except ValueError:
        return "no reason given"


def _raise_for_status(response: Answer, *, what: str, method: str) -> None:
    """Turn a RabbitMQ error answer into the OSB error the SDK will report."""
    status = response.status
    if status < 400:
        return
    reason = _reason(response)
    error: OSBError
    if status == 400:
        error = BadRequest(f"RabbitMQ rejected {method} of {what}: {reason}")
    elif status in (401, 403):
        error = ManagementAPIError(
            f"RabbitMQ management API refused the broker's admin credentials ({status}: "
            f"{reason}); the broker needs a user tagged 'administrator'",
            status=status,
        )
    elif status == 404:
        error = NotFound(f"RabbitMQ has no {what}")
    elif status == 409:
        error = Conflict(f"RabbitMQ refused {method} of {what}: {reason}")
    else:
        error = ManagementAPIError(
            f"RabbitMQ management API failed {method} of {what} ({status}: {reason})",
            status=status,
        )
    raise error
