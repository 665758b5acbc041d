"""Brokers that misbehave on purpose: 5xx, timeouts, broken connections, malformed 201/202,
undefined statuses. Each failure says whether orphan mitigation is due, per the spec's table."""

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from client_fakes import FakeBroker, make_client, reply

from servicebay import osb
from servicebay.client import (
    BrokerClient,
    BrokerError,
    BrokerTimeout,
    BrokerUnreachable,
    MalformedResponse,
    OrphanMitigation,
    UnexpectedStatus,
)

INSTANCE = "/v2/service_instances/i"
BINDING = INSTANCE + "/service_bindings/b"
PROVISION = osb.ProvisionRequest(service_id="s", plan_id="p")
BIND = osb.BindRequest(service_id="s", plan_id="p")
UPDATE = osb.UpdateRequest(service_id="s", parameters={"a": 1})


def _timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("too slow", request=request)


def _refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("refused", request=request)


def _reset(request: httpx.Request) -> httpx.Response:
    raise httpx.RemoteProtocolError("peer closed connection", request=request)


async def test_provision_500_is_broker_error_needing_instance_mitigation() -> None:
    """5xx on provision: BrokerError(InternalError), mitigate the instance."""
    broker = FakeBroker().on("PUT", INSTANCE, reply(500, {"description": "boom"}))
    async with make_client(broker) as client:
        with pytest.raises(BrokerError) as info:
            await client.provision("i", PROVISION)
    assert isinstance(info.value.error, osb.InternalError)
    assert info.value.mitigation is OrphanMitigation.INSTANCE


async def test_bind_503_with_html_body_needs_binding_mitigation() -> None:
    """5xx with a non-JSON body on bind: still a BrokerError, mitigate the binding."""
    broker = FakeBroker().on("PUT", BINDING, reply(503, raw=b"<html>Service Unavailable</html>"))
    async with make_client(broker) as client:
        with pytest.raises(BrokerError) as info:
            await client.bind("i", "b", BIND)
    assert info.value.status == 503
    assert "503" in info.value.error.description
    assert info.value.mitigation is OrphanMitigation.BINDING


async def test_update_500_needs_no_mitigation() -> None:
    """5xx on update: the instance existed before; nothing to clean up."""
    broker = FakeBroker().on("PATCH", INSTANCE, reply(500, {"description": "nope"}))
    async with make_client(broker) as client:
        with pytest.raises(BrokerError) as info:
            await client.update("i", UPDATE)
    assert info.value.mitigation is OrphanMitigation.NONE


async def test_provision_timeout_needs_instance_mitigation() -> None:
    """No answer in time on provision: BrokerTimeout, mitigate the instance."""
    broker = FakeBroker().on("PUT", INSTANCE, _timeout)
    async with make_client(broker) as client:
        with pytest.raises(BrokerTimeout) as info:
            await client.provision("i", PROVISION)
    assert info.value.mitigation is OrphanMitigation.INSTANCE
    assert info.value.exit_code == 12


async def test_bind_timeout_needs_binding_mitigation() -> None:
    """No answer in time on bind: mitigate the binding."""
    broker = FakeBroker().on("PUT", BINDING, _timeout)
    async with make_client(broker) as client:
        with pytest.raises(BrokerTimeout) as info:
            await client.bind("i", "b", BIND)
    assert info.value.mitigation is OrphanMitigation.BINDING


async def test_deprovision_timeout_needs_no_mitigation() -> None:
    """A timed-out deprovision is retried by the platform, not orphan-mitigated."""
    broker = FakeBroker().on("DELETE", INSTANCE, _timeout)
    async with make_client(broker) as client:
        with pytest.raises(BrokerTimeout) as info:
            await client.deprovision("i", "s", "p")
    assert info.value.mitigation is OrphanMitigation.NONE


async def test_refused_connection_is_unreachable_without_mitigation() -> None:
    """The request never left: BrokerUnreachable, nothing can have been created."""
    broker = FakeBroker().on("PUT", INSTANCE, _refused)
    async with make_client(broker) as client:
        with pytest.raises(BrokerUnreachable) as info:
            await client.provision("i", PROVISION)
    assert info.value.mitigation is OrphanMitigation.NONE
    assert info.value.exit_code == 11


async def test_connection_broken_mid_provision_is_judged_like_a_timeout() -> None:
    """A reset after sending may have created the instance: mitigate as for a timeout."""
    broker = FakeBroker().on("PUT", INSTANCE, _reset)
    async with make_client(broker) as client:
        with pytest.raises(BrokerUnreachable) as info:
            await client.provision("i", PROVISION)
    assert info.value.mitigation is OrphanMitigation.INSTANCE


