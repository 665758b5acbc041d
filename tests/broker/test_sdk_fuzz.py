"""Fuzzing the SDK through the sandbox broker: no input yields a 5xx, no rejection changes state.

spec: Service Broker Errors — "an HTTP status code in the 4xx range MUST result in the Service
Broker's resources being semantically unchanged". Every endpoint gets generated ids, query
strings, headers and bodies (arbitrary JSON, raw bytes, and almost-valid requests with one field
broken). The broker keeps a known state (an instance ``i-ready`` with binding ``b-ready``);
after every rejected request that state — as fetch and last_operation show it — must be the
same, and a rejected PUT must not have created its resource.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_sdk_fuzz_support import serve

from servicebay.broker import BrokerSettings, create_app
from servicebay.examples.sandbox import SERVICE_ID, SandboxBroker, plan_id

USER, PASSWORD = "fuzz-user", "fuzz-password"
SYNC = {"service_id": SERVICE_ID, "plan_id": plan_id("sync")}
KNOWN_INSTANCES = ("i-ready", "i-new")
KNOWN_BINDINGS = ("b-ready", "b-new")
PROVISION = {**SYNC, "organization_guid": "o", "space_guid": "s", "parameters": {"size": 2}}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A client (valid auth + version) for the sandbox served with a fresh SQLite store."""
    db = Path(tmp_path_factory.mktemp("fuzz")) / "broker.db"
    # The fuzz sends dozens of wrong credentials a minute from one address (about a quarter of
    # 150 examples): far past the throttle's default, which would answer the rest 429.
    settings = BrokerSettings(
        username=USER, password=PASSWORD, db=f"sqlite:///{db}", auth_failures=1_000_000
    )
    app = create_app(SandboxBroker(), settings=settings)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        reset(client)
        yield client


def valid_headers() -> dict[str, str]:
    return {
        "X-Broker-API-Version": "2.17",
        "Authorization": httpx.BasicAuth(USER, PASSWORD)._auth_header,
    }


def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return client.request(method, path, headers=valid_headers(), **kwargs)


PLANS = [plan_id(name) for name in ("sync", "param", "unbindable", "rotatable")]


def delete_everywhere(client: httpx.Client, path: str) -> None:
    """Delete ``path`` whichever sandbox plan it was created on."""
    for plan in PLANS:
        answer = call(client, "DELETE", path, params={"service_id": SERVICE_ID, "plan_id": plan})
        if answer.status_code in (200, 410):
            return


def reset(
    client: httpx.Client, instances: tuple[str, ...] = (), bindings: tuple[str, ...] = ()
) -> None:
    """Back to the known state: i-ready (sync) with binding b-ready; nothing else."""
    for instance in KNOWN_INSTANCES + instances:
        for binding in KNOWN_BINDINGS + bindings:
            delete_everywhere(
                client, f"/v2/service_instances/{instance}/service_bindings/{binding}"
            )
    for instance in ("i-new", *instances):
        delete_everywhere(client, f"/v2/service_instances/{instance}")
    if call(client, "PUT", "/v2/service_instances/i-ready", json=PROVISION).status_code == 409:
        call(client, "DELETE", "/v2/service_instances/i-ready", params=SYNC)
        call(client, "PUT", "/v2/service_instances/i-ready", json=PROVISION)
    bound = call(client, "PUT", "/v2/service_instances/i-ready/service_bindings/b-ready", json=SYNC)
    assert bound.status_code in (200, 201), bound.text


def snapshot(client: httpx.Client) -> list[tuple[str, int, str]]:
    """What a platform can observe of the known resources."""
    seen = []
    for instance in KNOWN_INSTANCES:
        base = f"/v2/service_instances/{instance}"
        paths = [base, base + "/last_operation"]
        paths += [f"{base}/service_bindings/{b}" for b in KNOWN_BINDINGS]
        for path in paths:
            answer = call(client, "GET", path, params=SYNC)
            seen.append((path, answer.status_code, answer.text))
    return seen


# -- strategies ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
ids = st.sampled_from(KNOWN_INSTANCES + KNOWN_BINDINGS) | st.text(max_size=30)
id_values = st.sampled_from(
    [SERVICE_ID, plan_id("sync"), plan_id("param"), plan_id("unbindable"), plan_id("rotatable"), ""]
) | st.text(max_size=12)
safe_parameters = st.dictionaries(
    st.sampled_from(["size", "name", "secret", "delay_seconds", "x"]), json_values, max_size=4
).filter(lambda p: not p.get("fail"))


@st.composite
def almost_valid(draw: st.DrawFn) -> dict[str, Any]:
    """A valid provision/bind body with one field broken, dropped or replaced."""
    body: dict[str, Any] = {**PROVISION, "app_guid": "app", "bind_resource": {"app_guid": "app"}}
    body["parameters"] = draw(safe_parameters)
    extra = ["context", "maintenance_info", "previous_values", "predecessor_binding_id", "x-ext"]
    field = draw(st.sampled_from([*sorted(body), *extra]))
    action = draw(st.sampled_from(["drop", "replace", "id"]))
    if action == "drop":
        body.pop(field, None)
    elif action == "id":
        body[field] = draw(id_values)
    else:
        body[field] = draw(json_values)
    if isinstance(body.get("parameters"), dict) and body["parameters"].get("fail"):
        body["parameters"]["fail"] = False
    return body


