"""Property-based tests of the client's invariants (hypothesis)."""

import asyncio
import json
from collections.abc import Coroutine
from typing import Any

import httpx
from client_fakes import FakeBroker, FakeClock, make_client, reply
from hypothesis import given, settings
from hypothesis import strategies as st

from servicebay import osb
from servicebay.client import (
    BrokerError,
    ClientError,
    OrphanMitigation,
    Outcome,
    PollingPolicy,
    PollingTimedOut,
    RequestKind,
    orphan_mitigation,
)

K = RequestKind
statuses = st.none() | st.integers(100, 599)


@given(
    st.sampled_from(list(RequestKind)),
    statuses,
    st.booleans(),
    st.sampled_from([*osb.OperationState, None]),
)
def test_mitigation_only_ever_targets_what_the_call_creates(
    kind: RequestKind, status: int | None, body_ok: bool, state: osb.OperationState | None
) -> None:
    """Instance calls may only mitigate instances, binding calls bindings, others nothing;
    4xx, update and reads never mitigate."""
    result = orphan_mitigation(kind, status, body_ok, state=state)
    if kind in (K.PROVISION, K.DEPROVISION):
        assert result in (OrphanMitigation.NONE, OrphanMitigation.INSTANCE)
    elif kind in (K.BIND, K.UNBIND):
        assert result in (OrphanMitigation.NONE, OrphanMitigation.BINDING)
    else:
        assert result is OrphanMitigation.NONE
    if status is not None and 400 <= status < 500:
        assert result is OrphanMitigation.NONE
    if status in (200, 201, 202) and body_ok and state is not osb.OperationState.FAILED:
        assert result is OrphanMitigation.NONE


retry_afters = st.lists(st.none() | st.integers(0, 500), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(retry_afters, st.integers(1, 600), st.floats(0.1, 5), st.floats(1.0, 3.0))
def test_polling_never_outlasts_the_maximum_polling_duration(
    hints: list[int | None], limit: int, initial: float, factor: float
) -> None:
    """Whatever Retry-After the broker sends, polling stops within maximum_polling_duration."""
    busy = {"state": "in progress"}
    answers = [
        reply(200, busy) if h is None else reply(200, busy, Retry_After=str(h)) for h in hints
    ]
    broker = FakeBroker().on("GET", "/v2/service_instances/i/last_operation", *answers)
    clock = FakeClock()
    start = clock.now
    policy = PollingPolicy(initial=initial, factor=factor, maximum=30)

    async def scenario() -> None:
        async with make_client(broker, clock, polling=policy) as client:
            try:
                await client.poll("i", maximum_polling_duration=limit)
            except PollingTimedOut:
                return
            raise AssertionError("an in-progress operation ended polling")

    asyncio.run(scenario())
    assert clock.now - start <= limit + 1e-9
    assert all(s >= 0 for s in clock.sleeps)


bodies = st.one_of(
    st.binary(max_size=40),
    st.dictionaries(
        st.sampled_from(["operation", "dashboard_url", "credentials", "state", "error", "x"]),
        st.none() | st.integers() | st.text(max_size=5) | st.lists(st.integers(), max_size=2),
        max_size=4,
    ).map(lambda d: json.dumps(d).encode()),
)


@settings(max_examples=80, deadline=None)
@given(st.integers(100, 599).filter(lambda s: s not in (101,)), bodies)
def test_any_broker_answer_is_an_outcome_or_a_client_error(status: int, body: bytes) -> None:
    """Provision and bind turn any status and body into an Outcome or a ClientError whose
    mitigation agrees with the table; nothing else escapes."""
    broker = (
        FakeBroker()
        .on("PUT", "/v2/service_instances/i", reply(status, raw=body))
        .on("PUT", "/v2/service_instances/i/service_bindings/b", reply(status, raw=body))
    )

    async def scenario() -> None:
        async with make_client(broker) as client:
            calls: list[tuple[RequestKind, Coroutine[Any, Any, Outcome[Any]]]] = [
                (
                    K.PROVISION,
                    client.provision("i", osb.ProvisionRequest(service_id="s", plan_id="p")),
                ),
                (K.BIND, client.bind("i", "b", osb.BindRequest(service_id="s", plan_id="p"))),
            ]
            for kind, call in calls:
                try:
                    outcome = await call
                except BrokerError as exc:
                    assert exc.mitigation is orphan_mitigation(kind, status)
                except ClientError as exc:
                    assert exc.mitigation in (
                        orphan_mitigation(kind, status),
                        orphan_mitigation(kind, status, body_ok=False),
                    )
                else:
                    assert outcome.status == status and status in (200, 201, 202)

    try:
        asyncio.run(scenario())
    except httpx.HTTPError as exc:  # pragma: no cover - would be a bug
        raise AssertionError(f"a raw httpx error escaped: {exc!r}") from exc