@pytest.mark.parametrize(
    "body",
    [b"<html>created</html>", b'{"dashboard_url": 42}', b'["not", "an", "object"]'],
)
async def test_malformed_201_provision_needs_instance_mitigation(body: bytes) -> None:
    """201 with a body that breaks the spec: MalformedResponse, mitigate the instance."""
    broker = FakeBroker().on("PUT", INSTANCE, reply(201, raw=body))
    async with make_client(broker) as client:
        with pytest.raises(MalformedResponse) as info:
            await client.provision("i", PROVISION)
    assert info.value.status == 201
    assert info.value.mitigation is OrphanMitigation.INSTANCE


async def test_malformed_202_provision_needs_instance_mitigation() -> None:
    """202 whose operation is not a string: mitigate the instance."""
    broker = FakeBroker().on("PUT", INSTANCE, reply(202, {"operation": {"id": 1}}))
    async with make_client(broker) as client:
        with pytest.raises(MalformedResponse) as info:
            await client.provision("i", PROVISION)
    assert info.value.status == 202
    assert info.value.mitigation is OrphanMitigation.INSTANCE


async def test_malformed_201_bind_needs_binding_mitigation_and_hides_credentials() -> None:
    """201 bind with malformed parts: mitigate the binding; the error shows no credential."""
    body = {"credentials": {"password": "hunter2-secret"}, "endpoints": [{"host": "h"}]}
    broker = FakeBroker().on("PUT", BINDING, reply(201, body))
    async with make_client(broker) as client:
        with pytest.raises(MalformedResponse) as info:
            await client.bind("i", "b", BIND)
    assert info.value.mitigation is OrphanMitigation.BINDING
    assert "endpoints[0].ports: is required" in str(info.value)
    assert "hunter2-secret" not in str(info.value)


async def test_202_bind_with_credentials_is_malformed() -> None:
    """202 must not carry credentials (spec "Binding", 202): malformed, mitigate the binding."""
    body = {"operation": "op", "credentials": {"password": "hunter2-secret"}}
    broker = FakeBroker().on("PUT", BINDING, reply(202, body))
    async with make_client(broker) as client:
        with pytest.raises(MalformedResponse) as info:
            await client.bind("i", "b", BIND)
    assert info.value.mitigation is OrphanMitigation.BINDING
    assert "hunter2-secret" not in str(info.value)


async def test_malformed_200_provision_needs_no_mitigation() -> None:
    """200 with a malformed body is a failure but the instance pre-existed: no mitigation."""
    broker = FakeBroker().on("PUT", INSTANCE, reply(200, raw=b"{oops"))
    async with make_client(broker) as client:
        with pytest.raises(MalformedResponse) as info:
            await client.provision("i", PROVISION)
    assert info.value.mitigation is OrphanMitigation.NONE


@pytest.mark.parametrize("status", [203, 204, 206])
async def test_other_2xx_on_provision_is_unexpected_and_needs_mitigation(status: int) -> None:
    """Undefined 2xx on provision: UnexpectedStatus, mitigate the instance."""
    broker = FakeBroker().on("PUT", INSTANCE, reply(status, {}))
    async with make_client(broker) as client:
        with pytest.raises(UnexpectedStatus) as info:
            await client.provision("i", PROVISION)
    assert info.value.status == status
    assert info.value.mitigation is OrphanMitigation.INSTANCE


async def test_other_2xx_on_unbind_needs_binding_mitigation() -> None:
    """Undefined 2xx on unbind: mitigate the binding."""
    broker = FakeBroker().on("DELETE", BINDING, reply(204))
    async with make_client(broker) as client:
        with pytest.raises(UnexpectedStatus) as info:
            await client.unbind("i", "b", "s", "p")
    assert info.value.mitigation is OrphanMitigation.BINDING


async def test_redirect_is_unexpected_without_mitigation() -> None:
    """A 3xx is outside the table: UnexpectedStatus, nothing to mitigate."""
    broker = FakeBroker().on("PUT", INSTANCE, reply(302, Location="http://elsewhere/"))
    async with make_client(broker) as client:
        with pytest.raises(UnexpectedStatus) as info:
            await client.provision("i", PROVISION)
    assert info.value.mitigation is OrphanMitigation.NONE


