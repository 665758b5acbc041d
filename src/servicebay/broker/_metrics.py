"""Prometheus metrics of one broker app: requests, in-flight work, operation durations.

Each app has its own registry (several apps may live in one process, e.g. in tests), exposed
at `/metrics` in the Prometheus text format. Labels use the route template
(`/v2/service_instances/{instance_id}`), never a concrete id, to keep cardinality bounded.

Counts are plain numbers, turned into metric families only when scraped (`_Tally` is the
registry's collector): prometheus_client's own metrics take a lock per increment, which on the
request path was six lock round trips per request (in flight up and down, the request count,
the duration's sum and bucket, and the same for a synchronous operation). Every update happens
on the app's event loop, so the numbers need no lock.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Mapping, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["BrokerMetrics", "metrics_endpoint"]

#: prometheus_client's default buckets, for request durations.
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
_OPERATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class _Histogram:
    """Observations counted into buckets (upper bounds, ``le``) and summed."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        total, buckets = 0, list[tuple[str, float]]()
        for bound, count in zip([*self.bounds, math.inf], self.counts, strict=True):
            total += count
            buckets.append((_le(bound), total))
        return buckets


def _le(bound: float) -> str:
    # As prometheus_client writes bucket bounds (its own helper is untyped): 1 -> "1.0".
    return "+Inf" if math.isinf(bound) else repr(float(bound))


class _Tally:
    """The app's numbers, as a registry collector."""

    def __init__(self) -> None:
        self.requests_in_flight = 0
        self.operations_in_flight = 0
        self.requests: dict[tuple[str, str, str], int] = {}
        self.request_durations: dict[str, _Histogram] = {}
        self.operation_durations: dict[tuple[str, ...], _Histogram] = {}

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "servicebay_broker_requests",
            "OSB requests answered, by endpoint, method and status code.",
            labels=["endpoint", "method", "status"],
        )
        for labels, count in self.requests.items():
            requests.add_metric(labels, count)
        yield requests
        yield _histogram(
            "servicebay_broker_request_duration_seconds",
            "Time to answer a request, by endpoint.",
            ["endpoint"],
            {(endpoint,): h for endpoint, h in self.request_durations.items()},
        )
        yield GaugeMetricFamily(
            "servicebay_broker_requests_in_flight",
            "Requests being answered right now.",
            value=self.requests_in_flight,
        )
        yield GaugeMetricFamily(
            "servicebay_broker_operations_in_flight",
            "Asynchronous operations running in this process.",
            value=self.operations_in_flight,
        )
        yield _histogram(
            "servicebay_broker_operation_duration_seconds",
            "Duration of finished operations, by kind, mode (sync/async) and outcome.",
            ["kind", "mode", "state"],
            self.operation_durations,
        )


def _histogram(
    name: str, documentation: str, labels: list[str], series: Mapping[tuple[str, ...], _Histogram]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for values, histogram in series.items():
        family.add_metric(list(values), histogram.cumulative(), histogram.sum)
    return family


class BrokerMetrics:
    """The app's numbers and the registry that exposes them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._tally = _Tally()
        self.registry.register(self._tally)

    def request_started(self) -> None:
        """One more request in flight."""
        self._tally.requests_in_flight += 1

    def count_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Record one answered request, which took ``seconds``."""
        tally = self._tally
        tally.requests_in_flight -= 1
        key = (endpoint, method, str(status))
        tally.requests[key] = tally.requests.get(key, 0) + 1
        histogram = tally.request_durations.get(endpoint)
        if histogram is None:
            histogram = tally.request_durations[endpoint] = _Histogram(_REQUEST_BUCKETS)
        histogram.observe(seconds)

    def operation_started(self) -> None:
        """One more asynchronous operation running in this process."""
        self._tally.operations_in_flight += 1

    def operation_stopped(self) -> None:
        """An asynchronous operation of this process stopped running."""
        self._tally.operations_in_flight -= 1

    def observe_operation(self, kind: str, mode: str, state: str, seconds: float) -> None:
        """Record one finished operation."""
        key = (kind, mode, state)
        histogram = self._tally.operation_durations.get(key)
        if histogram is None:
            histogram = self._tally.operation_durations[key] = _Histogram(_OPERATION_BUCKETS)
        histogram.observe(seconds)

    def render(self) -> bytes:
        """The registry in Prometheus text exposition format."""
        return bytes(generate_latest(self.registry))


async def metrics_endpoint(request: Request) -> Response:
    """`GET /metrics`: the app's metrics in Prometheus text format."""
    metrics: BrokerMetrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
