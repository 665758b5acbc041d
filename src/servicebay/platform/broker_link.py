"""The platform's outbound OSB calls, each answer classified per the spec's Orphan Mitigation table.

The worker calls brokers only through :class:`BrokerLink`; every call returns a :class:`Reply`
whose ``verdict`` says what the platform should do next and whose ``orphan_mitigation`` flag is
the table's answer ("Orphan Mitigation SHOULD be performed"), taken from
``servicebay.client.orphan_mitigation`` so the table lives in one place. Each call here is one
request (the worker stores where it stands between calls, to resume after a crash), which is
why the polling loop of ``servicebay.client.BrokerClient`` is not used. Nothing here touches
the database.

Verdicts:

- ``DONE``: 200/201 with a well-formed body (sync success);
- ``ACCEPTED``: 202 with a well-formed body (async; poll ``last_operation``);
- ``GONE``: 410 (for deletes and polls of deletes: already gone, which is success);
- ``REJECTED``: other 4xx (the broker refused; nothing was created);
- ``RETRY``: the request never reached the broker (connect error, 408) or the broker asks to try
  later (422 ``ConcurrencyError``): safe to send again;
- ``FAILED``: 5xx, timeout, malformed 2xx, any other 2xx.

The credentials of a broker are only ever placed in request headers; a ``Reply`` description
never quotes request headers or bodies.
"""

from __future__ import annotations

import base64
import enum
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError

from servicebay.client import OrphanMitigation, RequestKind, orphan_mitigation
from servicebay.osb import (
    API_VERSION,
    API_VERSION_HEADER,
    ORIGINATING_IDENTITY_HEADER,
    REQUEST_IDENTITY_HEADER,
    BindResponse,
    Catalog,
    DeprovisionResponse,
    LastOperationResponse,
    OriginatingIdentity,
    ProvisionResponse,
    UnbindResponse,
    UpdateResponse,
)
from servicebay.platform.broker_transport import BrokerTransport

_KINDS = {
    "catalog": RequestKind.CATALOG,
    "provision": RequestKind.PROVISION,
    "update": RequestKind.UPDATE,
    "deprovision": RequestKind.DEPROVISION,
    "bind": RequestKind.BIND,
    "unbind": RequestKind.UNBIND,
    "fetch_binding": RequestKind.FETCH_BINDING,
    "poll": RequestKind.LAST_OPERATION,
}


def needs_mitigation(request: str, status: int | None, body_ok: bool = True) -> bool:
    """The spec's Orphan Mitigation table, as ``servicebay.client`` encodes it."""
    return orphan_mitigation(_KINDS[request], status, body_ok) is not OrphanMitigation.NONE


_BODY_MODELS: dict[str, type[BaseModel]] = {
    "provision": ProvisionResponse,
    "update": UpdateResponse,
    "deprovision": DeprovisionResponse,
    "bind": BindResponse,
    "unbind": UnbindResponse,
}


class Verdict(enum.StrEnum):
    """What a broker's answer means for the platform (see the module docstring)."""

    DONE = "done"
    ACCEPTED = "accepted"
    GONE = "gone"
    REJECTED = "rejected"
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True)
class Reply:
    """One classified broker answer."""

    verdict: Verdict
    description: str
    status: int | None = None
    body: dict[str, Any] = field(default_factory=dict)
    orphan_mitigation: bool = False
    retry_after: float | None = None

    @property
    def operation(self) -> str | None:
        """The broker's operation string of a 202, if any."""
        value = self.body.get("operation")
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class BrokerEndpoint:
    """Where a broker is and how to authenticate to it (credentials stay in memory only)."""

    url: str
    username: str | None = None
    password: str | None = None
    bearer_token: str | None = None
    # Sensitive parameter values an operation sends this broker (``instances.secret_values``).
    sent_secrets: tuple[str, ...] = ()

    def auth_headers(self) -> dict[str, str]:
        """The Authorization header for this broker, if it has credentials."""
        if self.bearer_token:
            return {"Authorization": f"Bearer {self.bearer_token}"}
        if self.username is not None and self.password is not None:
            pair = f"{self.username}:{self.password}".encode()  # as httpx.BasicAuth encodes it
            return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
        return {}

    def secrets(self) -> list[str]:
        """What a broker must never get to quote back into the platform: the password, the
        token, the header values carrying them, and the sensitive values it was sent."""
        found = [self.password, self.bearer_token, *self.sent_secrets]
        if self.username is not None and self.password is not None:
            pair = f"{self.username}:{self.password}".encode()
            found.append(base64.b64encode(pair).decode("ascii"))  # the Basic header's value
        return sorted({s for s in found if s}, key=len, reverse=True)


