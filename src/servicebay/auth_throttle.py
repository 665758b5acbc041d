"""`AuthThrottle`: after too many failed authentications from one address, refuse it a while.

Where it sits: every server that checks credentials (the broker SDK's gate, the platform API's
token check, the chat server's HTTP API and WebSocket ``hello``) asks `AuthThrottle.retry_after`
before it looks at the credentials, and reports each refused credential with
`AuthThrottle.failed`. After ``failures`` failures within ``window`` seconds an address is
refused for ``window`` seconds (HTTP 429 with ``Retry-After``), its credentials not even
checked, so no stretch of ``window`` seconds sees more than ``failures`` of its guesses; then
it starts afresh.
Successful requests and other addresses are not delayed: the check is a dictionary lookup.

Addresses are what the server sees as the client (``scope["client"]``; uvicorn takes it from
``X-Forwarded-For`` for connections from a trusted proxy): behind a proxy that the server does
not read, every client shares the proxy's count. An IPv6 address counts as its /64 (one host
may hold a whole /64). At most ``max_addresses`` are remembered; past that the one whose last
failure is oldest is forgotten. No I/O here and no credential: callers log the address only.
"""

from __future__ import annotations

import math
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable

__all__ = ["AuthThrottle"]


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1 or window <= 0 or max_addresses < 1:
            raise ValueError("failures and max_addresses must be >= 1, window > 0")
        self.failures = failures
        self.window = window
        self.max_addresses = max_addresses
        self._clock = clock
        self._counts: OrderedDict[str, _Count] = OrderedDict()  # oldest last failure first
        #: Attempts refused without checking their credentials, since start.
        self.throttled = 0

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
