"""Every endpoint against a fake broker: wire format of requests, typed outcomes, headers."""

import base64
import json
import uuid

import httpx
import pytest
from client_fakes import FakeBroker, FakeClock, make_client, reply

from servicebay import osb
from servicebay.client import BrokerClient, BrokerError, RequestKind

CATALOG = {
    "services": [
        {
            "id": "svc-1",
            "name": "sandbox",
            "description": "d",
            "bindable": True,
            "plans": [{"id": "plan-1", "name": "sync", "description": "d"}],
        }
    ]
}
INSTANCE = "/v2/service_instances/inst-1"
BINDING = INSTANCE + "/service_bindings/bind-1"


async def test_every_call_sends_version_auth_and_a_fresh_request_identity() -> None:
    """X-Broker-API-Version 2.17, basic auth and a new UUID request identity on each call."""
    broker = FakeBroker().on("GET", "/v2/catalog", reply(200, CATALOG))
    async with make_client(broker) as client:
        await client.catalog(use_cache=False)
        await client.catalog(use_cache=False)
    ids = []
    for request in broker.requests:
        assert request.headers["X-Broker-API-Version"] == "2.17"
        expected = "Basic " + base64.b64encode(b"admin:s3cret").decode()
        assert request.headers["Authorization"] == expected
        ids.append(request.headers["X-Broker-API-Request-Identity"])
        uuid.UUID(ids[-1])
    assert len(set(ids)) == 2


async def test_bearer_token_is_sent() -> None:
    """A bearer token goes into the Authorization header."""
    broker = FakeBroker().on("GET", "/v2/catalog", reply(200, CATALOG))
    client = make_client(broker, username=None, password=None, bearer_token="tok-123")
    async with client:
        await client.catalog()
    assert broker.requests[0].headers["Authorization"] == "Bearer tok-123"


def test_conflicting_auth_settings_are_refused() -> None:
    """Basic and bearer together, or a username without password, are configuration errors."""
    with pytest.raises(ValueError, match="not both"):
        BrokerClient("http://x", username="a", password="b", bearer_token="c")
    with pytest.raises(ValueError, match="together"):
        BrokerClient("http://x", username="a")


async def test_originating_identity_on_user_calls_not_on_catalog() -> None:
    """The platform user's identity is sent on provision, not on the catalog fetch."""
    identity = osb.OriginatingIdentity(platform="servicebay", value={"username": "ann"})
    broker = (
        FakeBroker()
        .on("GET", "/v2/catalog", reply(200, CATALOG))
        .on("PUT", INSTANCE, reply(201, {}))
    )
    async with make_client(broker, originating_identity=identity) as client:
        await client.catalog()
        await client.provision("inst-1", osb.ProvisionRequest(service_id="svc-1", plan_id="plan-1"))
        other = osb.OriginatingIdentity(platform="servicebay", value={"username": "bob"})
        await client.provision(
            "inst-1", osb.ProvisionRequest(service_id="svc-1", plan_id="plan-1"), identity=other
        )
    catalog_call, first, second = broker.requests
    assert "X-Broker-API-Originating-Identity" not in catalog_call.headers
    sent = osb.OriginatingIdentity.parse(first.headers["X-Broker-API-Originating-Identity"])
    assert sent == identity
    override = osb.OriginatingIdentity.parse(second.headers["X-Broker-API-Originating-Identity"])
    assert override.value == {"username": "bob"}


async def test_provision_sends_body_and_accepts_incomplete() -> None:
    """Provision PUTs the JSON body with accepts_incomplete=true and returns a typed outcome."""
    broker = FakeBroker().on(
        "PUT", INSTANCE, reply(202, {"operation": "op-1", "dashboard_url": "http://dash/1"})
    )
    request = osb.ProvisionRequest(
        service_id="svc-1", plan_id="plan-1", parameters={"size": 2}, context={"platform": "x"}
    )
    async with make_client(broker) as client:
        outcome = await client.provision("inst-1", request)
    sent = broker.requests[0]
    assert sent.url.params["accepts_incomplete"] == "true"
    assert sent.headers["Content-Type"] == "application/json"
    assert json.loads(sent.content) == request.to_wire()
    assert outcome.status == 202 and outcome.is_async
    assert outcome.operation == "op-1"
    assert outcome.body.dashboard_url == "http://dash/1"
    assert outcome.request_id == sent.headers["X-Broker-API-Request-Identity"]


