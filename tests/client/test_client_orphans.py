"""Orphan mitigation decisions: one test per row of the spec's Orphan Mitigation table."""

import pytest

from servicebay.client import (
    OrphanMitigation,
    RequestKind,
    orphan_mitigation,
    orphan_mitigation_needed,
)
from servicebay.osb import OperationState

K = RequestKind
NONE, INSTANCE, BINDING = OrphanMitigation.NONE, OrphanMitigation.INSTANCE, OrphanMitigation.BINDING
MUTATIONS = [K.PROVISION, K.UPDATE, K.DEPROVISION, K.BIND, K.UNBIND]
FAILED = OperationState.FAILED


def test_row_all_200_success() -> None:
    """Row "All | 200 | Success": no mitigation for any request."""
    for kind in RequestKind:
        assert orphan_mitigation(kind, 200) is NONE


def test_row_all_200_malformed() -> None:
    """Row "All | 200 with malformed response | Failure": no mitigation."""
    for kind in RequestKind:
        assert orphan_mitigation(kind, 200, body_ok=False) is NONE


def test_row_instance_last_operation_failed_for_provision_and_deprovision() -> None:
    """Row "Polling Last Operation for Service Instances for Provisioning/Deprovisioning |
    200 with state failed": mitigate the instance."""
    assert orphan_mitigation(K.PROVISION, 200, state=FAILED) is INSTANCE
    assert orphan_mitigation(K.DEPROVISION, 200, state=FAILED) is INSTANCE
    # A failed update is not in this row: the instance existed before.
    assert orphan_mitigation(K.UPDATE, 200, state=FAILED) is NONE
    assert orphan_mitigation(K.PROVISION, 200, state=OperationState.SUCCEEDED) is NONE


def test_row_binding_last_operation_failed_for_bind_and_unbind() -> None:
    """Row "Polling Last Operation for Service Bindings for Binding/Unbinding |
    200 with state failed": mitigate the binding."""
    assert orphan_mitigation(K.BIND, 200, state=FAILED) is BINDING
    assert orphan_mitigation(K.UNBIND, 200, state=FAILED) is BINDING


def test_row_all_201_success() -> None:
    """Row "All | 201 | Success": no mitigation."""
    for kind in RequestKind:
        assert orphan_mitigation(kind, 201) is NONE


def test_row_provisioning_201_malformed() -> None:
    """Row "Provisioning | 201 with malformed response": mitigate the instance."""
    assert orphan_mitigation(K.PROVISION, 201, body_ok=False) is INSTANCE


def test_row_binding_201_malformed() -> None:
    """Row "Binding | 201 with malformed response": mitigate the binding."""
    assert orphan_mitigation(K.BIND, 201, body_ok=False) is BINDING


def test_row_all_202_success() -> None:
    """Row "All | 202 | Success": no mitigation."""
    for kind in RequestKind:
        assert orphan_mitigation(kind, 202) is NONE


def test_row_provisioning_202_malformed() -> None:
    """Row "Provisioning | 202 with malformed response": mitigate the instance."""
    assert orphan_mitigation(K.PROVISION, 202, body_ok=False) is INSTANCE


def test_row_binding_202_malformed() -> None:
    """Row "Binding | 202 with malformed response": mitigate the binding."""
    assert orphan_mitigation(K.BIND, 202, body_ok=False) is BINDING


@pytest.mark.parametrize("status", [203, 204, 206, 299])
def test_row_provisioning_deprovisioning_other_2xx(status: int) -> None:
    """Row "Provisioning/Deprovisioning | All other 2xx | Failure": mitigate the instance."""
    assert orphan_mitigation(K.PROVISION, status) is INSTANCE
    assert orphan_mitigation(K.DEPROVISION, status) is INSTANCE


@pytest.mark.parametrize("status", [203, 204, 206, 299])
def test_row_binding_unbinding_other_2xx(status: int) -> None:
    """Row "Binding/Unbinding | All other 2xx | Failure": mitigate the binding."""
    assert orphan_mitigation(K.BIND, status) is BINDING
    assert orphan_mitigation(K.UNBIND, status) is BINDING


@pytest.mark.parametrize("status", [203, 204, 206, 299])
def test_row_update_other_2xx(status: int) -> None:
    """Row "Updating a Service Instance | All other 2xx | Failure": no mitigation."""
    assert orphan_mitigation(K.UPDATE, status) is NONE


def test_row_all_408() -> None:
    """Row "All | 408 | Client timeout failure (request not received)": no mitigation."""
    for kind in RequestKind:
        assert orphan_mitigation(kind, 408) is NONE


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 412, 422, 499])
def test_row_all_other_4xx(status: int) -> None:
    """Row "All | All other 4xx | Request rejected": no mitigation (incl. ConcurrencyError)."""
    for kind in RequestKind:
        assert orphan_mitigation(kind, status) is NONE


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
def test_row_provisioning_deprovisioning_5xx(status: int) -> None:
    """Row "Provisioning/Deprovisioning | 5xx | Service Broker error": mitigate the instance."""
    assert orphan_mitigation(K.PROVISION, status) is INSTANCE
    assert orphan_mitigation(K.DEPROVISION, status) is INSTANCE


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
def test_row_binding_unbinding_5xx(status: int) -> None:
    """Row "Binding/Unbinding | 5xx | Service Broker error": mitigate the binding."""
    assert orphan_mitigation(K.BIND, status) is BINDING
    assert orphan_mitigation(K.UNBIND, status) is BINDING


@pytest.mark.parametrize("status", [500, 503])
def test_row_update_5xx(status: int) -> None:
    """Row "Updating a Service Instance | 5xx | Service Broker error": no mitigation."""
    assert orphan_mitigation(K.UPDATE, status) is NONE


def test_row_provisioning_timeout() -> None:
    """Row "Provisioning | Timeout | Failure": mitigate the instance."""
    assert orphan_mitigation(K.PROVISION, None) is INSTANCE


def test_row_binding_timeout() -> None:
    """Row "Binding | Timeout | Failure": mitigate the binding."""
    assert orphan_mitigation(K.BIND, None) is BINDING


def test_row_all_except_provisioning_and_binding_timeout() -> None:
    """Row "All (except Provisioning and Binding) | Timeout | Failure": no mitigation."""
    for kind in RequestKind:
        if kind not in (K.PROVISION, K.BIND):
            assert orphan_mitigation(kind, None) is NONE


def test_reads_never_need_mitigation() -> None:
    """Catalog and fetches create nothing, whatever happens."""
    for kind in (K.CATALOG, K.FETCH_INSTANCE, K.FETCH_BINDING):
        for status in (None, 200, 201, 204, 500):
            assert orphan_mitigation(kind, status, body_ok=False) is NONE


def test_needed_is_the_boolean_view() -> None:
    """orphan_mitigation_needed agrees with orphan_mitigation."""
    for kind in MUTATIONS:
        for status in (None, 200, 201, 202, 204, 408, 409, 500):
            for body_ok in (True, False):
                expected = orphan_mitigation(kind, status, body_ok) is not NONE
                assert orphan_mitigation_needed(kind, status, body_ok) is expected
