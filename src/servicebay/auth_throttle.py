"""`AuthThrottle`: after too many failed authentications from one address, refuse it a while.

Where it sits: every server that checks credentials (the broker SDK's gate, the platform API's
token check, the chat server's HTTP API and WebSocket ``hello``) asks `AuthThrottle.retry_after`
before it looks at the credentials, and reports each refused credential with
`AuthThrottle.failed`. After ``failures`` failures within ``window`` seconds an address is
refused for ``window`` seconds (HTTP 429 with ``Retry-After``), its credentials not even
checked, so no stretch of ``window`` seconds sees more than ``failures`` of its guesses; then
it starts afresh.
Successful requests and other addresses are not delayed: the check is a dictionary lookup.

Addresses are the connection's peer (``scope["client"]``; the servers run uvicorn with
``proxy_headers`` off), except for a connection from one of ``trusted_proxies`` (addresses or
networks, none by default): then the client is the right-most ``X-Forwarded-For`` entry that is
not itself a trusted proxy (what the nearest proxy not trusted, or the client, connected from),
see `AuthThrottle.address`. The header is never read from any other peer: anyone could name a
new address with every guess. Behind a proxy that is not trusted, every client shares the
proxy's count. An IPv6 address counts as its /64 (one host may hold a whole /64). At most
``max_addresses`` are remembered; past that the one whose last failure is oldest is forgotten.
``failures=0`` turns the throttle off (for deployments that throttle elsewhere). No I/O here
and no credential: callers log the address only.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import BaseModel, Field, field_validator

__all__ = ["AuthThrottle", "ThrottleSettings", "parse_trusted_proxies"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Count:
    __slots__ = ("blocked_until", "times")

    def __init__(self, failures: int) -> None:
        self.times: deque[float] = deque(maxlen=failures)  # the last failures, oldest first
        self.blocked_until = 0.0


class AuthThrottle:
    """Counts failed authentications per client address and refuses one that had too many."""

    def __init__(
        self,
        *,
        failures: int = 10,
        window: float = 60.0,
        max_addresses: int = 10_000,
        trusted_proxies: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 0 or window <= 0 or max_addresses < 1:
            raise ValueError("failures must be >= 0, max_addresses >= 1, window > 0")
        #: 0: the throttle is off (nothing is counted, nobody refused).
        self.failures = failures
        self._proxies: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(proxy, strict=False)
            for proxy in parse_trusted_proxies(trusted_proxies)
        )
        self.window = window
        self.max_addresses = max_addresses
        self._clock = clock
        self._counts: OrderedDict[str, _Count] = OrderedDict()  # oldest last failure first
        #: Attempts refused without checking their credentials, since start.
        self.throttled = 0

    def address(self, scope: Mapping[str, Any]) -> str | None:
        """The client address of an ASGI connection ``scope``, as this throttle counts it.

        The peer's (None on a Unix socket, say), unless the peer is a trusted proxy: then the
        right-most ``X-Forwarded-For`` entry not itself trusted (each proxy appends the address
        it was connected from, so entries left of that one may be forged), or the left-most
        entry when all are trusted.
        """
        client = scope.get("client")
        peer = str(client[0]) if client else None
        if not self._proxies or peer is None or not self._trusted(peer):
            return peer
        entries = [
            entry.strip()
            for name, value in scope.get("headers", ())
            if name == b"x-forwarded-for"
            for entry in bytes(value).decode("latin-1").split(",")
        ]
        entries = [entry for entry in entries if entry]
        for entry in reversed(entries):
            if not self._trusted(entry):
                return entry
        return entries[0] if entries else peer

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self._proxies)

    def retry_after(self, address: str | None) -> int | None:
        """Whole seconds until ``address`` may try again, or None when it may now.

        A refused attempt is counted in `throttled`.
        """
        if not self._counts:
            return None
        key = _key(address)
        count = self._counts.get(key)
        if count is None or not count.blocked_until:
            return None
        left = count.blocked_until - self._clock()
        if left <= 0:
            del self._counts[key]
            return None
        self.throttled += 1
        return max(1, math.ceil(left))

    def failed(self, address: str | None) -> bool:
        """Count a refused credential from ``address``; True when this failure blocks it."""
        if not self.failures:
            return False
        now = self._clock()
        self._forget_expired(now)
        key = _key(address)
        count = self._counts.get(key)
        if count is None or (count.blocked_until and now >= count.blocked_until):
            count = self._counts[key] = _Count(self.failures)
        count.times.append(now)
        self._counts.move_to_end(key)
        while len(self._counts) > self.max_addresses:
            self._counts.popitem(last=False)
        # The last `failures` failures all within a window (a sliding one: no stretch of a
        # window's length holds more than `failures` checked credentials).
        full = len(count.times) == self.failures and now - count.times[0] < self.window
        if full and not count.blocked_until:
            count.blocked_until = now + self.window
            return True
        return False

    def __len__(self) -> int:
        """How many addresses are remembered."""
        return len(self._counts)

    def _forget_expired(self, now: float) -> None:
        # Ordered by last failure: what expired sits at the front (a block outlives its last
        # failure by a window, so a blocked address is kept until its block ends).
        while self._counts:
            count = next(iter(self._counts.values()))
            if now - count.times[-1] < self.window or now < count.blocked_until:
                return
            self._counts.popitem(last=False)


class ThrottleSettings(BaseModel):
    """The throttle's settings, part of the broker's, the platform's and the chat's settings
    (each says how its environment names them): ``auth_failures`` failures within
    ``auth_window`` seconds block an address (0 turns that off); ``trusted_proxies`` as
    `parse_trusted_proxies` reads them."""

    auth_failures: int = Field(default=10, ge=0)
    auth_window: float = Field(default=60.0, gt=0)
    trusted_proxies: list[str] = Field(default_factory=list)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxy_networks(cls, value: Any) -> list[str]:
        return parse_trusted_proxies(value)

    def throttle(self) -> AuthThrottle:
        """A throttle with these settings."""
        return AuthThrottle(
            failures=self.auth_failures,
            window=self.auth_window,
            trusted_proxies=self.trusted_proxies,
        )


def parse_trusted_proxies(value: str | Iterable[str] | None) -> list[str]:
    """Trusted proxies as a setting gives them (a comma-separated string or a list of IP
    addresses and networks), each checked and written as a network (``10.0.0.0/8``).

    Raises ValueError naming the entry that is neither an address nor a network.
    """
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    networks = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            networks.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            raise ValueError(f"not an IP address or network: {text!r}") from None
    return networks


def _key(address: str | None) -> str:
    if not address or ":" not in address:
        return address or ""
    try:
        # inet_pton, not ipaddress: this runs on every request while any address is
        # remembered (about 1 µs against 27 µs for building an IPv6Network).
        packed = socket.inet_pton(socket.AF_INET6, address)
    except OSError:
        return address
    if packed[:12] == _IPV4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return packed[:8].hex() + "/64"


_IPV4_MAPPED = bytes(10) + b"\xff\xff"