async def test_accepts_incomplete_false_is_left_out() -> None:
    """Without async support the query parameter is not sent."""
    broker = FakeBroker().on("PUT", INSTANCE, reply(201, {}))
    async with make_client(broker) as client:
        outcome = await client.provision(
            "inst-1", osb.ProvisionRequest(service_id="s", plan_id="p"), accepts_incomplete=False
        )
    assert "accepts_incomplete" not in broker.requests[0].url.params
    assert outcome.status == 201 and not outcome.is_async and outcome.operation is None


async def test_ids_are_percent_encoded_in_paths() -> None:
    """Ids outside the unreserved set are percent-encoded (spec "URL Properties")."""
    broker = FakeBroker().on("PUT", "/v2/service_instances/a%2Fb%20c", reply(201, {}))
    async with make_client(broker) as client:
        await client.provision("a/b c", osb.ProvisionRequest(service_id="s", plan_id="p"))
    assert broker.requests[0].url.raw_path.startswith(b"/v2/service_instances/a%2Fb%20c?")


async def test_update_deprovision_and_their_outcomes() -> None:
    """Update PATCHes; deprovision DELETEs with service_id and plan_id; 410 reads as gone."""
    broker = (
        FakeBroker()
        .on("PATCH", INSTANCE, reply(200, {}))
        .on("DELETE", INSTANCE, reply(202, {"operation": "del-1"}), reply(410, {}))
    )
    async with make_client(broker) as client:
        updated = await client.update(
            "inst-1", osb.UpdateRequest(service_id="s", plan_id="p2", parameters={"a": 1})
        )
        first = await client.deprovision("inst-1", "s", "p")
        second = await client.deprovision("inst-1", "s", "p")
    assert updated.status == 200 and updated.body == osb.UpdateResponse()
    assert json.loads(broker.requests[0].content) == {
        "service_id": "s",
        "plan_id": "p2",
        "parameters": {"a": 1},
    }
    delete = broker.requests[1]
    assert dict(delete.url.params) == {
        "service_id": "s",
        "plan_id": "p",
        "accepts_incomplete": "true",
    }
    assert first.is_async and first.operation == "del-1"
    assert second.gone and second.status == 410


async def test_bind_unbind_and_fetches() -> None:
    """Bind returns credentials; fetches pass hints; unbind 200 is a plain success."""
    creds = {"uri": "amqp://u:p@h/v", "password": "p"}
    broker = (
        FakeBroker()
        .on(
            "PUT",
            BINDING,
            reply(201, {"credentials": creds, "endpoints": [{"host": "h", "ports": ["5672"]}]}),
        )
        .on("GET", BINDING, reply(200, {"credentials": creds, "parameters": {"x": 1}}))
        .on("GET", INSTANCE, reply(200, {"service_id": "s", "plan_id": "p", "parameters": {}}))
        .on("DELETE", BINDING, reply(200, {}))
    )
    async with make_client(broker) as client:
        bound = await client.bind(
            "inst-1",
            "bind-1",
            osb.BindRequest(
                service_id="s", plan_id="p", bind_resource=osb.BindResource(app_guid="chat")
            ),
        )
        fetched = await client.fetch_binding("inst-1", "bind-1", "s", "p")
        instance = await client.fetch_instance("inst-1", service_id="s")
        unbound = await client.unbind("inst-1", "bind-1", "s", "p")
    assert bound.status == 201 and bound.body.credentials == creds
    assert bound.body.endpoints == [osb.Endpoint(host="h", ports=["5672"])]
    assert fetched.parameters == {"x": 1}
    assert dict(broker.requests[1].url.params) == {"service_id": "s", "plan_id": "p"}
    assert instance.plan_id == "p"
    assert dict(broker.requests[2].url.params) == {"service_id": "s"}
    assert unbound.status == 200 and not unbound.gone


async def test_last_operation_passes_operation_and_reads_retry_after() -> None:
    """last_operation sends operation and hints, and returns the Retry-After seconds."""
    broker = (
        FakeBroker()
        .on(
            "GET",
            INSTANCE + "/last_operation",
            reply(200, {"state": "in progress", "description": "10%"}, Retry_After="7"),
        )
        .on("GET", BINDING + "/last_operation", reply(200, {"state": "succeeded"}))
    )
    async with make_client(broker) as client:
        answer = await client.last_operation("inst-1", "op 1/2", service_id="s", plan_id="p")
        bound = await client.binding_last_operation("inst-1", "bind-1")
    assert answer.state == "in progress" and answer.retry_after == 7.0
    assert answer.response.description == "10%"
    assert dict(broker.requests[0].url.params) == {
        "service_id": "s",
        "plan_id": "p",
        "operation": "op 1/2",
    }
    assert bound.response.state is osb.OperationState.SUCCEEDED and bound.retry_after is None


