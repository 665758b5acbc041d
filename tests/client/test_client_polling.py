"""Polling last_operation: Retry-After, backoff, maximum_polling_duration, invalid answers,
410 semantics, progress, and orphan mitigation driven to confirmation."""

import httpx
import pytest
from client_fakes import FakeBroker, FakeClock, make_client, reply

from servicebay import osb
from servicebay.client import (
    BrokerError,
    OrphanMitigation,
    PollingPolicy,
    PollingTimedOut,
    RequestKind,
    orphan_mitigation,
    parse_retry_after,
)

LAST = "/v2/service_instances/i/last_operation"
BLAST = "/v2/service_instances/i/service_bindings/b/last_operation"
IN_PROGRESS = {"state": "in progress"}


async def test_poll_honours_retry_after() -> None:
    """The wait between polls is the broker's Retry-After."""
    broker = FakeBroker().on(
        "GET",
        LAST,
        reply(200, IN_PROGRESS, Retry_After="5"),
        reply(200, IN_PROGRESS, Retry_After="3"),
        reply(200, {"state": "succeeded", "description": "done"}),
    )
    clock = FakeClock()
    async with make_client(broker, clock) as client:
        final = await client.poll("i", "op-1", service_id="s", plan_id="p")
    assert final.state is osb.OperationState.SUCCEEDED and final.description == "done"
    assert clock.sleeps == [5.0, 3.0]
    assert all(r.url.params["operation"] == "op-1" for r in broker.requests)
    assert all(r.url.params["plan_id"] == "p" for r in broker.requests)


async def test_poll_backs_off_without_retry_after() -> None:
    """Without Retry-After the wait grows geometrically and is capped."""
    answers = [reply(200, IN_PROGRESS)] * 6 + [reply(200, {"state": "failed"})]
    broker = FakeBroker().on("GET", LAST, *answers)
    clock = FakeClock()
    async with make_client(broker, clock) as client:
        final = await client.poll("i")
    assert final.state is osb.OperationState.FAILED
    assert clock.sleeps == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


async def test_poll_stops_at_maximum_polling_duration() -> None:
    """Past the plan's maximum_polling_duration the operation counts as failed."""
    broker = FakeBroker().on("GET", LAST, reply(200, IN_PROGRESS, Retry_After="4"))
    clock = FakeClock()
    start = clock.now
    async with make_client(broker, clock) as client:
        with pytest.raises(PollingTimedOut) as info:
            await client.poll("i", kind=RequestKind.PROVISION, maximum_polling_duration=10)
    assert clock.now - start == pytest.approx(10.0)
    assert clock.sleeps == [4.0, 4.0, 2.0]
    assert info.value.mitigation is OrphanMitigation.INSTANCE
    assert info.value.exit_code == 14


async def test_platform_limit_bounds_a_longer_plan_limit() -> None:
    """The platform's own maximum applies when shorter than the plan's."""
    broker = FakeBroker().on("GET", BLAST, reply(200, IN_PROGRESS, Retry_After="100"))
    clock = FakeClock()
    start = clock.now
    policy = PollingPolicy(max_duration=30.0)
    async with make_client(broker, clock, polling=policy) as client:
        with pytest.raises(PollingTimedOut) as info:
            await client.poll(
                "i", binding_id="b", kind=RequestKind.BIND, maximum_polling_duration=3600
            )
    assert clock.now - start == pytest.approx(30.0)
    assert info.value.mitigation is OrphanMitigation.BINDING


async def test_retry_after_is_capped() -> None:
    """An absurd Retry-After is bounded by the policy's cap."""
    broker = FakeBroker().on(
        "GET",
        LAST,
        reply(200, IN_PROGRESS, Retry_After="86400"),
        reply(200, {"state": "succeeded"}),
    )
    clock = FakeClock()
    async with make_client(broker, clock, polling=PollingPolicy(retry_after_cap=60)) as client:
        await client.poll("i")
    assert clock.sleeps == [60.0]


