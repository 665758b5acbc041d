"""A fake broker for client tests: it answers what each test scripts, misbehaving on purpose,
and records every request it saw. Plus a fake clock so polling tests never really sleep."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from servicebay.client import BrokerClient, PollingPolicy

Reply = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


def reply(
    status: int, body: Any = None, *, raw: bytes | None = None, **headers: str
) -> httpx.Response:
    """A scripted broker answer: JSON ``body`` (or ``raw`` bytes) with ``headers``."""
    content = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    heads = {k.replace("_", "-"): v for k, v in headers.items()}
    if raw is None and body is not None:
        heads.setdefault("Content-Type", "application/json")
    return httpx.Response(status, content=content, headers=heads)


@dataclass
class FakeBroker:
    """Answers requests from a script: route ``(method, path)`` → list of replies, in order.

    The last reply of a route repeats. An ``Exception`` reply is raised (as a transport would).
    """

    script: dict[tuple[str, str], list[Reply]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def on(self, method: str, path: str, *replies: Reply) -> FakeBroker:
        """Script the replies to ``method path`` (path without query string)."""
        self.script[(method, path)] = list(replies)
        return self

    def handler(self, request: httpx.Request) -> httpx.Response:
        """The MockTransport handler."""
        self.requests.append(request)
        replies = self.script.get((request.method, request.url.raw_path.decode().split("?")[0]))
        if not replies:
            return reply(404, {"description": "no such route in the fake broker"})
        answer = replies.pop(0) if len(replies) > 1 else replies[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        return answer

    def transport(self) -> httpx.MockTransport:
        """An httpx transport backed by this fake broker."""
        return httpx.MockTransport(self.handler)


@dataclass
class FakeClock:
    """Monotonic time that only moves when the client sleeps; records every sleep."""

    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Advance time instead of waiting."""
        self.sleeps.append(seconds)
        self.now += seconds


def make_client(broker: FakeBroker, clock: FakeClock | None = None, **kwargs: Any) -> BrokerClient:
    """A BrokerClient wired to ``broker`` with basic auth and a fake clock."""
    clock = clock or FakeClock()
    kwargs.setdefault("username", "admin")
    kwargs.setdefault("password", "s3cret")
    kwargs.setdefault("polling", PollingPolicy(initial=1.0, factor=2.0, maximum=8.0))
    return BrokerClient(
        "http://broker.test",
        transport=broker.transport(),
        sleep=clock.sleep,
        clock=clock,
        **kwargs,
    )
