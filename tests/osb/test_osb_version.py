"""The API version header rule and header names (spec "API Version Header")."""

import pytest

from servicebay import osb


def test_header_names_and_version_constants() -> None:
    """Header names are spelled as in the spec; we speak 2.17 and accept from 2.13."""
    assert osb.API_VERSION == "2.17"
    assert osb.MIN_API_VERSION == "2.13"
    assert osb.API_VERSION_HEADER == "X-Broker-API-Version"
    assert osb.ORIGINATING_IDENTITY_HEADER == "X-Broker-API-Originating-Identity"
    assert osb.REQUEST_IDENTITY_HEADER == "X-Broker-API-Request-Identity"


@pytest.mark.parametrize("value", ["2.13", "2.14", "2.17", "2.30", " 2.17 "])
def test_supported_versions_are_accepted(value: str) -> None:
    """Any 2.x from 2.13 on passes."""
    osb.check_api_version(value)


@pytest.mark.parametrize(
    "value", [None, "", "  ", "2", "2.17.1", "v2.17", "x.y", "1.17", "3.0", "2.12"]
)
def test_missing_malformed_or_unsupported_version_is_412_naming_2_17(value: str | None) -> None:
    """Missing, empty, malformed and unsupported versions give 412 naming the version to use."""
    with pytest.raises(osb.PreconditionFailed) as info:
        osb.check_api_version(value)
    assert info.value.http_status == 412
    assert "2.17" in info.value.description