async def test_invalid_answers_do_not_end_polling() -> None:
    """5xx, malformed bodies, timeouts and odd statuses: keep polling (spec SHOULD)."""

    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    broker = FakeBroker().on(
        "GET",
        LAST,
        reply(500, {"description": "hiccup"}),
        reply(200, raw=b"<html>"),
        reply(200, {"state": "maybe"}),
        timeout,
        reply(204),
        reply(200, {"state": "succeeded"}),
    )
    clock = FakeClock()
    async with make_client(broker, clock) as client:
        final = await client.poll("i")
    assert final.state is osb.OperationState.SUCCEEDED
    assert len(broker.requests) == 6


async def test_gone_while_deleting_is_success() -> None:
    """410 while polling a deprovision or unbind MUST be taken as success."""
    broker = FakeBroker().on("GET", LAST, reply(200, IN_PROGRESS), reply(410, {}))
    broker.on("GET", BLAST, reply(410, {}))
    async with make_client(broker) as client:
        final = await client.poll("i", "op", kind=RequestKind.DEPROVISION)
        unbound = await client.poll("i", binding_id="b", kind=RequestKind.UNBIND)
    assert final.state is osb.OperationState.SUCCEEDED
    assert unbound.state is osb.OperationState.SUCCEEDED


async def test_gone_while_provisioning_keeps_polling() -> None:
    """410 while polling a create is an invalid answer: polling continues."""
    broker = FakeBroker().on("GET", LAST, reply(410, {}), reply(200, {"state": "succeeded"}))
    async with make_client(broker) as client:
        final = await client.poll("i", kind=RequestKind.PROVISION)
    assert final.state is osb.OperationState.SUCCEEDED
    assert len(broker.requests) == 2


async def test_not_found_ends_polling() -> None:
    """404 (the instance does not exist) ends polling with BrokerError."""
    broker = FakeBroker().on("GET", LAST, reply(404, {"description": "no such instance"}))
    async with make_client(broker) as client:
        with pytest.raises(BrokerError) as info:
            await client.poll("i")
    assert isinstance(info.value.error, osb.NotFound)


async def test_progress_is_reported_when_the_description_changes() -> None:
    """on_progress sees each new description once (sync and async callbacks)."""
    broker = FakeBroker().on(
        "GET",
        LAST,
        reply(200, {"state": "in progress", "description": "10%"}),
        reply(200, {"state": "in progress", "description": "10%"}),
        reply(200, {"state": "in progress", "description": "60%"}),
        reply(200, {"state": "succeeded", "description": "done"}),
    )
    seen: list[str | None] = []

    async def record(answer: osb.LastOperationResponse) -> None:
        seen.append(answer.description)

    async with make_client(broker) as client:
        await client.poll("i", on_progress=record)
    assert seen == ["10%", "60%", "done"]


async def test_failed_async_provision_calls_for_instance_mitigation() -> None:
    """A polled provision that failed: the table says mitigate the instance."""
    broker = FakeBroker().on("GET", LAST, reply(200, {"state": "failed", "description": "x"}))
    async with make_client(broker) as client:
        final = await client.poll("i", kind=RequestKind.PROVISION)
    mitigation = orphan_mitigation(RequestKind.PROVISION, 200, state=final.state)
    assert mitigation is OrphanMitigation.INSTANCE


async def test_mitigate_orphan_instance_deletes_and_polls_until_confirmed() -> None:
    """Instance mitigation deprovisions (no user identity) and follows a 202 to success."""
    identity = osb.OriginatingIdentity(platform="servicebay", value={"username": "ann"})
    broker = (
        FakeBroker()
        .on("DELETE", "/v2/service_instances/i", reply(202, {"operation": "del"}))
        .on("GET", LAST, reply(200, IN_PROGRESS), reply(200, {"state": "succeeded"}))
    )
    async with make_client(broker, originating_identity=identity) as client:
        done = await client.mitigate_orphan(OrphanMitigation.INSTANCE, "i", "s", "p")
    assert done is True
    delete = broker.requests[0]
    assert delete.method == "DELETE"
    assert dict(delete.url.params) == {
        "service_id": "s",
        "plan_id": "p",
        "accepts_incomplete": "true",
    }
    assert "X-Broker-API-Originating-Identity" not in delete.headers
    assert broker.requests[-1].url.params["operation"] == "del"


