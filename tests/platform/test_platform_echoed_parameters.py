"""A broker that quotes a sensitive parameter back in an error never gets it stored or shown.

What a broker says in an error becomes the operation's description, kept in the database and
shown by the API (operations, the instance's last operation, the audit trail); a value marked
``writeOnly``/``x-sensitive`` that the platform sent is masked there as ``***``, like the
platform's own credentials for that broker."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from platform_fake_broker import FakeBroker

from conftest import (
    PlatformUnderTest,
    downgraded,
    platform_settings,
    running_platform,
    stored_text,
)
from servicebay.platform.services.instances import secret_values
from servicebay.platform.store import tables

SECRET = 'hunter2 "quoted" ünï'
ESCAPED = json.dumps(SECRET)[1:-1]  # as a broker quoting JSON would write it


class EchoingBroker(httpx.AsyncBaseTransport):
    """The fake broker, except that a request carrying a ``secret`` parameter is refused (400)
    with an error quoting every parameter, as sent and as JSON."""

    def __init__(self, fake: FakeBroker) -> None:
        self.inner = httpx.ASGITransport(app=fake.app())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content or b"{}")
        parameters = body.get("parameters") or {}
        if "secret" in parameters:
            text = f"{parameters['secret']} is not allowed in {json.dumps(parameters)}"
            return httpx.Response(400, json={"error": "BadParameters", "description": text})
        return await self.inner.handle_async_request(request)


@pytest.fixture
async def platform(
    tmp_path: Path, db_url: str, fake: FakeBroker
) -> AsyncIterator[PlatformUnderTest]:
    """The platform talking to the fake broker through ``EchoingBroker``."""
    settings = platform_settings(tmp_path, db_url)
    async with running_platform(settings, EchoingBroker(fake)) as platform:
        yield platform


async def _shown(platform: PlatformUnderTest) -> str:
    paths = ["/api/v1/operations", "/api/v1/instances", "/api/v1/audit", "/api/v1/instances/p"]
    return "".join([(await platform.client.get(path)).text for path in paths])


async def test_sensitive_parameters_a_broker_echoes_are_masked(
    platform: PlatformUnderTest, db_url: str
) -> None:
    """A provision and an update refused with the sensitive value quoted (as sent and JSON
    escaped) fail with the broker's words kept, the value masked, in the database and in every
    answer; the other parameters stay as the broker quoted them."""
    await platform.register_fake()
    c = platform.client
    r = await c.post(
        "/api/v1/instances",
        json={"service": "fake", "plan": "param", "name": "p", "parameters": {"secret": SECRET}},
    )
    assert r.status_code == 202, r.text
    failed = await platform.wait(r.json()["operation"])
    assert failed["state"] == "failed"
    assert failed["description"].startswith("broker answered 400 (BadParameters: *** is not ")
    assert '"size": 1' in failed["description"]  # what is not sensitive is kept

    r = await c.post("/api/v1/instances", json={"service": "fake", "plan": "param", "name": "q"})
    assert r.status_code == 202, r.text
    assert (await platform.wait(r.json()["operation"]))["state"] == "succeeded"
    r = await c.patch("/api/v1/instances/q", json={"parameters": {"secret": SECRET, "size": 2}})
    assert r.status_code == 202, r.text
    failed = await platform.wait(r.json()["operation"])
    assert failed["state"] == "failed" and "***" in failed["description"]

    for text in (stored_text(db_url), await _shown(platform)):
        assert SECRET not in text and ESCAPED not in text
        assert "hunter2" not in text


async def test_parameters_not_marked_sensitive_are_quoted_as_given(
    platform: PlatformUnderTest,
) -> None:
    """Only values the plan marks sensitive are masked: a broker quoting others keeps its words."""
    await platform.register_fake()
    r = await platform.client.post(
        "/api/v1/instances",
        json={"service": "fake", "plan": "sync", "name": "s", "parameters": {"secret": "plain"}},
    )
    assert r.status_code == 202, r.text
    failed = await platform.wait(r.json()["operation"])
    assert failed["description"] == (
        'broker answered 400 (BadParameters: plain is not allowed in {"secret": "plain"})'
    )


@pytest.mark.parametrize(
    ("parameters", "shown", "masked"),
    [
        ({"db": {"user": "u", "pw": "pw-1"}}, {"db": "***"}, ["u", "pw-1"]),
        ({"keys": ["k1", "k2"], "n": 3}, {"keys": ["***", "***"], "n": 3}, ["k1", "k2"]),
        (
            {"pin": 123456, "short": 7, "flag": True},
            {"pin": "***", "short": "***", "flag": "***"},
            ["123456"],
        ),
        ({"quote": 'a"b'}, {"quote": "***"}, ['a"b', 'a\\"b']),
        ({"plain": "x"}, {"plain": "x"}, []),
    ],
    ids=["object", "array items", "numbers", "json escape", "not sensitive"],
)
def test_secret_values_are_what_the_shown_copy_hides(
    parameters: dict[str, object], shown: dict[str, object], masked: list[str]
) -> None:
    """Every value the redacted copy hides, whole objects and array items included; numbers
    only from four characters on, booleans never."""
    assert secret_values(parameters, shown) == masked


def _record_as_before_masking(db_url: str, cipher: Any) -> None:
    """Down to 0004, then make the operations look as the platform wrote them before it masked
    sensitive parameters: requests without ``secret_values``, the broker's echo in clear in
    each operation's description and audit entry and in a purge-like evidence."""
    o, a = tables.operations, tables.audit
    with downgraded(db_url, "0004", cipher) as conn:
        for key, kind, sealed in conn.execute(sa.select(o.c.id, o.c.kind, o.c.request)).all():
            request = cipher.open(sealed) or {}
            sent = request.pop("secret_values", None)
            if sent is None:
                continue
            echo = f"broker answered 400 (BadParameters: {SECRET} is not allowed in {ESCAPED})"
            values: dict[str, Any] = {"request": cipher.seal(request), "description": echo}
            if kind == "provision":
                values["evidence"] = {"instance": {"last_operation": {"description": echo}}}
            conn.execute(sa.update(o).where(o.c.id == key).values(values))
            conn.execute(
                sa.update(a).where(a.c.operation_id == key).values(details={"description": echo})
            )


