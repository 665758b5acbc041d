"""Prometheus metrics of one chat server: messages in/out, redeliveries, lag per room.

Where it sits: ``ChatService`` counts, ``server`` exposes ``/metrics``. Each server app owns its
registry so that several apps in one process (tests) do not collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class ChatMetrics:
    """The counters and gauges of one server."""

    def __init__(self) -> None:
        """Create a fresh registry with every metric."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages_in = Counter(
            "chat_messages_in", "Messages durably stored", ["room"], registry=r
        )
        self.duplicate_sends = Counter(
            "chat_duplicate_sends", "Sends answered from the idempotency key", ["room"], registry=r
        )
        self.messages_out = Counter(
            "chat_messages_out", "Message deliveries to sessions and readers", ["room"], registry=r
        )
        self.redeliveries = Counter(
            "chat_redeliveries",
            "Deliveries of a seq already delivered to that user since start",
            ["room"],
            registry=r,
        )
        self.compacted = Counter(
            "chat_compacted", "Messages deleted by retention", ["room"], registry=r
        )
        self.lag = Gauge(
            "chat_room_lag_messages",
            "Messages not yet acknowledged by every member",
            ["room"],
            registry=r,
        )
        self.sessions = Gauge("chat_sessions", "Open WebSocket sessions", registry=r)
        self.errors = Counter("chat_errors", "Error frames and responses", ["code"], registry=r)

    def render(self, lag: dict[str, int]) -> bytes:
        """The exposition text, with lag gauges refreshed first."""
        for room, value in lag.items():
            self.lag.labels(room).set(value)
        return generate_latest(self.registry)
