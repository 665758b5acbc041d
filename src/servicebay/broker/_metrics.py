"""Prometheus metrics of one broker app: requests, in-flight work, operation durations.

Each app has its own registry (several apps may live in one process, e.g. in tests), exposed
at `/metrics` in the Prometheus text format. Labels use the route template
(`/v2/service_instances/{instance_id}`), never a concrete id, to keep cardinality bounded.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["BrokerMetrics", "metrics_endpoint"]

_OPERATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class BrokerMetrics:
    """The app's collectors and the registry they live in."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Label children looked up once: `labels()` costs more than the observation itself.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._operation_children: dict[tuple[str, str, str], Any] = {}
        self.requests = Counter(
            "servicebay_broker_requests",
            "OSB requests answered, by endpoint, method and status code.",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "servicebay_broker_request_duration_seconds",
            "Time to answer a request, by endpoint.",
            ["endpoint"],
            registry=self.registry,
        )
        self.requests_in_flight = Gauge(
            "servicebay_broker_requests_in_flight",
            "Requests being answered right now.",
            registry=self.registry,
        )
        self.operations_in_flight = Gauge(
            "servicebay_broker_operations_in_flight",
            "Asynchronous operations running in this process.",
            registry=self.registry,
        )
        self.operation_duration = Histogram(
            "servicebay_broker_operation_duration_seconds",
            "Duration of finished operations, by kind, mode (sync/async) and outcome.",
            ["kind", "mode", "state"],
            buckets=_OPERATION_BUCKETS,
            registry=self.registry,
        )

    def count_request(self, endpoint: str, method: str, status: int, started: float) -> None:
        """Record one answered request (label children cached: this runs on every request)."""
        key = (endpoint, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(endpoint, method, str(status)),
                self.request_duration.labels(endpoint),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(time.perf_counter() - started)

    def observe_operation(self, kind: str, mode: str, state: str, seconds: float) -> None:
        """Record one finished operation."""
        key = (kind, mode, state)
        child = self._operation_children.get(key)
        if child is None:
            child = self._operation_children[key] = self.operation_duration.labels(*key)
        child.observe(seconds)

    def render(self) -> bytes:
        """The registry in Prometheus text exposition format."""
        return bytes(generate_latest(self.registry))


async def metrics_endpoint(request: Request) -> Response:
    """`GET /metrics`: the app's metrics in Prometheus text format."""
    metrics: BrokerMetrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
