"""How long to wait between ``last_operation`` polls, and for how long to poll at all.

The broker MAY send ``Retry-After`` (spec "Polling Last Operation"; a duration is recommended,
an HTTP date is allowed); when it does, the platform waits that long. Otherwise the wait grows
geometrically from ``initial`` to ``maximum``. Polling ends at the plan's
``maximum_polling_duration`` (or the platform's own limit, whichever is shorter), after which the
operation MUST be considered failed (spec "Polling Interval and Duration").

Also here: which failed polls end polling and which are merely invalid answers to ride out,
and the hand-off of progress descriptions to the caller.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from servicebay.client._errors import BrokerError, ClientError
from servicebay.client._orphans import RequestKind
from servicebay.osb import LastOperationResponse, OperationState

__all__ = [
    "PollingPolicy",
    "ProgressCallback",
    "ProgressReporter",
    "judge_failed_poll",
    "parse_retry_after",
    "retry_after_of",
]


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


#: Called with each new last_operation answer whose description changed.
ProgressCallback = Callable[[LastOperationResponse], Awaitable[None] | None]

_DELETES = {RequestKind.DEPROVISION, RequestKind.UNBIND}
# 4xx answers to a poll that are worth polling again: timeouts, rate limits, a 410 while creating
# (spec: "SHOULD be interpreted as an invalid response and the Platform SHOULD continue polling").
_POLL_AGAIN = {408, 410, 422, 425, 429}


class ProgressReporter:
    """Hands each answer whose description changed to the caller's progress callback."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback
        self._described: str | None = None

    async def report(self, answer: LastOperationResponse) -> LastOperationResponse | None:
        """Report ``answer`` if it says something new; return it when it is final."""
        if self._callback is not None and answer.description != self._described:
            self._described = answer.description
            result = self._callback(answer)
            if inspect.isawaitable(result):
                await result
        return answer if answer.state.is_terminal else None


def judge_failed_poll(kind: RequestKind, exc: ClientError) -> LastOperationResponse | None:
    """The final answer a failed poll implies, None to poll again; raises if polling must end."""
    if isinstance(exc, BrokerError):
        if exc.status == 410 and kind in _DELETES:
            # spec: 410 "The Platform MUST consider this response a success".
            return LastOperationResponse(
                state=OperationState.SUCCEEDED, description="the broker no longer has it"
            )
        if 400 <= exc.status < 500 and exc.status not in _POLL_AGAIN:
            # A refused poll (bad request, unknown instance, wrong credentials) will not change
            # by asking again.
            raise exc
    return None


def retry_after_of(exc: ClientError) -> float | None:
    """The Retry-After a failed call carried, if any."""
    return exc.retry_after if isinstance(exc, BrokerError) else None
