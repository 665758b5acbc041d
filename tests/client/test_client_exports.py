"""Pins the public surface of servicebay.client."""

import pytest

import servicebay.client as client

EXPECTED = {
    "PLATFORM",
    "BindOutcome",
    "BrokerClient",
    "BrokerError",
    "BrokerTimeout",
    "BrokerUnreachable",
    "ClientError",
    "DeprovisionOutcome",
    "LastOperation",
    "MalformedResponse",
    "OrphanMitigation",
    "Outcome",
    "PollingPolicy",
    "PollingTimedOut",
    "ProgressCallback",
    "ProvisionOutcome",
    "RequestKind",
    "UnbindOutcome",
    "UnexpectedStatus",
    "UpdateOutcome",
    "orphan_mitigation",
    "orphan_mitigation_needed",
    "parse_retry_after",
    "user_identity",
}


def test_client_all_is_pinned() -> None:
    """The exported names are exactly the agreed ones, and each resolves."""
    assert set(client.__all__) == EXPECTED
    assert len(client.__all__) == len(EXPECTED)
    for name in client.__all__:
        assert getattr(client, name) is not None


def test_client_error_exit_codes() -> None:
    """Transport-level failures have the exit codes 11-14 the CLI relies on."""
    assert client.BrokerUnreachable("x").exit_code == 11
    assert client.BrokerTimeout("x").exit_code == 12
    assert client.MalformedResponse("x", status=201).exit_code == 13
    assert client.UnexpectedStatus("x", status=204).exit_code == 13
    assert client.PollingTimedOut("x").exit_code == 14
    for klass in (client.BrokerUnreachable, client.BrokerTimeout, client.PollingTimedOut):
        assert issubclass(klass, client.ClientError)


def test_user_identity_is_a_servicebay_originating_identity() -> None:
    """user_identity() names platform "servicebay" and the acting user."""
    identity = client.user_identity("ann", email="ann@example.com")
    assert identity.platform == client.PLATFORM == "servicebay"
    assert identity.value == {"username": "ann", "email": "ann@example.com"}
    assert identity.to_header().startswith("servicebay ")
    with pytest.raises(ValueError, match="username"):
        client.user_identity("")