# JSON text Python's encoder never writes: numbers beyond a double's range or too long to
# convert, surrogate escapes (paired, lone, as keys), beside each other (review F12).
raw_tokens = st.sampled_from(
    ["1e999", "-1e999", "1e-999", "9" * 5000, '"\\ud83d\\ude00"', '"\\ud800"', '"\\udfff x"']
)


@st.composite
def spliced(draw: st.DrawFn) -> bytes:
    """An almost valid body whose parameters hold raw JSON tokens under generated names."""
    body = draw(almost_valid())
    tokens = draw(st.lists(raw_tokens, min_size=1, max_size=3))
    inner = ", ".join(f'"k{i}": {token}' for i, token in enumerate(tokens))
    if draw(st.booleans()):
        inner += ', "\\ud83d\\ude00": 1'
    text = json.dumps({**body, "parameters": "\x00placeholder"})
    return text.replace(json.dumps("\x00placeholder"), "{" + inner + "}").encode()


bodies = (
    st.none()
    | almost_valid().map(lambda b: ("json", b))
    | spliced().map(lambda b: ("raw", b))
    | json_values.filter(lambda v: not (isinstance(v, dict) and v.get("fail"))).map(
        lambda v: ("json", v)
    )
    | st.binary(max_size=64).map(lambda b: ("raw", b))
)
queries = st.sampled_from([SYNC, {**SYNC, "accepts_incomplete": "true"}]) | st.dictionaries(
    st.sampled_from(["service_id", "plan_id", "accepts_incomplete", "operation"]),
    id_values | st.sampled_from(["true", "false"]),
    max_size=4,
)
# Header values as HTTP allows them to be sent (no surrounding whitespace).
printable = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30).map(
    str.strip
)
# Mostly valid version and auth, so most requests get past them into validation and lifecycle.
bad_versions = st.sampled_from([None, "2.13", "2.12", "3.0", "1.0", ""]) | printable
versions = st.integers(0, 9).flatmap(lambda n: st.just("2.17") if n < 8 else bad_versions)
auths = st.sampled_from(["valid"] * 8 + ["none", "wrong", "garbage", "bearer"])
identities = st.none() | printable | st.just("cloudfoundry eyJ1c2VyX2lkIjogIngifQ==")
ENDPOINTS = [
    ("GET", "/v2/catalog"),
    ("PUT", "/v2/service_instances/{i}"),
    ("PATCH", "/v2/service_instances/{i}"),
    ("DELETE", "/v2/service_instances/{i}"),
    ("GET", "/v2/service_instances/{i}"),
    ("GET", "/v2/service_instances/{i}/last_operation"),
    ("PUT", "/v2/service_instances/{i}/service_bindings/{b}"),
    ("DELETE", "/v2/service_instances/{i}/service_bindings/{b}"),
    ("GET", "/v2/service_instances/{i}/service_bindings/{b}"),
    ("GET", "/v2/service_instances/{i}/service_bindings/{b}/last_operation"),
]


def headers_for(version: str | None, auth: str, identity: str | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if version is not None:
        headers["X-Broker-API-Version"] = version
    headers["Authorization"] = {
        "valid": httpx.BasicAuth(USER, PASSWORD)._auth_header,
        "wrong": httpx.BasicAuth(USER, "nope")._auth_header,
        "garbage": "Basic %%%not-base64",
        "bearer": "Bearer some-token",
        "none": "",
    }[auth]
    if not headers["Authorization"]:
        del headers["Authorization"]
    if identity is not None:
        headers["X-Broker-API-Originating-Identity"] = identity
    return headers


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    endpoint=st.sampled_from(ENDPOINTS),
    instance=ids,
    binding=ids,
    query=queries,
    body=bodies,
    version=versions,
    auth=auths,
    identity=identities,
)
def test_no_request_yields_5xx_and_rejections_change_nothing(
    broker: httpx.Client,
    endpoint: tuple[str, str],
    instance: str,
    binding: str,
    query: dict[str, str],
    body: tuple[str, Any] | None,
    version: str | None,
    auth: str,
    identity: str | None,
) -> None:
    """Any request: status < 500; if rejected (4xx), observable state is unchanged."""
    method, template = endpoint
    path = template.format(i=quote(instance, safe=""), b=quote(binding, safe=""))
    before = snapshot(broker)
    kwargs: dict[str, Any] = {"params": query, "headers": headers_for(version, auth, identity)}
    if body is not None:
        kind, value = body
        # Encoded here, not by httpx: Python's json writes Infinity/NaN, which a broker must
        # refuse (they are not JSON), while httpx would refuse to send them at all.
        kwargs["content"] = json.dumps(value).encode() if kind == "json" else value
        kwargs["headers"]["Content-Type"] = "application/json"
    answer = broker.request(method, path, **kwargs)
    event(f"{method} {template.split('/')[-1]} -> {answer.status_code}")
    assert answer.status_code < 500, (method, path, answer.status_code, answer.text)
    if answer.status_code >= 400:
        assert snapshot(broker) == before, (method, path, answer.status_code, answer.text)
        if method == "PUT" and instance not in KNOWN_INSTANCES:
            gone = call(
                broker, "DELETE", f"/v2/service_instances/{quote(instance, safe='')}", params=SYNC
            )
            assert gone.status_code in (400, 404, 405, 410), (path, gone.status_code)
    else:
        reset(broker, (quote(instance, safe=""),), (quote(binding, safe=""),))