async def test_catalog_is_cached_and_revalidated_with_etag() -> None:
    """A 304 to If-None-Match / If-Modified-Since serves the cached catalog."""

    def conditional(request: httpx.Request) -> httpx.Response:
        if request.headers.get("If-None-Match") == '"v1"':
            return httpx.Response(304)
        return reply(200, CATALOG, ETag='"v1"', Last_Modified="Mon, 30 Nov 2026 20:00:00 GMT")

    broker = FakeBroker().on("GET", "/v2/catalog", conditional)
    async with make_client(broker) as client:
        first = await client.catalog()
        second = await client.catalog()
        fresh = await client.catalog(use_cache=False)
    assert first == second == fresh
    assert second is first
    assert "If-None-Match" not in broker.requests[0].headers
    assert broker.requests[1].headers["If-None-Match"] == '"v1"'
    assert broker.requests[1].headers["If-Modified-Since"] == "Mon, 30 Nov 2026 20:00:00 GMT"
    assert "If-None-Match" not in broker.requests[2].headers


async def test_changed_catalog_replaces_the_cache() -> None:
    """A 200 to a conditional request replaces the cached catalog."""
    changed = json.loads(json.dumps(CATALOG))
    changed["services"][0]["description"] = "new"
    broker = FakeBroker().on(
        "GET", "/v2/catalog", reply(200, CATALOG, ETag='"v1"'), reply(200, changed, ETag='"v2"')
    )
    async with make_client(broker) as client:
        await client.catalog()
        catalog = await client.catalog()
        assert catalog.services[0].description == "new"
    assert broker.requests[1].headers["If-None-Match"] == '"v1"'


async def test_base_url_path_prefix_is_kept() -> None:
    """A broker mounted under a path prefix is reached under it."""
    broker = FakeBroker().on("GET", "/brokers/a/v2/catalog", reply(200, CATALOG))
    client = BrokerClient("http://h/brokers/a", transport=broker.transport(), clock=FakeClock())
    async with client:
        await client.catalog()
    assert broker.requests[0].url.path == "/brokers/a/v2/catalog"


async def test_error_body_becomes_the_matching_osb_error() -> None:
    """A 422 AsyncRequired becomes BrokerError wrapping AsyncRequired, no mitigation."""
    broker = FakeBroker().on(
        "PUT", INSTANCE, reply(422, {"error": "AsyncRequired", "description": "needs async"})
    )
    async with make_client(broker) as client:
        with pytest.raises(BrokerError) as info:
            await client.provision(
                "inst-1", osb.ProvisionRequest(service_id="s", plan_id="p"), False
            )
    assert isinstance(info.value.error, osb.AsyncRequired)
    assert info.value.status == 422
    assert info.value.exit_code == osb.AsyncRequired.exit_code
    assert not info.value.orphan_mitigation_needed
    assert "needs async" in str(info.value)


def test_request_kinds_cover_every_endpoint() -> None:
    """Every OSB endpoint has a request kind."""
    assert {k.value for k in RequestKind} == {
        "catalog",
        "provision",
        "update",
        "deprovision",
        "bind",
        "unbind",
        "fetch_instance",
        "fetch_binding",
        "last_operation",
        "binding_last_operation",
    }


async def test_identity_and_context_must_name_the_same_platform() -> None:
    """An identity whose platform differs from context.platform is refused before sending."""
    broker = FakeBroker().on("PUT", INSTANCE, reply(201, {}))
    identity = osb.OriginatingIdentity(platform="servicebay", value={"username": "ann"})
    request = osb.ProvisionRequest(service_id="s", plan_id="p", context={"platform": "kubernetes"})
    async with make_client(broker, originating_identity=identity) as client:
        with pytest.raises(ValueError, match=r"context\.platform"):
            await client.provision("inst-1", request)
        same = request.model_copy(update={"context": {"platform": "servicebay"}})
        assert (await client.provision("inst-1", same)).status == 201
    assert len(broker.requests) == 1


async def test_debug_log_names_the_call_but_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    """Each call is logged at debug with its request identity; no credential appears."""
    creds = {"password": "hunter2-secret"}
    broker = FakeBroker().on("PUT", BINDING, reply(201, {"credentials": creds}))
    caplog.set_level("DEBUG", logger="servicebay.client")
    async with make_client(broker) as client:
        outcome = await client.bind(
            "inst-1", "bind-1", osb.BindRequest(service_id="s", plan_id="p")
        )
    text = caplog.text
    assert outcome.request_id in text and "-> 201" in text
    assert "hunter2-secret" not in text and "s3cret" not in text
