"""The chat's browser protections: every HTTP answer carries them, the page's policy allows only
its own files and its own origin (the WebSocket included), and the page still works under it."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from chat_helpers import ServedChat, eventually, serve_chat

from servicebay.chat.headers import page_policy
from servicebay.chat.settings import ChatSettings

COMMON = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
STRICT = "default-src 'none'; frame-ancestors 'none'"
CHROMIUM = os.environ.get("SERVICEBAY_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[ServedChat]:
    """A chat on SQLite (the headers do not depend on the store)."""
    settings = ChatSettings(store=f"sqlite:{tmp_path / 'chat.db'}", rooms=["lobby"])
    async with serve_chat(settings) as chat:
        yield chat


def _directives(policy: str) -> dict[str, list[str]]:
    parts = [p.split() for p in policy.split(";") if p.strip()]
    return {p[0]: p[1:] for p in parts}


async def test_page_policy_allows_only_its_own_origin_and_socket(served: ServedChat) -> None:
    """GET / : default-src 'self', no inline script or style, connect-src this host's ws only."""
    async with httpx.AsyncClient(base_url=served.http) as client:
        page = await client.get("/")
    assert page.status_code == 200
    header = page.headers["content-security-policy"]
    policy = _directives(header)
    host = f"127.0.0.1:{served.port}"
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"] and policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'", f"ws://{host}", f"wss://{host}"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert not re.search(r"unsafe-|\*", header)
    for name, value in COMMON.items():
        assert page.headers[name] == value
    assert "<script>" not in page.text and "<style" not in page.text and " style=" not in page.text


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/chat.js", 200),
        ("/chat.css", 200),
        ("/healthz", 200),
        ("/metrics", 401),
        ("/api/v1/me", 401),
        ("/api/v1/openapi.json", 200),
        ("/nope", 404),
    ],
)
async def test_other_answers_carry_the_strict_policy(
    served: ServedChat, path: str, status: int
) -> None:
    """Scripts, styles, API answers and errors allow nothing and cannot be framed."""
    async with httpx.AsyncClient(base_url=served.http) as client:
        r = await client.get(path)
    assert r.status_code == status, r.text
    assert r.headers["content-security-policy"] == STRICT
    for name, value in COMMON.items():
        assert r.headers[name] == value


def test_a_forged_host_is_not_written_into_the_policy() -> None:
    """A Host header that is not host[:port] gets 'self' alone, never echoed."""
    assert "ws://" not in page_policy("evil; script-src *")
    assert "ws://" not in page_policy("a b")
    assert "ws://[::1]:8471 " in page_policy("[::1]:8471")


@pytest.mark.browser
async def test_page_works_under_its_policy(served: ServedChat) -> None:
    """In Chromium, the page loads its style and script, connects its WebSocket and chats,
    and the browser reports no refused resource."""
    playwright_api = pytest.importorskip("playwright.async_api")
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            failed: list[str] = []
            page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
            await page.goto(served.http)
            await page.fill("#name", "eve")
            await page.click("#enter")
            await page.wait_for_selector("#status.online", timeout=10_000)
            await page.fill("#text", "under policy")
            await page.press("#text", "Enter")

            async def delivered() -> bool:
                return [m.body for m in await served.store.read("lobby", 0)] == ["under policy"]

            await eventually(delivered, 10)
            # The style sheet applied: the header has its colour, not the browser default.
            colour = await page.eval_on_selector(
                "header", "h => getComputedStyle(h).backgroundColor"
            )
            assert colour == "rgb(35, 57, 93)"
            # The only failed load is the icon the browser asks for on its own (the chat has none).
            assert {u.removeprefix(served.http) for u in failed} <= {"/favicon.ico"}
            assert [e for e in errors if "404" not in e] == []
        finally:
            await browser.close()
