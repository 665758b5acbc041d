"""Header names and the API version rule (spec "Headers", "API Version Header").

A broker checks ``X-Broker-API-Version`` once per request: missing, empty, malformed or
unsupported versions are refused with 412 and a message naming the version to use. The spec
allows 400 for a missing header; 412 is what reference brokers and conformance checkers expect.
"""

from __future__ import annotations

import re

from servicebay.osb._errors import PreconditionFailed

__all__ = [
    "API_VERSION",
    "API_VERSION_HEADER",
    "MIN_API_VERSION",
    "ORIGINATING_IDENTITY_HEADER",
    "REQUEST_IDENTITY_HEADER",
    "check_api_version",
]

API_VERSION = "2.17"
MIN_API_VERSION = "2.13"
API_VERSION_HEADER = "X-Broker-API-Version"
ORIGINATING_IDENTITY_HEADER = "X-Broker-API-Originating-Identity"
REQUEST_IDENTITY_HEADER = "X-Broker-API-Request-Identity"

_VERSION = re.compile(r"^(\d+)\.(\d+)$")
_MIN_MINOR = int(MIN_API_VERSION.split(".")[1])


def check_api_version(value: str | None) -> None:
    """Raise ``PreconditionFailed`` unless ``value`` is a supported version, 2.13 to 2.x."""
    if value is None or not value.strip():
        raise PreconditionFailed(f"the {API_VERSION_HEADER} header is required; use {API_VERSION}")
    match = _VERSION.match(value.strip())
    if match is None:
        raise PreconditionFailed(
            f"{API_VERSION_HEADER} {value!r} is not a MAJOR.MINOR version; use {API_VERSION}"
        )
    major, minor = int(match.group(1)), int(match.group(2))
    if major != 2 or minor < _MIN_MINOR:
        raise PreconditionFailed(
            f"{API_VERSION_HEADER} {value} is not supported; use {API_VERSION} "
            f"(accepted: {MIN_API_VERSION} to 2.x)"
        )
