"""The originating identity servicebay sends for its users (spec "Originating Identity").

Requests made because a platform user acted carry ``X-Broker-API-Originating-Identity:
servicebay <base64 JSON>``; the platform value matches the ``platform`` of the context objects
servicebay sends (profile: "the platform value MUST be the same for both").
"""

from __future__ import annotations

from typing import Any

from servicebay.osb import OriginatingIdentity

__all__ = ["PLATFORM", "user_identity"]

#: The platform name servicebay uses in originating identities and context objects.
PLATFORM = "servicebay"


def user_identity(username: str, **attributes: Any) -> OriginatingIdentity:
    """The identity of servicebay user ``username`` (extra JSON properties in ``attributes``)."""
    if not username:
        raise ValueError("a user identity needs a non-empty username")
    return OriginatingIdentity(platform=PLATFORM, value={"username": username, **attributes})
