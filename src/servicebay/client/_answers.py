"""How a broker's HTTP answer is judged.

A success the spec defines for the call becomes a typed ``Outcome``; anything else becomes the
``ClientError`` that says what went wrong and which orphan mitigation it calls for. Bodies are
never quoted in errors: a malformed bind answer may hold credentials.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import httpx

from servicebay.client._errors import BrokerError, MalformedResponse, UnexpectedStatus
from servicebay.client._orphans import RequestKind, orphan_mitigation
from servicebay.client._outcomes import BindOutcome, Outcome
from servicebay.client._polling import parse_retry_after
from servicebay.osb import BadRequest, OSBError, Service, WireModel, parse

__all__ = ["binding_problem", "judge"]

M = TypeVar("M", bound=WireModel)


def judge(
    kind: RequestKind,
    response: httpx.Response,
    request_id: str,
    model: type[M],
    success: set[int],
) -> Outcome[M]:
    """``response`` to a ``kind`` call as an Outcome if its status is in ``success`` and its
    body parses as ``model``; otherwise raise the matching ClientError."""
    status = response.status_code
    if status in success:
        try:
            # An empty body is read as {} (every field of these bodies is optional).
            body = parse(model, response.content or b"{}")
        except BadRequest as exc:
            raise MalformedResponse(
                f"{kind.value}: the broker answered {status} with a malformed body: "
                f"{exc.description}",
                status=status,
                mitigation=orphan_mitigation(kind, status, body_ok=False),
                request_id=request_id,
            ) from None
        return Outcome(status=status, body=body, request_id=request_id)
    mitigation = orphan_mitigation(kind, status)
    if 400 <= status < 600:
        error = OSBError.from_response(status, _json_or_none(response))
        raise BrokerError(
            error,
            mitigation=mitigation,
            request_id=request_id,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    raise UnexpectedStatus(
        f"{kind.value}: the broker answered {status}, which the spec does not define here",
        status=status,
        mitigation=mitigation,
        request_id=request_id,
    )


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content)
    except ValueError:
        return None


# spec: Binding response body — each kind needs its permission in the offering's "requires".
_REQUIRES = {
    "syslog_drain_url": "syslog_drain",
    "route_service_url": "route_forwarding",
    "volume_mounts": "volume_mount",
}


def binding_problem(outcome: BindOutcome, service: Service | None) -> str | None:
    """What makes a bind answer invalid beyond its schema, or None."""
    body = outcome.body
    if outcome.is_async and (body.credentials is not None or body.volume_mounts is not None):
        # spec: Binding, 202: "Information regarding the Service Binding (i.e. credentials)
        # MUST NOT be returned in this response."
        return "binding details in a 202, which the spec forbids"
    if service is not None:
        declared = set(service.requires or [])
        for field, permission in _REQUIRES.items():
            if getattr(body, field) is not None and permission not in declared:
                return f"{field} although the service does not declare requires {permission!r}"
    return None
