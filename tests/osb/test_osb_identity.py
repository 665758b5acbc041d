"""Originating identity header and context objects (spec "Originating Identity", profile.md)."""

import base64

import pytest

from servicebay import osb

# The example from the spec, decoded: {"user_id": "683ea748-3092-4ff4-b656-39cacc4d5360"}.
SPEC_HEADER = (
    "cloudfoundry eyANCiAgInVzZXJfaWQiOiAiNjgzZWE3NDgtMzA5Mi00ZmY0LWI2NTYtMzljYWNjNGQ1MzYwIg0KfQ=="
)


def test_spec_example_header_decodes() -> None:
    """The spec's example header gives platform and user."""
    identity = osb.OriginatingIdentity.parse(SPEC_HEADER)
    assert identity.platform == "cloudfoundry"
    assert identity.value == {"user_id": "683ea748-3092-4ff4-b656-39cacc4d5360"}


def test_header_round_trips() -> None:
    """to_header() then parse() gives the same identity."""
    identity = osb.OriginatingIdentity(platform="servicebay", value={"username": "ann", "n": 1})
    header = identity.to_header()
    assert header.startswith("servicebay ")
    assert osb.OriginatingIdentity.parse(header) == identity


def test_unpadded_base64_is_tolerated() -> None:
    """Senders that strip base64 padding are still understood."""
    encoded = base64.b64encode(b'{"u":"x"}').decode().rstrip("=")
    assert osb.OriginatingIdentity.parse(f"kubernetes {encoded}").value == {"u": "x"}


@pytest.mark.parametrize(
    "header",
    [
        "",
        "cloudfoundry",
        "cloudfoundry not-base64!!",
        "cloudfoundry " + base64.b64encode(b"not json").decode(),
        "cloudfoundry " + base64.b64encode(b"[1, 2]").decode(),
        "a b c",
    ],
)
def test_malformed_header_is_bad_request(header: str) -> None:
    """Anything but '<platform> <base64 JSON object>' is refused with 400."""
    with pytest.raises(osb.BadRequest) as info:
        osb.OriginatingIdentity.parse(header)
    assert "X-Broker-API-Originating-Identity" in info.value.description


def test_context_is_read_as_its_platform_model() -> None:
    """parse_context picks the profile model by platform and keeps extra properties."""
    cf = osb.parse_context(
        {"platform": "cloudfoundry", "organization_guid": "o", "space_guid": "s", "x-extra": 1}
    )
    assert isinstance(cf, osb.CloudFoundryContext)
    assert cf.to_wire()["x-extra"] == 1
    k8s = osb.parse_context({"platform": "kubernetes", "namespace": "testing"})
    assert isinstance(k8s, osb.KubernetesContext)
    sb = osb.parse_context({"platform": "servicebay", "namespace": "staging"})
    assert isinstance(sb, osb.ServicebayContext)
    other = osb.parse_context({"platform": "nomad", "job": "x"})
    assert type(other) is osb.Context
    assert other.to_wire() == {"platform": "nomad", "job": "x"}


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"platform": "cloudfoundry", "space_guid": "s"}, "context.organization_guid: is required"),
        ({"platform": "kubernetes", "namespace": ""}, "context.namespace: must be a non-empty"),
        ({"platform": ""}, "context.platform: must be a non-empty string"),
        ({}, "context.platform: is required"),
        ("cloudfoundry", "context: must be a JSON object"),
    ],
)
def test_context_breaking_its_profile_is_bad_request(data: object, needle: str) -> None:
    """Profile MUSTs are enforced with a message naming the property."""
    with pytest.raises(osb.BadRequest) as info:
        osb.parse_context(data)
    assert needle in info.value.description


def test_platform_with_whitespace_cannot_be_built() -> None:
    """A platform name with a space could not travel in the header, so it is refused."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        osb.OriginatingIdentity(platform="my platform", value={})
