"""``BrokerClient``: the platform's typed calls to one broker over OSB v2.17.

Every call carries the version header, auth (basic or bearer), a fresh request identity and —
when a platform user is behind it — the originating identity. Answers are checked against the
spec: a success becomes a typed ``Outcome``; anything else becomes a ``ClientError`` that says
whether orphan mitigation is due (``_orphans``). ``poll()`` follows an async operation to its end
(``_polling``). The transport is injected, so the same client reaches a real socket, an
in-process ASGI app or a deliberately misbehaving test broker.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import quote

import httpx

from servicebay.client._answers import binding_problem, judge
from servicebay.client._errors import (
    BrokerTimeout,
    BrokerUnreachable,
    ClientError,
    MalformedResponse,
    PollingTimedOut,
)
from servicebay.client._orphans import OrphanMitigation, RequestKind, orphan_mitigation
from servicebay.client._outcomes import (
    BindOutcome,
    DeprovisionOutcome,
    LastOperation,
    Outcome,
    ProvisionOutcome,
    UnbindOutcome,
    UpdateOutcome,
)
from servicebay.client._polling import (
    PollingPolicy,
    ProgressCallback,
    ProgressReporter,
    judge_failed_poll,
    parse_retry_after,
    retry_after_of,
)
from servicebay.osb import (
    API_VERSION,
    API_VERSION_HEADER,
    ORIGINATING_IDENTITY_HEADER,
    REQUEST_IDENTITY_HEADER,
    BindRequest,
    BindResponse,
    Catalog,
    DeprovisionResponse,
    FetchBindingResponse,
    FetchInstanceResponse,
    LastOperationResponse,
    OperationState,
    OriginatingIdentity,
    ProvisionRequest,
    ProvisionResponse,
    Service,
    UnbindResponse,
    UpdateRequest,
    UpdateResponse,
    WireModel,
)

__all__ = ["BrokerClient"]

M = TypeVar("M", bound=WireModel)

# Standard logging: silent unless the process asks for debug output.
_log = logging.getLogger("servicebay.client")
# Transport failures after which the request may have reached the broker.
_MAYBE_RECEIVED = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


def _path(*parts: str) -> str:
    return "/v2/" + "/".join(quote(p, safe="") for p in parts)


class BrokerClient:
    """A typed async OSB client for one broker.

    Use as ``async with BrokerClient(url, username=..., password=...) as broker:``. Pass
    ``transport`` to reach an in-process app (``httpx.ASGITransport``) or a test double.
    ``originating_identity`` is sent on every call made for a user (not on catalog fetches or
    orphan mitigation); a call's ``identity`` argument overrides it.
    """

    def __init__(
        self,
        base_url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        bearer_token: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        originating_identity: OriginatingIdentity | None = None,
        polling: PollingPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("username and password go together")
        if username is not None and bearer_token is not None:
            raise ValueError("use basic auth or a bearer token, not both")
        headers = {API_VERSION_HEADER: API_VERSION, "Accept": "application/json"}
        if bearer_token is not None:
            headers["Authorization"] = f"Bearer {bearer_token}"
        auth = None
        if username is not None and password is not None:
            auth = httpx.BasicAuth(username, password)
        self._http = httpx.AsyncClient(
            base_url=base_url,
            auth=auth,
            headers=headers,
            transport=transport,
            timeout=httpx.Timeout(timeout),
        )
        # Shown in messages and repr: without any user:password@ the URL may carry.
        self.base_url = str(httpx.URL(base_url).copy_with(username=None, password=None))
        self.originating_identity = originating_identity
        self.polling = polling or PollingPolicy()
        self._sleep = sleep
        self._clock = clock
        self._catalog: Catalog | None = None
        self._catalog_validators: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"BrokerClient({self.base_url!r})"

    async def __aenter__(self) -> BrokerClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # -- catalog ---------------------------------------------------------------------------

    async def catalog(self, *, use_cache: bool = True) -> Catalog:
        """``GET /v2/catalog``, revalidating a cached copy with ETag / If-Modified-Since."""
        headers: dict[str, str] = {}
        if use_cache and self._catalog is not None:
            headers.update(self._catalog_validators)
        response, request_id = await self._send(
            RequestKind.CATALOG, "GET", "/v2/catalog", headers=headers, for_user=False
        )
        if response.status_code == 304 and self._catalog is not None:
            return self._catalog
        outcome = judge(RequestKind.CATALOG, response, request_id, Catalog, {200})
        self._catalog = outcome.body
        self._catalog_validators = {}
        if etag := response.headers.get("ETag"):
            self._catalog_validators["If-None-Match"] = etag
        if modified := response.headers.get("Last-Modified"):
            self._catalog_validators["If-Modified-Since"] = modified
        return outcome.body

    # -- instances -------------------------------------------------------------------------

    async def provision(
        self,
        instance_id: str,
        request: ProvisionRequest,
        accepts_incomplete: bool = True,
        *,
        identity: OriginatingIdentity | None = None,
    ) -> ProvisionOutcome:
        """``PUT /v2/service_instances/:id``: 201 created, 200 already there, 202 in progress."""
        response, request_id = await self._send(
            RequestKind.PROVISION,
            "PUT",
            _path("service_instances", instance_id),
            params=_incomplete(accepts_incomplete),
            body=request,
            identity=identity,
        )
        return judge(
            RequestKind.PROVISION, response, request_id, ProvisionResponse, {200, 201, 202}
        )

    async def update(
        self,
        instance_id: str,
        request: UpdateRequest,
        accepts_incomplete: bool = True,
        *,
        identity: OriginatingIdentity | None = None,
    ) -> UpdateOutcome:
        """``PATCH /v2/service_instances/:id``: 200 applied, 202 in progress."""
        response, request_id = await self._send(
            RequestKind.UPDATE,
            "PATCH",
            _path("service_instances", instance_id),
            params=_incomplete(accepts_incomplete),
            body=request,
            identity=identity,
        )
        return judge(RequestKind.UPDATE, response, request_id, UpdateResponse, {200, 202})

    async def deprovision(
        self,
        instance_id: str,
        service_id: str,
        plan_id: str,
        accepts_incomplete: bool = True,
        *,
        identity: OriginatingIdentity | None = None,
    ) -> DeprovisionOutcome:
        """``DELETE /v2/service_instances/:id``: 200 deleted, 202 in progress, 410 gone."""
        return await self._delete(
            RequestKind.DEPROVISION,
            _path("service_instances", instance_id),
            service_id,
            plan_id,
            accepts_incomplete,
            DeprovisionResponse,
            identity=identity,
            for_user=True,
        )

    async def fetch_instance(
        self,
        instance_id: str,
        service_id: str | None = None,
        plan_id: str | None = None,
        *,
        identity: OriginatingIdentity | None = None,
    ) -> FetchInstanceResponse:
        """``GET /v2/service_instances/:id`` (only if the service is instances_retrievable)."""
        response, request_id = await self._send(
            RequestKind.FETCH_INSTANCE,
            "GET",
            _path("service_instances", instance_id),
            params=_hints(service_id, plan_id),
            identity=identity,
        )
        kind = RequestKind.FETCH_INSTANCE
        return judge(kind, response, request_id, FetchInstanceResponse, {200}).body

    async def last_operation(
        self,
        instance_id: str,
        operation: str | None = None,
        *,
        service_id: str | None = None,
        plan_id: str | None = None,
        identity: OriginatingIdentity | None = None,
    ) -> LastOperation:
        """``GET /v2/service_instances/:id/last_operation``; 410 raises ``BrokerError(Gone)``."""
        return await self._last_operation(
            RequestKind.LAST_OPERATION,
            _path("service_instances", instance_id, "last_operation"),
            operation,
            service_id,
            plan_id,
            identity,
        )

    # -- bindings --------------------------------------------------------------------------

    async def bind(
        self,
        instance_id: str,
        binding_id: str,
        request: BindRequest,
        accepts_incomplete: bool = True,
        *,
        identity: OriginatingIdentity | None = None,
        service: Service | None = None,
    ) -> BindOutcome:
        """``PUT .../service_bindings/:binding_id``: 201 created, 200 existing, 202 in progress.

        Given the ``service`` offering, binding kinds it did not declare in ``requires`` make the
        answer malformed (spec "Binding" response body: "the Platform can consider the response
        invalid").
        """
        response, request_id = await self._send(
            RequestKind.BIND,
            "PUT",
            _path("service_instances", instance_id, "service_bindings", binding_id),
            params=_incomplete(accepts_incomplete),
            body=request,
            identity=identity,
        )
        outcome = judge(RequestKind.BIND, response, request_id, BindResponse, {200, 201, 202})
        problem = binding_problem(outcome, service)
        if problem is not None:
            raise MalformedResponse(
                f"bind answered {outcome.status} with {problem}",
                status=outcome.status,
                mitigation=orphan_mitigation(RequestKind.BIND, outcome.status, body_ok=False),
                request_id=request_id,
            )
        return outcome

    async def unbind(
        self,
        instance_id: str,
        binding_id: str,
        service_id: str,
        plan_id: str,
        accepts_incomplete: bool = True,
        *,
        identity: OriginatingIdentity | None = None,
    ) -> UnbindOutcome:
        """``DELETE .../service_bindings/:binding_id``: 200 deleted, 202 in progress, 410 gone."""
        return await self._delete(
            RequestKind.UNBIND,
            _path("service_instances", instance_id, "service_bindings", binding_id),
            service_id,
            plan_id,
            accepts_incomplete,
            UnbindResponse,
            identity=identity,
            for_user=True,
        )

    async def fetch_binding(
        self,
        instance_id: str,
        binding_id: str,
        service_id: str | None = None,
        plan_id: str | None = None,
        *,
        identity: OriginatingIdentity | None = None,
    ) -> FetchBindingResponse:
        """``GET .../service_bindings/:binding_id`` (only if bindings_retrievable)."""
        response, request_id = await self._send(
            RequestKind.FETCH_BINDING,
            "GET",
            _path("service_instances", instance_id, "service_bindings", binding_id),
            params=_hints(service_id, plan_id),
            identity=identity,
        )
        kind = RequestKind.FETCH_BINDING
        return judge(kind, response, request_id, FetchBindingResponse, {200}).body

    async def binding_last_operation(
        self,
        instance_id: str,
        binding_id: str,
        operation: str | None = None,
        *,
        service_id: str | None = None,
        plan_id: str | None = None,
        identity: OriginatingIdentity | None = None,
    ) -> LastOperation:
        """``GET .../service_bindings/:binding_id/last_operation``; 410 raises BrokerError."""
        return await self._last_operation(
            RequestKind.BINDING_LAST_OPERATION,
            _path(
                "service_instances", instance_id, "service_bindings", binding_id, "last_operation"
            ),
            operation,
            service_id,
            plan_id,
            identity,
        )

    # -- polling and orphan mitigation -----------------------------------------------------

    async def poll(
        self,
        instance_id: str,
        operation: str | None = None,
        *,
        kind: RequestKind = RequestKind.PROVISION,
        binding_id: str | None = None,
        service_id: str | None = None,
        plan_id: str | None = None,
        maximum_polling_duration: float | None = None,
        on_progress: ProgressCallback | None = None,
        identity: OriginatingIdentity | None = None,
    ) -> LastOperationResponse:
        """Poll last_operation of ``kind`` until it succeeds or fails; return the final answer.

        Waits ``Retry-After`` when given, else backs off (``PollingPolicy``). Invalid answers
        (5xx, malformed bodies, timeouts, 408, 429, a 410 while creating) do not end polling
        (spec: "SHOULD continue polling until ... a valid response or the maximum polling
        duration is reached"); other 4xx (400, 401, 404...) raise ``BrokerError``. A 410 while
        deleting is success. Past the maximum polling duration ``PollingTimedOut`` is raised,
        carrying the orphan mitigation a failure needs. For a failed result,
        ``orphan_mitigation(kind, 200, state=FAILED)`` says what to delete. When polling an update
        that changes the plan, pass the plan_id from before the update (spec "Polling Last
        Operation for Service Instances").
        """
        deadline = self._clock() + self.polling.limit(maximum_polling_duration)
        progress = ProgressReporter(on_progress)
        attempt = 0
        while True:
            try:
                answer = await self._poll_once(
                    instance_id, binding_id, operation, service_id, plan_id, identity
                )
            except ClientError as exc:
                final, retry_after = judge_failed_poll(kind, exc), retry_after_of(exc)
            else:
                final, retry_after = await progress.report(answer.response), answer.retry_after
            if final is not None:
                return final
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise PollingTimedOut(
                    f"{kind.value} did not finish within the maximum polling duration; "
                    "it is considered failed",
                    mitigation=orphan_mitigation(kind, 200, state=OperationState.FAILED),
                )
            await self._sleep(min(self.polling.wait(attempt, retry_after), remaining))
            attempt += 1

    async def mitigate_orphan(
        self,
        mitigation: OrphanMitigation,
        instance_id: str,
        service_id: str,
        plan_id: str,
        binding_id: str | None = None,
        *,
        maximum_polling_duration: float | None = None,
    ) -> bool:
        """Make one attempt at deleting a resource the platform cannot be sure of.

        Returns True once the broker confirms it is gone (200, 410, or a polled delete that
        succeeded); False if the platform must try again later. Sent without an originating
        identity: no user stands behind orphan mitigation (spec "Originating Identity").
        """
        if mitigation is OrphanMitigation.NONE:
            return True
        if mitigation is OrphanMitigation.BINDING and binding_id is None:
            raise ValueError("binding orphan mitigation needs the binding id")
        kind = (
            RequestKind.UNBIND
            if mitigation is OrphanMitigation.BINDING
            else RequestKind.DEPROVISION
        )
        path = (
            _path("service_instances", instance_id, "service_bindings", binding_id)
            if binding_id is not None and kind is RequestKind.UNBIND
            else _path("service_instances", instance_id)
        )
        model = UnbindResponse if kind is RequestKind.UNBIND else DeprovisionResponse
        try:
            outcome = await self._delete(
                kind, path, service_id, plan_id, True, model, identity=None, for_user=False
            )
            if not outcome.is_async:
                return True
            final = await self.poll(
                instance_id,
                outcome.operation,
                kind=kind,
                binding_id=binding_id if kind is RequestKind.UNBIND else None,
                service_id=service_id,
                plan_id=plan_id,
                maximum_polling_duration=maximum_polling_duration,
            )
        except ClientError:
            return False
        return final.state is OperationState.SUCCEEDED

    # -- plumbing --------------------------------------------------------------------------

    async def _poll_once(
        self,
        instance_id: str,
        binding_id: str | None,
        operation: str | None,
        service_id: str | None,
        plan_id: str | None,
        identity: OriginatingIdentity | None,
    ) -> LastOperation:
        if binding_id is None:
            return await self.last_operation(
                instance_id, operation, service_id=service_id, plan_id=plan_id, identity=identity
            )
        return await self.binding_last_operation(
            instance_id,
            binding_id,
            operation,
            service_id=service_id,
            plan_id=plan_id,
            identity=identity,
        )

    async def _last_operation(
        self,
        kind: RequestKind,
        path: str,
        operation: str | None,
        service_id: str | None,
        plan_id: str | None,
        identity: OriginatingIdentity | None,
    ) -> LastOperation:
        params = _hints(service_id, plan_id)
        if operation is not None:
            params["operation"] = operation
        response, request_id = await self._send(kind, "GET", path, params=params, identity=identity)
        outcome = judge(kind, response, request_id, LastOperationResponse, {200})
        return LastOperation(
            response=outcome.body,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            request_id=request_id,
        )

    async def _delete(
        self,
        kind: RequestKind,
        path: str,
        service_id: str,
        plan_id: str,
        accepts_incomplete: bool,
        model: type[M],
        *,
        identity: OriginatingIdentity | None,
        for_user: bool,
    ) -> Outcome[M]:
        params = {"service_id": service_id, "plan_id": plan_id, **_incomplete(accepts_incomplete)}
        response, request_id = await self._send(
            kind, "DELETE", path, params=params, identity=identity, for_user=for_user
        )
        if response.status_code == 410:
            # spec: Deprovisioning / Unbinding, 410 "MUST be returned if ... does not exist".
            return Outcome(status=410, body=model(), request_id=request_id)
        return judge(kind, response, request_id, model, {200, 202})

    async def _send(
        self,
        kind: RequestKind,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: WireModel | None = None,
        headers: dict[str, str] | None = None,
        identity: OriginatingIdentity | None = None,
        for_user: bool = True,
    ) -> tuple[httpx.Response, str]:
        request_id = str(uuid.uuid4())
        sent = {REQUEST_IDENTITY_HEADER: request_id, **(headers or {})}
        who = identity or self.originating_identity
        if for_user and who is not None:
            _check_same_platform(who, body)
            sent[ORIGINATING_IDENTITY_HEADER] = who.to_header()
        content = None
        if body is not None:
            content = body.to_json()
            sent["Content-Type"] = "application/json"
        started = time.perf_counter()
        try:
            response = await self._http.request(
                method, path, params=params, content=content, headers=sent
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # The request never reached the broker: nothing can have been created.
            raise BrokerUnreachable(
                f"{kind.value}: cannot reach the broker at {self.base_url} ({type(exc).__name__})",
                request_id=request_id,
            ) from exc
        except httpx.TimeoutException as exc:
            raise BrokerTimeout(
                f"{kind.value}: the broker did not answer in time ({type(exc).__name__})",
                mitigation=orphan_mitigation(kind, None),
                request_id=request_id,
            ) from exc
        except _MAYBE_RECEIVED as exc:
            # The broker may have received and acted on the request: judge it like a timeout.
            raise BrokerUnreachable(
                f"{kind.value}: the connection to the broker broke ({type(exc).__name__})",
                mitigation=orphan_mitigation(kind, None),
                request_id=request_id,
            ) from exc
        # Ids, status and timing only: never headers or bodies, which carry secrets.
        _log.debug(
            "osb %s %s %s -> %d in %.1f ms (request %s)",
            kind.value,
            method,
            path,
            response.status_code,
            (time.perf_counter() - started) * 1000,
            request_id,
        )
        return response, request_id


def _check_same_platform(identity: OriginatingIdentity, body: WireModel | None) -> None:
    # spec: Originating Identity — "When context is sent as part of a message, this value MUST
    # be the same as the context.platform value."
    context = getattr(body, "context", None)
    platform = context.get("platform") if isinstance(context, dict) else None
    if platform is not None and platform != identity.platform:
        raise ValueError(
            f"originating identity platform {identity.platform!r} differs from "
            f"context.platform {platform!r}"
        )


def _incomplete(accepts_incomplete: bool) -> dict[str, str]:
    return {"accepts_incomplete": "true"} if accepts_incomplete else {}


def _hints(service_id: str | None, plan_id: str | None) -> dict[str, str]:
    hints = {}
    if service_id is not None:
        hints["service_id"] = service_id
    if plan_id is not None:
        hints["plan_id"] = plan_id
    return hints
