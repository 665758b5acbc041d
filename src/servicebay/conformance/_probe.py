"""The self-test's side of the wire: raw OSB requests over httpx, with each answer kept whole.

The self-test needs requests a well-behaved client never sends (no version header, wrong
credentials, broken JSON), so it speaks HTTP itself instead of going through the typed client.
An :class:`Exchange` describes itself for the report without ever showing a success body: those
carry credentials, and the report is printed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from servicebay.osb import API_VERSION, API_VERSION_HEADER, REQUEST_IDENTITY_HEADER

_UNSET: Any = object()
_LONG_ID = re.compile(r"conformance-([0-9a-f]{8})-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
JSON = dict[str, Any]


@dataclass(frozen=True)
class Exchange:
    """One request and the broker's answer (body parsed when it is JSON)."""

    method: str
    path: str
    status: int
    headers: httpx.Headers
    body: Any
    text: str

    @property
    def json_object(self) -> JSON | None:
        """The body when it is a JSON object, else None."""
        return self.body if isinstance(self.body, dict) else None

    @property
    def error_code(self) -> str | None:
        """The ``error`` field of an error body, if any."""
        body = self.json_object or {}
        code = body.get("error")
        return code if isinstance(code, str) else None

    @property
    def description(self) -> str:
        """The ``description`` field of an error body, or ``""``."""
        body = self.json_object or {}
        text = body.get("description")
        return text if isinstance(text, str) else ""

    def describe(self) -> str:
        """``METHOD path -> status`` plus, for errors only, the start of the body."""
        # The run's ids are uuids; their first 8 digits find them in a broker's logs.
        path = _LONG_ID.sub(r"conformance-\1…", self.path)
        line = f"{self.method} {path} -> {self.status}"
        if self.status >= 400 and self.text:
            line += f" {self.text[:160]}"
        return line


def _auth_header(username: str | None, password: str | None, bearer: str | None) -> dict[str, str]:
    if username is not None:
        token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    if bearer is not None:
        return {"Authorization": f"Bearer {bearer}"}
    return {}


class Probe:
    """Sends OSB requests with the configured credentials and version unless told otherwise."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        username: str | None = None,
        password: str | None = None,
        bearer_token: str | None = None,
    ) -> None:
        self.client = client
        self.username, self.password, self.bearer_token = username, password, bearer_token
        self.has_credentials = username is not None or bearer_token is not None
        self._auth = _auth_header(username, password, bearer_token)
        self.exchanges: list[Exchange] = []

    async def send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = _UNSET,
        content: bytes | None = None,
        auth: dict[str, str] | None = None,
        version: str | None = API_VERSION,
        headers: dict[str, str] | None = None,
    ) -> Exchange:
        """One request; ``auth``/``version`` override the defaults (``version=None`` omits it)."""
        sent: dict[str, str] = dict(self._auth if auth is None else auth)
        if version is not None:
            sent[API_VERSION_HEADER] = version
        if body is not _UNSET:
            content = json.dumps(body).encode()
        if content is not None:
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        response = await self.client.request(
            method, path, params=params, content=content, headers=sent
        )
        text = response.text
        try:
            parsed: Any = response.json()
        except ValueError:
            parsed = None
        exchange = Exchange(method, path, response.status_code, response.headers, parsed, text)
        self.exchanges.append(exchange)
        return exchange

    async def with_request_identity(self, path: str) -> tuple[str, Exchange]:
        """GET ``path`` carrying a fresh request identity; returns the identity and the answer."""
        identity = str(uuid.uuid4())
        answer = await self.send("GET", path, headers={REQUEST_IDENTITY_HEADER: identity})
        return identity, answer


@dataclass(frozen=True)
class PollResult:
    """How polling ``last_operation`` ended."""

    state: str  # "succeeded" | "failed" | "gone" | "timeout" | "invalid"
    last: Exchange | None
    polls: int
    descriptions: tuple[str, ...]
    problem: str = ""


_VALID_STATES = {"in progress", "succeeded", "failed"}


def _retry_after(exchange: Exchange) -> float:
    """The broker's Retry-After in seconds, clamped so a run stays short but polite."""
    try:
        value = float(exchange.headers.get("Retry-After", "0.5"))
    except ValueError:
        value = 0.5
    return min(max(value, 0.2), 2.0)


async def poll(
    probe: Probe, path: str, params: dict[str, str], *, deadline_s: float, deleting: bool
) -> PollResult:
    """Poll ``path`` (a last_operation URL) until a terminal state, 410 on delete, or deadline."""
    deadline = time.monotonic() + deadline_s
    descriptions: list[str] = []
    polls = 0
    last: Exchange | None = None
    while time.monotonic() < deadline:
        last = await probe.send("GET", path, params=params)
        polls += 1
        if deleting and last.status == 410:
            # spec: Polling Last Operation — 410 means the delete finished and the resource is gone.
            return PollResult("gone", last, polls, tuple(descriptions))
        body = last.json_object
        state = body.get("state") if body else None
        if last.status != 200 or state not in _VALID_STATES:
            return PollResult("invalid", last, polls, tuple(descriptions), last.describe())
        assert body is not None
        if isinstance(body.get("description"), str):
            descriptions.append(body["description"])
        if state != "in progress":
            return PollResult(str(state), last, polls, tuple(descriptions))
        await asyncio.sleep(_retry_after(last))
    return PollResult("timeout", last, polls, tuple(descriptions), f"after {deadline_s:.0f}s")
