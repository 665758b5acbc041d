"""Idempotency invariants under any sequence of requests, replayed or reordered (hypothesis).

A model of what the broker must hold — instances with their plan and parameters, bindings with
the credentials first handed out — is checked against the sandbox broker after every step:

- provision: new id → 201; same request again → 200 with the same body; different → 409;
- bind: new → 201; same again → 200 with the *same credentials*; different → 409;
- unbind / deprovision: known → 200; unknown or already deleted → 410;
- any replay of the previous request answers as the spec says for a repeat;
- what fetch shows always equals the model (no lost, extra or changed records).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from test_sdk_fuzz_support import serve

from servicebay.broker import BrokerSettings, create_app
from servicebay.examples.sandbox import SERVICE_ID, SandboxBroker, plan_id

USER, PASSWORD = "prop-user", "prop-password"
INSTANCES = ("i1", "i2", "i3")
BINDINGS = ("b1", "b2")
PLANS = ("sync", "param", "rotatable")
PARAMETERS = ({"size": 2}, {"size": 3})


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A client (auth + version preset) for the sandbox on a fresh SQLite store."""
    db = Path(tmp_path_factory.mktemp("props")) / "broker.db"
    settings_ = BrokerSettings(username=USER, password=PASSWORD, db=f"sqlite:///{db}")
    with (
        serve(create_app(SandboxBroker(), settings=settings_)) as url,
        httpx.Client(
            base_url=url,
            auth=(USER, PASSWORD),
            headers={"X-Broker-API-Version": "2.17"},
            timeout=30,
        ) as http,
    ):
        yield http


def ids(plan: str) -> dict[str, str]:
    return {"service_id": SERVICE_ID, "plan_id": plan_id(plan)}


