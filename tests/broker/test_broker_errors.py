"""How author failures reach the platform, and what never reaches the logs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog
from test_broker_support import (
    ASYNC,
    PASSWORD,
    SERVICE,
    SYNC,
    SampleBroker,
    bind_body,
    ids,
    provision_body,
    running,
    wait_state,
)

from servicebay import osb
from servicebay.broker import (
    BindDetails,
    BindResult,
    DeprovisionDetails,
    OperationContext,
    OperationFailed,
    ProvisionDetails,
    ProvisionResult,
)

INSTANCE = "/v2/service_instances/i-1"
BINDING = INSTANCE + "/service_bindings/b-1"
ASYNC_OK = {"accepts_incomplete": "true"}


class Failing(SampleBroker):
    """Provision raises whatever `error` is set to; deprovision fails with flags."""

    error: BaseException | None = None

    async def provision(self, details: ProvisionDetails, ctx: OperationContext) -> ProvisionResult:
        if self.error is not None:
            raise self.error
        return await super().provision(details, ctx)

    async def deprovision(self, details: DeprovisionDetails, ctx: OperationContext) -> None:
        raise OperationFailed("disk busy", instance_usable=True, update_repeatable=True)


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (osb.Conflict("name taken"), 409, None),
        (osb.BadRequest("size too large for this region"), 400, None),
        (osb.UnprocessableEntity("quota exceeded"), 422, None),
        (osb.ConcurrencyError("busy"), 422, "ConcurrencyError"),
    ],
)
async def test_author_osb_errors_keep_their_status_and_code(
    tmp_path: Path, error: osb.OSBError, status: int, code: str | None
) -> None:
    """Author osb errors keep status, code and description; the provision leaves no record."""
    broker = Failing()
    broker.error = error
    async with running(broker, f"sqlite:///{tmp_path}/b.db") as client:
        response = await client.put(INSTANCE, json=provision_body())
        assert response.status_code == status
        assert response.json().get("error") == code
        assert response.json()["description"] == error.description
        assert (await client.get(INSTANCE)).status_code == 404


async def test_unexpected_author_exception_is_500_internal_error(tmp_path: Path) -> None:
    """Any other exception is 500 "internal error"; its message stays in the (plain) log."""
    broker = Failing()
    broker.error = RuntimeError("connection to db://admin:topsecret@host failed")
    async with running(broker, f"sqlite:///{tmp_path}/b.db") as client:
        with structlog.testing.capture_logs() as logs:
            response = await client.put(INSTANCE, json=provision_body())
        assert response.status_code == 500
        assert response.json() == {"description": "internal error"}
        crash = next(entry for entry in logs if entry["event"] == "unhandled error")
        assert crash["error_type"] == "RuntimeError"
        assert "exc_info" not in crash


async def test_unexpected_async_exception_fails_the_operation_as_internal_error(
    tmp_path: Path,
) -> None:
    """In the background an unexpected exception ends the operation "failed: internal error"."""
    broker = Failing()
    broker.error = RuntimeError("boom with secret sauce")
    async with running(broker, f"sqlite:///{tmp_path}/b.db") as client:
        await client.put(INSTANCE, params=ASYNC_OK, json=provision_body(ASYNC))
        body = await wait_state(client, INSTANCE, "failed")
        assert body == {"state": "failed", "description": "internal error"}


async def test_failed_deprovision_reports_instance_usable_and_keeps_the_instance(
    tmp_path: Path,
) -> None:
    """A failed deprovision reports instance_usable (never update_repeatable); instance kept."""
    broker = Failing()
    async with running(broker, f"sqlite:///{tmp_path}/b.db") as client:
        await client.put(INSTANCE, json=provision_body(SYNC))
        response = await client.delete(INSTANCE, params=ids(SYNC))
        assert response.status_code == 500
        assert response.json() == {"description": "disk busy", "instance_usable": True}
        assert (await client.get(INSTANCE)).status_code == 200
        await client.put("/v2/service_instances/a-1", params=ASYNC_OK, json=provision_body(ASYNC))
        await wait_state(client, "/v2/service_instances/a-1", "succeeded")
        deleting = await client.delete(
            "/v2/service_instances/a-1", params={**ids(ASYNC), **ASYNC_OK}
        )
        body = await wait_state(
            client, "/v2/service_instances/a-1", "failed", deleting.json()["operation"]
        )
        assert body == {"state": "failed", "description": "disk busy", "instance_usable": True}
        assert (await client.get("/v2/service_instances/a-1")).status_code == 200


async def test_credentials_never_reach_the_logs(tmp_path: Path) -> None:
    """Neither the platform's password nor binding credentials appear in any log event."""

    class Secretive(SampleBroker):
        async def bind(self, details: BindDetails, ctx: OperationContext) -> BindResult:
            ctx.logger.info("binding", binding_id=details.binding_id)
            return BindResult(credentials={"password": "very-secret-credential"})

    async with running(Secretive(), f"sqlite:///{tmp_path}/b.db") as client:
        with structlog.testing.capture_logs() as logs:
            await client.put(INSTANCE, json=provision_body())
            await client.put(BINDING, json=bind_body())
            await client.put(BINDING, json=bind_body())
            await client.get(BINDING)
            await client.put(BINDING, json=bind_body(size=2))
            await client.delete(BINDING, params=ids())
            await client.patch(INSTANCE, json={"service_id": SERVICE, "parameters": {"x": 1}})
    text = repr(logs)
    assert "very-secret-credential" not in text
    assert PASSWORD not in text
    assert logs  # the test would prove nothing if nothing was logged


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


async def test_request_identity_is_bound_into_operation_logs(tmp_path: Path) -> None:
    """Log lines of an async operation carry the request identity that started it."""
    broker = SampleBroker()
    async with running(broker, f"sqlite:///{tmp_path}/b.db") as client:
        with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]
        ) as logs:
            await client.put(
                INSTANCE,
                params=ASYNC_OK,
                json=provision_body(ASYNC),
                headers={"X-Broker-API-Request-Identity": "trace-99"},
            )
            await wait_state(client, INSTANCE, "succeeded")
    finished = _events(logs, "operation finished")
    assert finished
    assert finished[0]["request_id"] == "trace-99"