class BrokerLink:
    """Sends OSB v2.17 requests to brokers over one shared connection pool.

    Requests go straight to the transport (by default :class:`BrokerTransport`; tests pass an
    in-process one): no redirects, cookies or client-side auth flow are needed here.
    """

    def __init__(self, *, timeout: float, transport: httpx.AsyncBaseTransport | None = None):
        self._transport = transport or BrokerTransport()
        self._timeout = httpx.Timeout(timeout).as_dict()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._transport.aclose()

    async def _request(
        self,
        method: str,
        url: str,
        body: dict[str, Any] | None,
        params: dict[str, str],
        headers: dict[str, str],
    ) -> httpx.Response:
        request = httpx.Request(
            method,
            url,
            params=params,
            headers=headers,
            json=body,
            extensions={"timeout": self._timeout},
        )
        response = await self._transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    async def catalog(self, broker: BrokerEndpoint) -> tuple[Catalog | None, Reply]:
        """Fetch and validate the catalog; the catalog is None unless the reply is ``DONE``."""
        reply = await self._send(broker, "catalog", "GET", "/v2/catalog", None, None)
        if reply.verdict is not Verdict.DONE:
            return None, reply
        try:
            return Catalog.model_validate(reply.body), reply
        except ValidationError as exc:
            problem = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
            )
            return None, Reply(Verdict.FAILED, f"invalid catalog: {problem}", reply.status)

    async def provision(
        self, broker: BrokerEndpoint, instance_id: str, body: dict[str, Any], user: str
    ) -> Reply:
        """``PUT /v2/service_instances/:id?accepts_incomplete=true``."""
        path = f"/v2/service_instances/{instance_id}"
        return await self._send(broker, "provision", "PUT", path, body, user)

    async def update(
        self, broker: BrokerEndpoint, instance_id: str, body: dict[str, Any], user: str
    ) -> Reply:
        """``PATCH /v2/service_instances/:id?accepts_incomplete=true``."""
        path = f"/v2/service_instances/{instance_id}"
        return await self._send(broker, "update", "PATCH", path, body, user)

    async def deprovision(
        self, broker: BrokerEndpoint, instance_id: str, service_id: str, plan_id: str, user: str
    ) -> Reply:
        """``DELETE /v2/service_instances/:id?service_id&plan_id&accepts_incomplete=true``."""
        path = f"/v2/service_instances/{instance_id}"
        query = {"service_id": service_id, "plan_id": plan_id}
        return await self._send(broker, "deprovision", "DELETE", path, None, user, query)

    async def bind(
        self,
        broker: BrokerEndpoint,
        instance_id: str,
        binding_id: str,
        body: dict[str, Any],
        user: str,
    ) -> Reply:
        """``PUT /v2/service_instances/:id/service_bindings/:binding_id``."""
        path = f"/v2/service_instances/{instance_id}/service_bindings/{binding_id}"
        return await self._send(broker, "bind", "PUT", path, body, user)

    async def unbind(
        self,
        broker: BrokerEndpoint,
        instance_id: str,
        binding_id: str,
        service_id: str,
        plan_id: str,
        user: str,
    ) -> Reply:
        """``DELETE /v2/service_instances/:id/service_bindings/:binding_id``."""
        path = f"/v2/service_instances/{instance_id}/service_bindings/{binding_id}"
        query = {"service_id": service_id, "plan_id": plan_id}
        return await self._send(broker, "unbind", "DELETE", path, None, user, query)

    async def fetch_binding(
        self, broker: BrokerEndpoint, instance_id: str, binding_id: str, user: str
    ) -> Reply:
        """``GET .../service_bindings/:binding_id`` (credentials after an async bind)."""
        path = f"/v2/service_instances/{instance_id}/service_bindings/{binding_id}"
        return await self._send(broker, "fetch_binding", "GET", path, None, user)

    async def last_operation(
        self,
        broker: BrokerEndpoint,
        instance_id: str,
        binding_id: str | None,
        query: dict[str, str],
        user: str,
    ) -> Reply:
        """Poll ``last_operation`` of an instance or binding; ``body`` is the parsed state."""
        path = f"/v2/service_instances/{instance_id}"
        if binding_id:
            path += f"/service_bindings/{binding_id}"
        return await self._send(broker, "poll", "GET", path + "/last_operation", None, user, query)

    async def _send(
        self,
        broker: BrokerEndpoint,
        request: str,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        user: str | None,
        query: dict[str, str] | None = None,
    ) -> Reply:
        headers = {
            "User-Agent": "servicebay-platform",
            API_VERSION_HEADER: API_VERSION,
            REQUEST_IDENTITY_HEADER: str(uuid.uuid4()),
            **broker.auth_headers(),
        }
        if user is not None:
            identity = OriginatingIdentity(platform="servicebay", value={"user": user})
            headers[ORIGINATING_IDENTITY_HEADER] = identity.to_header()
        params = dict(query or {})
        if request in _BODY_MODELS:
            params["accepts_incomplete"] = "true"
        url = broker.url.rstrip("/") + path
        try:
            try:
                response = await self._request(method, url, body, params, headers)
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
                # Most often a kept-alive connection the broker closed as we reused it. Every
                # OSB request may be repeated (an identical provision/bind answers 200 with the
                # same result), so one immediate retry on a fresh connection is safe.
                response = await self._request(method, url, body, params, headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            return Reply(Verdict.RETRY, f"broker unreachable ({type(exc).__name__})")
        except httpx.LocalProtocolError as exc:
            # Refused before anything was sent (a header that cannot be sent as given): the
            # broker never saw it, so there is nothing to mitigate.
            return Reply(Verdict.FAILED, f"request not sent: {exc}")
        except httpx.TimeoutException:
            # spec: Orphan Mitigation, row "Timeout": only provisioning and binding.
            return Reply(
                Verdict.FAILED,
                "broker did not answer in time",
                orphan_mitigation=needs_mitigation(request, None),
            )
        except httpx.HTTPError as exc:
            # The answer is lost, as with a timeout: the broker may have acted on the request.
            return Reply(
                Verdict.FAILED,
                f"broker connection failed ({type(exc).__name__})",
                orphan_mitigation=needs_mitigation(request, None),
            )
        return _redacted(classify(request, response), broker.secrets())


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date: fall back to the platform's own backoff


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _error_text(status: int, body: dict[str, Any] | None) -> str:
    body = body or {}
    parts = [str(body[k]) for k in ("error", "description") if isinstance(body.get(k), str)]
    detail = ": ".join(parts) if parts else "no description"
    return f"broker answered {status} ({detail})"


def _redacted(reply: Reply, secrets: list[str]) -> Reply:
    """The reply without the platform's credentials for this broker in its words.

    A broker's ``description`` becomes the operation's description, stored in clear and shown by
    the API and the CLI; a broker that quotes the credentials it was sent (a login error, an
    echoed header) must not get them stored or shown.
    """
    if not secrets:
        return reply
    body = dict(reply.body)
    for key in ("description", "error"):
        if isinstance(body.get(key), str):
            body[key] = masked(body[key], secrets)
    return replace(reply, description=masked(reply.description, secrets), body=body)


def masked(value: Any, secrets: list[str]) -> Any:
    """``value`` (a text, or JSON) with each of ``secrets`` in its texts replaced by ``***``.

    ``secrets`` go longest first (``BrokerEndpoint.secrets``), so that one inside another is
    masked with it. Also what the migrations re-apply to text stored before masking existed.
    """
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, "***")
        return value
    if isinstance(value, list):
        return [masked(item, secrets) for item in value]
    if isinstance(value, dict):
        return {key: masked(item, secrets) for key, item in value.items()}
    return value


