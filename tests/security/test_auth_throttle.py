"""`AuthThrottle`: per address, N failures in a window block it for a window; nothing else."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servicebay.auth_throttle import AuthThrottle, parse_trusted_proxies


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _throttle(clock: Clock, **settings: float) -> AuthThrottle:
    return AuthThrottle(clock=clock, **{"failures": 3, "window": 60.0, **settings})  # type: ignore[arg-type]


def test_an_address_is_refused_after_n_failures_within_the_window() -> None:
    """Two failures pass; the third blocks: refused with the seconds left, counted."""
    clock = Clock()
    throttle = _throttle(clock)
    assert not throttle.failed("10.0.0.1")
    assert not throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") is None
    assert throttle.failed("10.0.0.1")  # this one blocks
    assert throttle.retry_after("10.0.0.1") == 60
    clock.now += 59.2
    assert throttle.retry_after("10.0.0.1") == 1  # whole seconds, never 0
    assert throttle.throttled == 2


def test_the_block_ends_after_the_window_and_counting_starts_afresh() -> None:
    """Past the window the address may try again, with a fresh count."""
    clock = Clock()
    throttle = _throttle(clock)
    for _ in range(3):
        throttle.failed("10.0.0.1")
    clock.now += 60
    assert throttle.retry_after("10.0.0.1") is None
    assert len(throttle) == 0
    assert not throttle.failed("10.0.0.1")
    assert not throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") is None


def test_failures_spread_over_more_than_a_window_never_block() -> None:
    """Failures older than the window are not counted."""
    clock = Clock()
    throttle = _throttle(clock)
    for _ in range(10):
        throttle.failed("10.0.0.1")
        throttle.failed("10.0.0.1")
        clock.now += 61
        assert throttle.retry_after("10.0.0.1") is None


def test_failures_across_a_window_boundary_still_block() -> None:
    """The window slides: failures late in one minute and early in the next add up."""
    clock = Clock()
    throttle = _throttle(clock)
    throttle.failed("10.0.0.1")
    clock.now += 59.9
    throttle.failed("10.0.0.1")
    clock.now += 0.2
    assert throttle.failed("10.0.0.1") is False  # the first is out of the window now
    clock.now += 0.1
    assert throttle.failed("10.0.0.1") is True


def test_other_addresses_are_not_refused() -> None:
    """One address blocked says nothing of another."""
    clock = Clock()
    throttle = _throttle(clock)
    for _ in range(3):
        throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.2") is None
    assert throttle.retry_after(None) is None
    assert throttle.throttled == 0


def test_ipv6_addresses_count_per_64() -> None:
    """Addresses of one /64 share a count; another /64 and IPv4-mapped forms are apart/same."""
    clock = Clock()
    throttle = _throttle(clock)
    throttle.failed("2001:db8:1:2::1")
    throttle.failed("2001:db8:1:2::ffff")
    throttle.failed("2001:db8:1:2:aaaa::9")
    assert throttle.retry_after("2001:db8:1:2::77") == 60
    assert throttle.retry_after("2001:db8:1:3::1") is None
    for _ in range(3):
        throttle.failed("::ffff:192.0.2.7")
    assert throttle.retry_after("192.0.2.7") == 60


def test_memory_is_bounded_by_forgetting_the_oldest_address() -> None:
    """Past max_addresses, the address whose last failure is oldest is forgotten."""
    clock = Clock()
    throttle = _throttle(clock, max_addresses=100)
    for _ in range(3):
        throttle.failed("10.9.9.9")
    for n in range(100):
        clock.now += 0.01
        throttle.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(throttle) == 100
    assert throttle.retry_after("10.9.9.9") is None  # the oldest, forgotten


def test_expired_addresses_are_forgotten_on_the_next_failure() -> None:
    """Counts older than the window are dropped as new failures come in."""
    clock = Clock()
    throttle = _throttle(clock)
    for n in range(50):
        throttle.failed(f"10.0.0.{n}")
    clock.now += 61
    throttle.failed("10.1.1.1")
    assert len(throttle) == 1


def test_settings_are_checked() -> None:
    """A throttle that could always refuse or remember nothing is a mistake, said at once."""
    for bad in ({"failures": -1}, {"window": 0}, {"max_addresses": 0}):
        with pytest.raises(ValueError, match="failures"):
            AuthThrottle(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"'10\.0\.0\.300'"):
        AuthThrottle(trusted_proxies=["10.0.0.1", "10.0.0.300"])


def test_zero_failures_turns_the_throttle_off() -> None:
    """failures=0: no number of failures from one address ever refuses it, nothing is kept."""
    throttle = AuthThrottle(failures=0)
    for _ in range(1000):
        assert throttle.retry_after("10.0.0.1") is None
        assert throttle.failed("10.0.0.1") is False
    assert throttle.retry_after("10.0.0.1") is None
    assert len(throttle) == 0
    assert throttle.throttled == 0


def _scope(peer: str | None, *forwarded: str) -> dict[str, object]:
    headers = [(b"host", b"x"), *((b"x-forwarded-for", value.encode()) for value in forwarded)]
    return {"client": (peer, 40000) if peer else None, "headers": headers}


def test_without_trusted_proxies_the_forwarded_header_is_ignored() -> None:
    """The default: the peer's address, whatever X-Forwarded-For says."""
    throttle = AuthThrottle()
    assert throttle.address(_scope("127.0.0.1", "192.0.2.1")) == "127.0.0.1"
    assert throttle.address(_scope(None, "192.0.2.1")) is None