async def test_start_masks_sensitive_parameters_echoed_before_masking(
    tmp_path: Path, db_url: str, fake: FakeBroker
) -> None:
    """Operations recorded before the masking, with the sensitive value a broker quoted back in
    clear (a provision's and an update's), show it as *** once the platform has started on the
    database again (migration 0005), in the database and in every answer."""
    settings = platform_settings(tmp_path, db_url)
    async with running_platform(settings, EchoingBroker(fake)) as platform:
        await platform.register_fake()
        c = platform.client
        body = {"service": "fake", "plan": "param", "name": "p", "parameters": {"secret": SECRET}}
        assert (
            await platform.wait((await c.post("/api/v1/instances", json=body)).json()["operation"])
        )["state"] == "failed"
        body = {"service": "fake", "plan": "param", "name": "q"}
        await platform.wait((await c.post("/api/v1/instances", json=body)).json()["operation"])
        r = await c.patch("/api/v1/instances/q", json={"parameters": {"secret": SECRET}})
        assert (await platform.wait(r.json()["operation"]))["state"] == "failed"
        cipher = platform.app.state.platform.cipher
    _record_as_before_masking(db_url, cipher)
    assert "hunter2" in stored_text(db_url)

    async with running_platform(settings, EchoingBroker(fake)) as platform:
        shown = await _shown(platform)
        operations = (await platform.client.get("/api/v1/operations")).json()
    for text in (stored_text(db_url), shown):
        assert "hunter2" not in text
    echoed = [o for o in operations["items"] if "BadParameters" in (o["description"] or "")]
    assert len(echoed) == 2
    assert all(
        o["description"].startswith("broker answered 400 (BadParameters: *** is") for o in echoed
    )