def classify(request: str, response: httpx.Response) -> Reply:
    """Turn one broker response into a :class:`Reply` per the spec's Orphan Mitigation table."""
    status = response.status_code
    body = _json_object(response)
    retry_after = _retry_after(response)
    if request == "poll" and status == 200:
        return _classify_poll(body, retry_after)
    if status in (200, 201, 202):
        return _classify_success(request, status, body, retry_after)
    if status == 410 and request in ("deprovision", "unbind", "poll"):
        return Reply(Verdict.GONE, "gone at the broker", status, body or {})
    if status == 408:
        # spec: "408 Client timeout failure (request not received at the server)".
        return Reply(Verdict.RETRY, "broker reported a client timeout (408)", status)
    if status == 422 and (body or {}).get("error") == "ConcurrencyError":
        return Reply(Verdict.RETRY, _error_text(status, body), status, body or {}, retry_after=None)
    if 400 <= status < 500:
        return Reply(Verdict.REJECTED, _error_text(status, body), status, body or {})
    if request == "poll":
        return Reply(Verdict.RETRY, _error_text(status, body), status, retry_after=retry_after)
    # spec: Orphan Mitigation, rows "5xx" and "All other 2xx".
    return Reply(
        Verdict.FAILED,
        _error_text(status, body),
        status,
        body or {},
        orphan_mitigation=needs_mitigation(request, status),
    )


