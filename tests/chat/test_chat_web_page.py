"""The web page in headless Chromium: two people chat; one goes offline, messages arrive while
away, and appear in order when it comes back; "sending / sent / delivered" is shown."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from chat_helpers import ServedChat, eventually

playwright_api = pytest.importorskip("playwright.async_api")

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("SERVICEBAY_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture
async def browser() -> AsyncIterator[playwright_api.Browser]:
    """Debian's Chromium driven by Playwright."""
    async with playwright_api.async_playwright() as p:
        instance = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield instance
        finally:
            await instance.close()


async def _enter(page: playwright_api.Page, url: str, name: str) -> None:
    await page.goto(url)
    await page.fill("#name", name)
    await page.fill("#room", "lobby")
    await page.click("#enter")
    await page.wait_for_selector("#status.online", timeout=10_000)


async def _shown(page: playwright_api.Page) -> list[tuple[int, str]]:
    rows = await page.eval_on_selector_all(
        "#messages li[data-seq]",
        "els => els.map(li => [Number(li.dataset.seq), li.querySelector('.body').textContent])",
    )
    return [(int(seq), body) for seq, body in rows]


async def _say(page: playwright_api.Page, text: str) -> None:
    await page.fill("#text", text)
    await page.press("#text", "Enter")


async def test_offline_person_sees_missed_messages_in_order(
    chat: ServedChat, browser: playwright_api.Browser
) -> None:
    """Bob goes offline, Ann keeps talking; back online, Bob has everything once, in order."""
    ann_ctx, bob_ctx = await browser.new_context(), await browser.new_context()
    ann, bob = await ann_ctx.new_page(), await bob_ctx.new_page()
    await _enter(ann, chat.http, "ann")
    await _enter(bob, chat.http, "bob")

    await _say(ann, "hello bob")
    await eventually(lambda: _has(bob, [(1, "hello bob")]), 10)
    await ann.wait_for_selector("#messages li.mine[data-state=delivered]", timeout=10_000)

    await bob_ctx.set_offline(True)
    await bob.wait_for_selector("#status.offline", timeout=10_000)
    for i in range(5):
        await _say(ann, f"while away {i}")
    # Each of Ann's messages is durably stored ("sent"); none can reach Bob yet.
    await eventually(lambda: _states(ann, {"sent", "delivered"}, 6), 10)
    assert await _shown(bob) == [(1, "hello bob")]

    await bob_ctx.set_offline(False)
    expected = [(1, "hello bob")] + [(i + 2, f"while away {i}") for i in range(5)]
    await eventually(lambda: _has(bob, expected), 15)
    await eventually(lambda: _states(ann, {"delivered"}, 6), 10)
    await _say(bob, "back")
    await eventually(lambda: _has(ann, [*expected, (7, "back")]), 10)
    await ann_ctx.close()
    await bob_ctx.close()


async def _has(page: playwright_api.Page, expected: list[tuple[int, str]]) -> bool:
    return await _shown(page) == expected


async def _states(page: playwright_api.Page, allowed: set[str], count: int) -> bool:
    states = await page.eval_on_selector_all(
        "#messages li.mine", "els => els.map(li => li.dataset.state)"
    )
    return len(states) == count and set(states) <= allowed


async def test_page_shows_sending_before_the_server_answers(
    chat: ServedChat, browser: playwright_api.Browser
) -> None:
    """A message typed while disconnected shows "sending", and is sent once after reconnect."""
    ctx = await browser.new_context()
    page = await ctx.new_page()
    await _enter(page, chat.http, "cy")
    await ctx.set_offline(True)
    await page.wait_for_selector("#status.offline", timeout=10_000)
    await _say(page, "queued")
    assert await page.eval_on_selector("#messages li.mine", "li => li.dataset.state") == "sending"
    await ctx.set_offline(False)
    await eventually(lambda: _has(page, [(1, "queued")]), 15)
    assert [m.body for m in await chat.store.read("lobby", 0)] == ["queued"]
    await ctx.close()


async def test_reloaded_page_shows_history_in_order(
    chat: ServedChat, browser: playwright_api.Browser
) -> None:
    """After a reload (same browser, stored token), the retained history shows again, in order."""
    ctx = await browser.new_context()
    page = await ctx.new_page()
    await _enter(page, chat.http, "dee")
    for i in range(3):
        await _say(page, f"line {i}")
    expected = [(i + 1, f"line {i}") for i in range(3)]
    await eventually(lambda: _has(page, expected), 10)
    await page.reload()
    await _enter(page, chat.http, "dee")  # the token is reused from localStorage
    await eventually(lambda: _has(page, expected), 10)
    await ctx.close()