async def test_mitigate_orphan_binding_gone_is_confirmed() -> None:
    """Binding mitigation: 410 means the broker has nothing: confirmed."""
    broker = FakeBroker().on("DELETE", "/v2/service_instances/i/service_bindings/b", reply(410, {}))
    async with make_client(broker) as client:
        assert await client.mitigate_orphan(OrphanMitigation.BINDING, "i", "s", "p", "b")


async def test_mitigate_orphan_reports_failure_so_the_platform_retries() -> None:
    """A 500 or a failed delete is not a confirmation: False, try again later."""
    broker = (
        FakeBroker()
        .on("DELETE", "/v2/service_instances/i", reply(500, {}), reply(202, {}))
        .on("GET", LAST, reply(200, {"state": "failed"}))
    )
    async with make_client(broker) as client:
        assert not await client.mitigate_orphan(OrphanMitigation.INSTANCE, "i", "s", "p")
        assert not await client.mitigate_orphan(OrphanMitigation.INSTANCE, "i", "s", "p")
        assert await client.mitigate_orphan(OrphanMitigation.NONE, "i", "s", "p")
        with pytest.raises(ValueError, match="binding id"):
            await client.mitigate_orphan(OrphanMitigation.BINDING, "i", "s", "p")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("12", 12.0),
        ("soon", None),
        ("Mon, 30 Nov 2026 21:00:10 GMT", 10.0),
        ("Mon, 30 Nov 2026 20:59:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    """Retry-After as delta-seconds or HTTP-date; garbage is ignored."""
    from email.utils import parsedate_to_datetime

    now = parsedate_to_datetime("Mon, 30 Nov 2026 21:00:00 GMT").timestamp()
    assert parse_retry_after(value, now=now) == seconds


async def test_busy_broker_retry_after_is_honoured_while_polling() -> None:
    """503 or 429 with Retry-After: wait as asked, then keep polling."""
    broker = FakeBroker().on(
        "GET",
        LAST,
        reply(503, {"description": "busy"}, Retry_After="6"),
        reply(429, {}, Retry_After="2"),
        reply(200, {"state": "succeeded"}),
    )
    clock = FakeClock()
    async with make_client(broker, clock) as client:
        final = await client.poll("i")
    assert final.state is osb.OperationState.SUCCEEDED
    assert clock.sleeps == [6.0, 2.0]


async def test_refused_poll_ends_polling() -> None:
    """401 to a poll will not change by asking again: BrokerError at once."""
    broker = FakeBroker().on("GET", LAST, reply(401, {}))
    clock = FakeClock()
    async with make_client(broker, clock) as client:
        with pytest.raises(BrokerError) as info:
            await client.poll("i")
    assert isinstance(info.value.error, osb.Unauthorized)
    assert clock.sleeps == []


async def test_retry_after_zero_does_not_cause_a_tight_loop() -> None:
    """Retry-After: 0 forever still waits at least the policy's initial interval."""
    broker = FakeBroker().on("GET", LAST, reply(200, IN_PROGRESS, Retry_After="0"))
    clock = FakeClock()
    async with make_client(broker, clock) as client:
        with pytest.raises(PollingTimedOut):
            await client.poll("i", maximum_polling_duration=5)
    assert clock.sleeps == [1.0] * 5
    assert len(broker.requests) == 6


def test_polling_policy_refuses_nonsense() -> None:
    """A policy that could never wait is a configuration error."""
    with pytest.raises(ValueError, match="initial"):
        PollingPolicy(initial=0)
    with pytest.raises(ValueError, match="factor"):
        PollingPolicy(factor=0.5)
