"""When to clean up after a failed call: the spec's Orphan Mitigation table, row by row.

The platform is the source of truth; a broker may have created an instance or binding the
platform does not know about (a timeout, a 5xx, a malformed 201/202, a failed async provision).
``orphan_mitigation()`` answers, for one call and its outcome, which resource the platform should
now try to delete, and keep trying until the broker confirms (spec "Orphan Mitigation").
"""

from __future__ import annotations

from enum import StrEnum

from servicebay.osb import OperationState

__all__ = ["OrphanMitigation", "RequestKind", "orphan_mitigation", "orphan_mitigation_needed"]


class RequestKind(StrEnum):
    """The OSB call whose outcome is judged."""

    CATALOG = "catalog"
    PROVISION = "provision"
    UPDATE = "update"
    DEPROVISION = "deprovision"
    BIND = "bind"
    UNBIND = "unbind"
    FETCH_INSTANCE = "fetch_instance"
    FETCH_BINDING = "fetch_binding"
    LAST_OPERATION = "last_operation"
    BINDING_LAST_OPERATION = "binding_last_operation"


class OrphanMitigation(StrEnum):
    """What the platform should delete: nothing, the instance, or the binding."""

    NONE = "none"
    INSTANCE = "instance"
    BINDING = "binding"


_INSTANCE_OPS = {RequestKind.PROVISION, RequestKind.DEPROVISION}
_BINDING_OPS = {RequestKind.BIND, RequestKind.UNBIND}
_NONE = OrphanMitigation.NONE


def _for(request: RequestKind) -> OrphanMitigation:
    if request in _INSTANCE_OPS:
        return OrphanMitigation.INSTANCE
    if request in _BINDING_OPS:
        return OrphanMitigation.BINDING
    return _NONE


def orphan_mitigation(
    request: RequestKind,
    status: int | None,
    body_ok: bool = True,
    *,
    state: OperationState | None = None,
) -> OrphanMitigation:
    """Which resource to delete after ``request`` ended with ``status``.

    ``status=None`` means the call timed out (no answer). ``body_ok=False`` means the status was
    a success but the body was malformed. To judge a ``last_operation`` poll, pass the kind of
    the operation being polled (e.g. ``PROVISION``) with ``status=200`` and its ``state``.
    """
    if status is None:
        if request is RequestKind.PROVISION:
            # spec: row "Provisioning | Timeout | Failure | Yes | No"
            return OrphanMitigation.INSTANCE
        if request is RequestKind.BIND:
            # spec: row "Binding | Timeout | Failure | No | Yes"
            return OrphanMitigation.BINDING
        # spec: row "All (except Provisioning and Binding) | Timeout | Failure | No | No"
        return _NONE
    if status == 200 and state is OperationState.FAILED:
        if request in _INSTANCE_OPS:
            # spec: row "Polling Last Operation for Service Instances for
            # Provisioning/Deprovisioning | 200 with "state": "failed" | Failure | Yes | No"
            return OrphanMitigation.INSTANCE
        if request in _BINDING_OPS:
            # spec: row "Polling Last Operation for Service Bindings for Binding/Unbinding |
            # 200 with "state": "failed" | Failure | No | Yes"
            return OrphanMitigation.BINDING
        return _NONE
    if status == 200:
        # spec: rows "All | 200 | Success | No | No" and
        # "All | 200 with malformed response | Failure | No | No"
        return _NONE
    if status in (201, 202):
        if body_ok:
            # spec: rows "All | 201 | Success | No | No" and "All | 202 | Success | No | No"
            return _NONE
        if request is RequestKind.PROVISION:
            # spec: rows "Provisioning | 201 with malformed response | Failure | Yes | No" and
            # "Provisioning | 202 with malformed response | Failure | Yes | No"
            return OrphanMitigation.INSTANCE
        if request is RequestKind.BIND:
            # spec: rows "Binding | 201 with malformed response | Failure | No | Yes" and
            # "Binding | 202 with malformed response | Failure | No | Yes"
            return OrphanMitigation.BINDING
        # The table names malformed 201/202 only for provisioning and binding.
        return _NONE
    if 200 <= status < 300:
        # spec: rows "Provisioning/Deprovisioning | All other 2xx | Failure | Yes | No",
        # "Binding/Unbinding | All other 2xx | Failure | No | Yes" and
        # "Updating a Service Instance | All other 2xx | Failure | No | No"
        return _for(request)
    if status == 408:
        # spec: row "All | 408 | Client timeout failure (request not received at the server)"
        return _NONE
    if 400 <= status < 500:
        # spec: row "All | All other 4xx | Request rejected | No | No"
        return _NONE
    if 500 <= status < 600:
        # spec: rows "Provisioning/Deprovisioning | 5xx | Service Broker error | Yes | No",
        # "Binding/Unbinding | 5xx | Service Broker error | No | Yes" and
        # "Updating a Service Instance | 5xx | Service Broker error | No | No"
        return _for(request)
    # 1xx and 3xx are not in the table: nothing was created that the platform can point at.
    return _NONE


def orphan_mitigation_needed(
    request: RequestKind,
    status: int | None,
    body_ok: bool = True,
    *,
    state: OperationState | None = None,
) -> bool:
    """True when ``orphan_mitigation()`` names a resource to delete."""
    return orphan_mitigation(request, status, body_ok, state=state) is not OrphanMitigation.NONE
