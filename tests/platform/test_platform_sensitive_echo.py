"""The fake broker quoting sensitive parameters back where the broker's words are kept: a failed
``last_operation`` and a refused bind. The value is masked in every stored row and every answer,
on SQLite and PostgreSQL (``test_platform_echoed_parameters`` covers refused provisions and
updates)."""

from __future__ import annotations

from typing import Any

from platform_fake_broker import FakeBroker

from conftest import PlatformUnderTest, assert_masked

SECRET = "s3cr3t-Pa55-7f1c-\u00e9t\u00e9"  # a broker's JSON may write it as \u00e9
TOKEN = "bind-t0ken-Q9z8"


async def _provision(platform: PlatformUnderTest, **parameters: Any) -> dict[str, Any]:
    body = {"service": "fake", "plan": "param", "name": "p1", "parameters": parameters}
    response = await platform.client.post("/api/v1/instances", json=body)
    assert response.status_code == 202, response.text
    return await platform.wait(response.json()["operation"])


async def test_failed_last_operation_quoting_a_sensitive_value_is_stored_masked(
    platform: PlatformUnderTest, fake: FakeBroker, db_url: str
) -> None:
    """An accepted provision failing in last_operation with its parameters quoted: the
    description keeps the broker's words, the writeOnly value masked."""
    await platform.register_fake()
    fake.quote_parameters = "async"
    op = await _provision(platform, secret=SECRET, size=3)
    assert op["state"] == "failed"
    assert "cannot use" in op["description"]
    assert '"size": 3' in op["description"]  # what is not sensitive stays readable
    assert '"secret": "***"' in op["description"]
    await assert_masked(platform, db_url, SECRET)


async def test_refused_bind_quoting_a_sensitive_value_is_stored_masked(
    platform: PlatformUnderTest, fake: FakeBroker, db_url: str
) -> None:
    """A bind refused with its x-sensitive parameter quoted: masked in the binding's operation."""
    await platform.register_fake()
    assert (await _provision(platform))["state"] == "succeeded"
    fake.quote_parameters = "reject"
    response = await platform.client.post(
        "/api/v1/bindings",
        json={"instance": "p1", "kind": "key", "name": "k1", "parameters": {"token": TOKEN}},
    )
    assert response.status_code == 202, response.text
    op = await platform.wait(response.json()["operation"])
    assert op["state"] == "failed"
    assert "refused parameters" in op["description"]
    assert '"token": "***"' in op["description"]
    await assert_masked(platform, db_url, TOKEN)
