"""How long to wait between ``last_operation`` polls, and for how long to poll at all.

The broker MAY send ``Retry-After`` (spec "Polling Last Operation"; a duration is recommended,
an HTTP date is allowed); when it does, the platform waits that long. Otherwise the wait grows
geometrically from ``initial`` to ``maximum``. Polling ends at the plan's
``maximum_polling_duration`` (or the platform's own limit, whichever is shorter), after which the
operation MUST be considered failed (spec "Polling Interval and Duration").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

__all__ = ["PollingPolicy", "parse_retry_after"]


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date), or None."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, moment.timestamp() - current)


@dataclass(frozen=True)
class PollingPolicy:
    """Polling rhythm: backoff bounds, the ceiling on Retry-After, the overall limit."""

    #: First wait when the broker gives no Retry-After, and the shortest wait ever.
    initial: float = 1.0
    #: Growth factor of the wait between polls.
    factor: float = 1.5
    #: Longest wait between two polls without Retry-After.
    maximum: float = 30.0
    #: Longest wait the client accepts from a Retry-After header.
    retry_after_cap: float = 300.0
    #: The platform's own maximum polling duration, used when the plan sets none (seconds).
    max_duration: float = 24 * 3600.0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.factor < 1 or self.maximum < self.initial:
            raise ValueError("polling needs 0 < initial <= maximum and factor >= 1")

    def wait(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before poll number ``attempt + 1`` (``attempt`` counts from 0)."""
        if retry_after is not None:
            # Never below ``initial``: a broker answering "Retry-After: 0" forever must not be
            # polled in a tight loop.
            return min(max(retry_after, self.initial), self.retry_after_cap)
        return min(self.initial * self.factor**attempt, self.maximum)

    def limit(self, maximum_polling_duration: float | None) -> float:
        """The polling duration to honour: the plan's, bounded by the platform's."""
        if maximum_polling_duration is None:
            return self.max_duration
        return min(float(maximum_polling_duration), self.max_duration)