def test_a_trusted_proxy_names_the_right_most_address_not_itself_trusted() -> None:
    """From a trusted peer: the right-most entry that is not a trusted proxy (what the first
    untrusted hop connected from); entries left of it may be forged and are not read."""
    throttle = AuthThrottle(trusted_proxies="10.0.0.0/8, 192.0.2.10")
    assert throttle.address(_scope("10.1.2.3", "203.0.113.7")) == "203.0.113.7"
    # Forged on the left, then two trusted hops: the client is what the outer proxy saw.
    chain = "198.51.100.66, 203.0.113.7, 192.0.2.10, 10.9.9.9"
    assert throttle.address(_scope("10.1.2.3", chain)) == "203.0.113.7"
    # Several header fields are one list, in order.
    assert throttle.address(_scope("10.1.2.3", "198.51.100.66", "203.0.113.7")) == "203.0.113.7"
    assert throttle.address(_scope("::ffff:10.1.2.3", "203.0.113.7")) == "203.0.113.7"
    # No header: the proxy's own address; nothing but proxies: the farthest one.
    assert throttle.address(_scope("10.1.2.3")) == "10.1.2.3"
    assert throttle.address(_scope("10.1.2.3", " , ")) == "10.1.2.3"
    assert throttle.address(_scope("10.1.2.3", "10.0.0.5, 192.0.2.10")) == "10.0.0.5"


def test_the_forwarded_header_of_an_untrusted_peer_is_ignored() -> None:
    """A peer outside the trusted proxies counts as itself, whatever it forwards."""
    throttle = AuthThrottle(trusted_proxies=["10.0.0.0/8"])
    assert throttle.address(_scope("11.0.0.1", "203.0.113.7")) == "11.0.0.1"
    assert throttle.address(_scope("2001:db8::1", "203.0.113.7")) == "2001:db8::1"
    assert throttle.address(_scope("not-an-ip", "203.0.113.7")) == "not-an-ip"


def test_trusted_proxies_are_parsed_from_a_setting() -> None:
    """A comma-separated string or a list; each entry checked and written as a network."""
    assert parse_trusted_proxies(" 10.0.0.1 ,, 2001:db8::/32,") == ["10.0.0.1/32", "2001:db8::/32"]
    assert parse_trusted_proxies(["192.0.2.0/24"]) == ["192.0.2.0/24"]
    assert parse_trusted_proxies(None) == parse_trusted_proxies("") == []
    with pytest.raises(ValueError, match=r"'proxy\.local'"):
        parse_trusted_proxies("10.0.0.1,proxy.local")


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(min_value=0, max_value=30)),
        max_size=60,
    )
)
def test_no_address_gets_more_than_n_failures_per_window(events: list[tuple[str, float]]) -> None:
    """Whatever the timing, an address that asks first gets at most N failures checked in any
    window-long stretch: guessing goes no faster than the throttle allows."""
    clock = Clock()
    throttle = _throttle(clock)
    checked: dict[str, list[float]] = {}
    for address, step in events:
        clock.now += step
        if throttle.retry_after(address) is None:
            throttle.failed(address)
            checked.setdefault(address, []).append(clock.now)
    for times in checked.values():
        for i, start in enumerate(times):
            assert sum(1 for t in times[i:] if t < start + 60) <= 3