def _classify_success(
    request: str, status: int, body: dict[str, Any] | None, retry_after: float | None
) -> Reply:
    model = _BODY_MODELS.get(request)
    well_formed = body is not None
    if well_formed and model is not None:
        try:
            body = model.model_validate(body).model_dump(mode="json", exclude_none=True)
        except ValidationError:
            well_formed = False
    if status == 202 and request in ("catalog", "fetch_binding"):
        return Reply(Verdict.FAILED, f"unexpected status {status}", status)
    if status == 201 and request not in ("provision", "bind"):
        # spec: "All other 2xx" is a failure for every request but provision/bind's 201.
        return Reply(
            Verdict.FAILED,
            f"unexpected status {status}",
            status,
            orphan_mitigation=needs_mitigation(request, status),
        )
    if not well_formed:
        # spec: "200 with malformed response" → no mitigation; malformed 201/202 of provision
        # and bind → mitigation.
        om = needs_mitigation(request, status, body_ok=False)
        return Reply(Verdict.FAILED, f"malformed {status} response", status, orphan_mitigation=om)
    verdict = Verdict.ACCEPTED if status == 202 else Verdict.DONE
    return Reply(verdict, f"broker answered {status}", status, body or {}, retry_after=retry_after)


def _classify_poll(body: dict[str, Any] | None, retry_after: float | None) -> Reply:
    try:
        state = LastOperationResponse.model_validate(body)
    except ValidationError:
        # A malformed poll answer tells nothing: poll again (bounded by the deadline).
        return Reply(Verdict.RETRY, "malformed last_operation response", 200)
    parsed = state.model_dump(mode="json", exclude_none=True)
    text = state.description or state.state.value
    return Reply(Verdict.DONE, text, 200, parsed, retry_after=retry_after)