async def test_concurrency_error_needs_no_mitigation() -> None:
    """422 ConcurrencyError: the platform MUST NOT orphan-mitigate (spec "Blocking Operations")."""
    body = {"error": "ConcurrencyError", "description": "busy"}
    broker = FakeBroker().on("PUT", BINDING, reply(422, body))
    async with make_client(broker) as client:
        with pytest.raises(BrokerError) as info:
            await client.bind("i", "b", BIND)
    assert isinstance(info.value.error, osb.ConcurrencyError)
    assert info.value.mitigation is OrphanMitigation.NONE


async def test_unauthorized_is_broker_error_401() -> None:
    """Wrong credentials: BrokerError wrapping Unauthorized."""
    broker = FakeBroker().on("GET", "/v2/catalog", reply(401, raw=b""))
    async with make_client(broker) as client:
        with pytest.raises(BrokerError) as info:
            await client.catalog()
    assert isinstance(info.value.error, osb.Unauthorized)


async def test_malformed_catalog_is_refused() -> None:
    """A catalog that breaks the spec is a MalformedResponse naming the field."""
    bad = {"services": [{"id": "s", "name": "", "description": "d", "bindable": True, "plans": []}]}
    broker = FakeBroker().on("GET", "/v2/catalog", reply(200, bad))
    async with make_client(broker) as client:
        with pytest.raises(MalformedResponse) as info:
            await client.catalog()
    assert "services[0].name: must be a non-empty string" in str(info.value)


@contextlib.asynccontextmanager
async def _silent_server() -> AsyncIterator[str]:
    """A real TCP server that accepts connections and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_real_socket_timeout_on_provision() -> None:
    """Over a real socket, a broker that never answers times out within the client timeout."""
    loop = asyncio.get_running_loop()
    async with _silent_server() as url, BrokerClient(url, timeout=0.3) as client:
        started = loop.time()
        with pytest.raises(BrokerTimeout) as info:
            await client.provision("i", PROVISION)
        assert loop.time() - started < 5
    assert info.value.mitigation is OrphanMitigation.INSTANCE


async def test_real_closed_port_is_unreachable() -> None:
    """Nothing listening on the port: BrokerUnreachable."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with BrokerClient(f"http://127.0.0.1:{port}", timeout=2) as client:
        with pytest.raises(BrokerUnreachable) as info:
            await client.catalog()
    assert info.value.mitigation is OrphanMitigation.NONE


@pytest.mark.parametrize(
    ("body", "requires", "ok"),
    [
        ({"syslog_drain_url": "syslog://x"}, [], False),
        ({"syslog_drain_url": "syslog://x"}, ["syslog_drain"], True),
        ({"route_service_url": "https://r"}, ["syslog_drain"], False),
        ({"route_service_url": "https://r"}, ["route_forwarding"], True),
        (
            {
                "volume_mounts": [
                    {
                        "driver": "d",
                        "container_dir": "/x",
                        "mode": "r",
                        "device_type": "shared",
                        "device": {"volume_id": "v"},
                    }
                ]
            },
            [],
            False,
        ),
        ({"credentials": {"u": "p"}}, [], True),
    ],
)
async def test_binding_kinds_need_their_requires(
    body: dict[str, object], requires: list[str], ok: bool
) -> None:
    """Given the service, a drain/route/volume binding it did not declare is malformed."""
    service = osb.Service.model_validate(
        {
            "id": "s",
            "name": "n",
            "description": "d",
            "bindable": True,
            "requires": requires,
            "plans": [{"id": "p", "name": "p", "description": "d"}],
        }
    )
    broker = FakeBroker().on("PUT", BINDING, reply(201, body))
    async with make_client(broker) as client:
        if ok:
            assert (await client.bind("i", "b", BIND, service=service)).status == 201
        else:
            with pytest.raises(MalformedResponse) as info:
                await client.bind("i", "b", BIND, service=service)
            assert info.value.mitigation is OrphanMitigation.BINDING
            assert "requires" in str(info.value)
        # Without the service the client cannot judge, and accepts the answer.
        assert (await client.bind("i", "b", BIND)).status == 201


async def test_credentials_in_the_url_never_reach_messages() -> None:
    """A base URL with user:password@ is shown without them in errors and repr."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = BrokerClient(f"http://admin:hunter2-secret@127.0.0.1:{port}", timeout=2)
    async with client:
        with pytest.raises(BrokerUnreachable) as info:
            await client.catalog()
    assert "hunter2-secret" not in str(info.value)
    assert "hunter2-secret" not in repr(client)
    assert f"127.0.0.1:{port}" in str(info.value)