class Lifecycle(RuleBasedStateMachine):
    """One run: its own id prefix, a model of the records, the last request for replays."""

    http: httpx.Client

    def __init__(self) -> None:
        super().__init__()
        self.prefix = uuid.uuid4().hex[:8]
        self.instances: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {}
        self.updated: set[str] = set()
        self.bindings: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]] = {}
        self.last: tuple[str, str, dict[str, Any]] | None = None
        self.last_answer: httpx.Response | None = None

    def path(self, instance: str, binding: str | None = None) -> str:
        base = f"/v2/service_instances/{self.prefix}-{instance}"
        return base if binding is None else f"{base}/service_bindings/{binding}"

    def plan_of(self, instance: str) -> str:
        return self.instances[instance][0] if instance in self.instances else "sync"

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        answer = self.http.request(method, path, **kwargs)
        assert answer.status_code < 500, answer.text
        self.last, self.last_answer = (method, path, kwargs), answer
        return answer

    @rule(
        instance=st.sampled_from(INSTANCES),
        plan=st.sampled_from(PLANS),
        parameters=st.sampled_from(PARAMETERS),
    )
    def provision(self, instance: str, plan: str, parameters: dict[str, Any]) -> None:
        body = {**ids(plan), "organization_guid": "o", "space_guid": "s", "parameters": parameters}
        answer = self.send("PUT", self.path(instance), json=body)
        known = self.instances.get(instance)
        if known is None:
            assert answer.status_code == 201, answer.text
            self.instances[instance] = (plan, parameters, answer.json())
        elif instance in self.updated:
            # The spec compares with "the existing Service Instance"; after an update, brokers
            # may compare with the original request or the current state: 200 or 409 are fine.
            assert answer.status_code in (200, 409), answer.text
        elif (known[0], known[1]) == (plan, parameters):
            assert answer.status_code == 200, answer.text
            assert answer.json() == known[2]
        else:
            assert answer.status_code == 409, answer.text

    @rule(instance=st.sampled_from(INSTANCES), parameters=st.sampled_from(PARAMETERS))
    def update(self, instance: str, parameters: dict[str, Any]) -> None:
        plan = self.plan_of(instance)
        body = {"service_id": SERVICE_ID, "parameters": parameters}
        answer = self.send("PATCH", self.path(instance), json=body)
        if instance in self.instances:
            assert answer.status_code == 200, answer.text
            self.updated.add(instance)
            self.instances[instance] = (
                plan,
                {**self.instances[instance][1], **parameters},
                self.instances[instance][2],
            )
        else:
            assert 400 <= answer.status_code < 500, answer.text

    @rule(
        instance=st.sampled_from(INSTANCES),
        binding=st.sampled_from(BINDINGS),
        parameters=st.sampled_from(PARAMETERS),
    )
    def bind(self, instance: str, binding: str, parameters: dict[str, Any]) -> None:
        body = {**ids(self.plan_of(instance)), "app_guid": "app", "parameters": parameters}
        answer = self.send("PUT", self.path(instance, binding), json=body)
        known = self.bindings.get((instance, binding))
        if instance not in self.instances:
            assert 400 <= answer.status_code < 500, answer.text
        elif known is None:
            assert answer.status_code == 201, answer.text
            self.bindings[(instance, binding)] = (parameters, answer.json()["credentials"])
        elif known[0] == parameters:
            assert answer.status_code == 200, answer.text
            assert answer.json()["credentials"] == known[1], "a retried bind changed credentials"
        else:
            assert answer.status_code == 409, answer.text

    @rule(instance=st.sampled_from(INSTANCES), binding=st.sampled_from(BINDINGS))
    def unbind(self, instance: str, binding: str) -> None:
        params = ids(self.plan_of(instance))
        answer = self.send("DELETE", self.path(instance, binding), params=params)
        if (instance, binding) in self.bindings:
            assert answer.status_code == 200, answer.text
            del self.bindings[(instance, binding)]
        else:
            assert answer.status_code in (404, 410), answer.text

    @rule(instance=st.sampled_from(INSTANCES))
    def deprovision(self, instance: str) -> None:
        params = ids(self.plan_of(instance))
        answer = self.send("DELETE", self.path(instance), params=params)
        if instance not in self.instances:
            assert answer.status_code == 410, answer.text
            return
        has_bindings = any(i == instance for i, _ in self.bindings)
        if answer.status_code == 200:
            del self.instances[instance]
            self.updated.discard(instance)
            self.bindings = {k: v for k, v in self.bindings.items() if k[0] != instance}
        else:
            # spec: Deprovisioning — what a broker does with remaining bindings is unspecified;
            # refusing is fine, as long as the refusal changes nothing (checked by the invariant).
            assert has_bindings and 400 <= answer.status_code < 500, answer.text

    @rule()
    def replay(self) -> None:
        """Resend the previous request verbatim: a repeat must answer as a repeat."""
        if self.last is None or self.last_answer is None:
            return
        method, path, kwargs = self.last
        before = self.last_answer
        answer = self.send(method, path, **kwargs)
        if before.status_code == 201:
            assert answer.status_code == 200, answer.text
            assert answer.json() == before.json()
        elif method == "DELETE" and before.status_code == 200:
            assert answer.status_code == 410, answer.text
        elif method == "PUT" and before.status_code == 200:
            assert answer.status_code == 200 and answer.json() == before.json(), answer.text
        elif before.status_code in (409, 410, 404, 400):
            assert answer.status_code == before.status_code, answer.text

    @invariant()
    def fetch_matches_the_model(self) -> None:
        for instance in INSTANCES:
            answer = self.http.get(self.path(instance))
            if instance in self.instances:
                assert answer.status_code == 200, answer.text
                assert answer.json().get("plan_id") in (None, plan_id(self.instances[instance][0]))
            else:
                assert answer.status_code == 404, answer.text
            for binding in BINDINGS:
                fetched = self.http.get(self.path(instance, binding))
                known = self.bindings.get((instance, binding))
                if known is None:
                    assert fetched.status_code == 404, fetched.text
                else:
                    assert fetched.status_code == 200, fetched.text
                    assert fetched.json()["credentials"] == known[1]


def test_idempotency_invariants_hold_for_any_request_sequence(client: httpx.Client) -> None:
    """Run the state machine against one served sandbox (each run uses fresh ids)."""
    Lifecycle.http = client
    Lifecycle.TestCase.settings = settings(
        max_examples=30,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    Lifecycle.TestCase().runTest()
