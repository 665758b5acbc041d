"""Bad input on every endpoint gets a 4xx with a stable code and a message, and changes nothing;
a missing or wrong token gets 401."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from platform_fake_broker import FakeBroker

from conftest import PlatformUnderTest, platform_settings, running_platform
from servicebay.platform.api.openapi import ROUTES


def _concrete(path: str) -> str:
    return (
        path.replace("{name}", "x1")
        .replace("{service}", "fake")
        .replace("{app}", "web")
        .replace("{id}", "00000000-0000-0000-0000-000000000000")
    )


async def _snapshot(platform: PlatformUnderTest) -> dict[str, Any]:
    c = platform.client
    return {
        "brokers": (await c.get("/api/v1/brokers")).json(),
        "instances": (await c.get("/api/v1/instances", params={"namespace": "*"})).json(),
        "bindings": (await c.get("/api/v1/bindings")).json(),
        "namespaces": (await c.get("/api/v1/namespaces")).json(),
        "operations": len((await c.get("/api/v1/operations")).json()["items"]),
    }


async def test_every_route_but_health_and_openapi_needs_a_token(
    tmp_path: Path, db_url: str, fake: FakeBroker
) -> None:
    """No token or a wrong one → 401 unauthorized on every route of the table."""
    # A wrong token on each of ~30 routes in a row from one address is past the failed-token
    # throttle's default (10 a minute), which would answer the rest 429: raised here only.
    settings = platform_settings(tmp_path, db_url, auth_failures=1000)
    async with running_platform(settings, httpx.ASGITransport(app=fake.app())) as platform:
        for method, path, *_ in ROUTES:
            if path == "/healthz":
                continue
            for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
                url = "/api/v1" + _concrete(path)
                r = await platform.client.request(method, url, headers=headers)
                assert r.status_code == 401, (method, path, r.text)
                assert r.json()["error"] == "unauthorized"
        healthz = await platform.client.get("/api/v1/healthz", headers={"Authorization": ""})
        assert healthz.is_success
        doc = await platform.client.get("/api/v1/openapi.json", headers={"Authorization": ""})
        assert doc.json()["openapi"].startswith("3.")


BAD_BODIES = [
    b"{not json",
    b"[1, 2]",
    b'{"unknown_field": 1}',
    b'{"name": 5}',
]


@pytest.mark.parametrize("body", BAD_BODIES)
async def test_malformed_bodies_are_refused_and_change_nothing(
    platform: PlatformUnderTest, body: bytes
) -> None:
    """Every route with a body answers 400 bad_request to malformed or mistyped JSON."""
    await platform.register_fake()
    before = await _snapshot(platform)
    for method, path, _handler, _summary, model, _status in ROUTES:
        if model is None:
            continue
        r = await platform.client.request(
            method,
            "/api/v1" + _concrete(path),
            content=body,
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 400, (method, path, r.text)
        assert r.json()["error"] == "bad_request" and r.json()["message"]
    assert await _snapshot(platform) == before


async def test_unknown_names_are_404_with_their_kind(platform: PlatformUnderTest) -> None:
    """Unknown broker/instance/binding/namespace/service/operation → <kind>_not_found."""
    await platform.register_fake()
    c = platform.client
    cases = [
        ("GET", "/api/v1/brokers/nope", None, "broker_not_found"),
        ("POST", "/api/v1/brokers/nope/refresh", None, "broker_not_found"),
        ("DELETE", "/api/v1/brokers/nope", None, "broker_not_found"),
        ("GET", "/api/v1/instances/nope", None, "instance_not_found"),
        ("PATCH", "/api/v1/instances/nope", {"parameters": {}}, "instance_not_found"),
        ("DELETE", "/api/v1/instances/nope", None, "instance_not_found"),
        ("POST", "/api/v1/instances/nope/purge", None, "instance_not_found"),
        ("GET", "/api/v1/bindings/nope", None, "binding_not_found"),
        ("DELETE", "/api/v1/bindings/nope", None, "binding_not_found"),
        ("POST", "/api/v1/bindings", {"instance": "nope", "app": "web"}, "instance_not_found"),
        ("GET", "/api/v1/namespaces/nope", None, "namespace_not_found"),
        ("GET", "/api/v1/instances?namespace=nope", None, "namespace_not_found"),
        ("GET", "/api/v1/marketplace/nope", None, "service_not_found"),
        ("GET", "/api/v1/operations/nope", None, "operation_not_found"),
        (
            "POST",
            "/api/v1/instances",
            {"service": "nope", "plan": "sync", "name": "a"},
            "service_not_found",
        ),
        (
            "POST",
            "/api/v1/instances",
            {"service": "fake", "plan": "nope", "name": "a"},
            "plan_not_found",
        ),
        (
            "POST",
            "/api/v1/instances",
            {"service": "fake", "plan": "sync", "name": "a", "namespace": "nope"},
            "namespace_not_found",
        ),
        ("GET", "/api/v1/no/such/route", None, "not_found"),
    ]
    before = await _snapshot(platform)
    for method, url, body, code in cases:
        r = await c.request(method, url, json=body)
        assert r.status_code == 404, (method, url, r.text)
        assert r.json()["error"] == code, (method, url, r.json())
        assert r.json()["message"]
    assert await _snapshot(platform) == before


async def test_bad_names_and_query_values_are_400(platform: PlatformUnderTest) -> None:
    """Names that are not DNS labels, bad limits and waits → 400 bad_request."""
    c = platform.client
    for method, url, body in [
        ("POST", "/api/v1/instances", {"service": "fake", "plan": "sync", "name": "Bad_Name"}),
        ("GET", "/api/v1/instances/UPPER", None),
        ("GET", "/api/v1/instances?limit=0", None),
        ("GET", "/api/v1/instances?limit=abc", None),
        ("GET", "/api/v1/operations/x?wait=999", None),
        ("GET", "/api/v1/bindings?kind=other", None),
        ("POST", "/api/v1/bindings", {"instance": "a", "kind": "key", "app": "web"}),
        ("POST", "/api/v1/bindings", {"instance": "a", "kind": "app"}),
        ("POST", "/api/v1/brokers", {"name": "b", "url": "ftp://x"}),
        ("POST", "/api/v1/namespaces", {"name": "n", "visible_plans": ["nope"]}),
        ("POST", "/api/v1/namespaces", {"name": "n", "constraints": {"s": {"type": 5}}}),
        ("DELETE", "/api/v1/namespaces/default", None),
    ]:
        r = await c.request(method, url, json=body)
        assert r.status_code == 400, (method, url, r.text)
        assert r.json()["error"] == "bad_request"


async def test_oversized_body_is_413(platform: PlatformUnderTest) -> None:
    """Bodies over 1 MiB → 413 payload_too_large."""
    big = b'{"name": "' + b"a" * (1024 * 1024 + 10) + b'"}'
    r = await platform.client.post(
        "/api/v1/namespaces", content=big, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"


async def test_wrong_method_is_405(platform: PlatformUnderTest) -> None:
    """A known path with an unsupported method → 405 method_not_allowed."""
    r = await platform.client.put("/api/v1/brokers")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


async def test_broker_registration_errors(platform: PlatformUnderTest) -> None:
    """Duplicate name → 409; wrong credentials → 502 broker_error; unreachable → 502."""
    await platform.register_fake()
    c = platform.client
    r = await c.post("/api/v1/brokers", json={"name": "fake", "url": "http://fake-broker.test"})
    assert r.status_code == 409 and r.json()["error"] == "broker_exists"
    r = await c.post(
        "/api/v1/brokers",
        json={"name": "other", "url": "http://fake-broker.test", "username": "u", "password": "p"},
    )
    assert r.status_code == 502 and r.json()["error"] == "broker_error"
    assert "401" in r.json()["message"]
    r = await c.post(
        "/api/v1/brokers", json={"name": "another", "url": "http://127.0.0.1:1/", "username": "u"}
    )
    assert r.status_code == 400 and "together" in r.json()["message"]
