"""A broker that quotes the platform's credentials back never gets them stored or shown.

What a broker says in an error (``description``) becomes the platform operation's description,
kept in clear in the database and shown by the API and the CLI; so the platform takes its own
credentials for that broker out of it first.
"""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from servicebay.platform.broker_link import BrokerEndpoint, BrokerLink

PASSWORD = "pl4tform-to-broker-pw"
TOKEN = "pl4tform-bearer-token-0123"


def _echoing(status: int) -> httpx.MockTransport:
    """A broker that answers ``status`` quoting the Authorization header it was sent."""

    def handle(request: httpx.Request) -> httpx.Response:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        decoded = base64.b64decode(value).decode() if scheme == "Basic" else value
        text = f"login failed for {decoded!r} (header {header})"
        if request.url.path.endswith("/last_operation"):
            return httpx.Response(200, json={"state": "failed", "description": text})
        return httpx.Response(status, json={"error": "Boom", "description": text})

    return httpx.MockTransport(handle)


ENDPOINTS = [
    BrokerEndpoint("http://broker.test", username="platform", password=PASSWORD),
    BrokerEndpoint("http://broker.test", bearer_token=TOKEN),
]


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=["basic", "bearer"])
@pytest.mark.parametrize("status", [400, 401, 422, 500, 503])
async def test_error_descriptions_never_quote_the_brokers_credentials(
    endpoint: BrokerEndpoint, status: int
) -> None:
    """Every call's error description has the endpoint's secrets masked, whatever the status."""
    link = BrokerLink(timeout=5, transport=_echoing(status))
    try:
        replies = [
            (await link.catalog(endpoint))[1],
            await link.provision(endpoint, "i1", {"service_id": "s", "plan_id": "p"}, "alice"),
            await link.bind(endpoint, "i1", "b1", {"service_id": "s", "plan_id": "p"}, "alice"),
            await link.unbind(endpoint, "i1", "b1", "s", "p", "alice"),
            await link.last_operation(endpoint, "i1", None, {}, "alice"),
        ]
    finally:
        await link.close()
    for reply in replies:
        shown = reply.description + json.dumps(reply.body)
        assert "login failed for" in shown  # the broker's words are kept...
        for secret in (PASSWORD, TOKEN, "platform:" + PASSWORD):
            assert secret not in shown  # ...but not the credentials
        basic = base64.b64encode(f"platform:{PASSWORD}".encode()).decode()
        assert basic not in shown
