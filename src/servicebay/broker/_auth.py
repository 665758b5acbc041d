"""Platform-to-broker authentication: HTTP basic, and optionally a bearer token.

spec "Platform to Service Broker Authentication": the platform MUST authenticate with HTTP
basic authentication unless another mechanism was agreed out of band, and the broker MUST
answer 401 when authentication fails. Secrets are compared in constant time
(`hmac.compare_digest`) so response timing reveals nothing about them.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from servicebay import osb

__all__ = ["Authenticator"]


class Authenticator:
    """Checks the `Authorization` header against the configured credentials."""

    __slots__ = ("_basic", "_bearer")

    def __init__(
        self,
        *,
        username: str | None = None,
        password: str | None = None,
        bearer_token: str | None = None,
        allow_anonymous: bool = False,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("set both username and password for basic authentication, or neither")
        if username is None and bearer_token is None and not allow_anonymous:
            raise ValueError(
                "no broker credentials configured: set username and password (or a bearer "
                "token); allow_anonymous=True is for tests only"
            )
        self._basic = f"{username}:{password}".encode() if username is not None else None
        self._bearer = bearer_token.encode() if bearer_token else None

    @property
    def anonymous(self) -> bool:
        """True when no credentials are configured: every request is let through."""
        return self._basic is None and self._bearer is None

    def check(self, authorization: str | None) -> None:
        """Accept the header value or raise `osb.Unauthorized`."""
        if self.anonymous:
            return
        if not authorization:
            raise osb.Unauthorized("authentication required")
        scheme, _, value = authorization.partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "basic" and self._basic is not None:
            accepted = hmac.compare_digest(_decode_basic(value), self._basic)
        elif scheme == "bearer" and self._bearer is not None:
            accepted = hmac.compare_digest(value.encode(), self._bearer)
        else:
            accepted = False
        if accepted:
            return
        raise osb.Unauthorized("invalid credentials")


def _decode_basic(value: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return b""
