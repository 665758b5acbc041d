"""The platform's web page in headless Chromium, against the sandbox broker in its own process:
a user pastes the token, provisions with parameters (a bad one is named), binds, unbinds and
deprovisions, under the page's Content-Security-Policy and without ever seeing a credential."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from conftest import ADMIN_TOKEN, platform_settings, served
from servicebay.platform import create_app
from servicebay.testing import ServedBroker, serve_broker

playwright_api = pytest.importorskip("playwright.async_api")

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

CHROMIUM = os.environ.get("SERVICEBAY_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
WAIT_MS = 20_000


@dataclass
class ServedPlatform:
    """The platform on a real port, and an admin API client for checking what the page did."""

    url: str
    api: httpx.AsyncClient


@pytest.fixture(scope="module")
def sandbox() -> Iterator[ServedBroker]:
    """The sandbox broker in its own process."""
    with serve_broker("servicebay.examples.sandbox:broker") as broker:
        yield broker


@pytest.fixture
async def platform_url(tmp_path: Path, sandbox: ServedBroker) -> AsyncIterator[ServedPlatform]:
    """The platform (SQLite, in-process worker) on a real port, the sandbox registered."""
    settings = platform_settings(
        tmp_path, f"sqlite:///{tmp_path / 'platform.db'}", broker_timeout=10.0
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app), served(app) as url:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as api:
            r = await api.post(
                "/api/v1/brokers",
                json={
                    "name": "sandbox",
                    "url": sandbox.url,
                    "username": sandbox.username,
                    "password": sandbox.password,
                },
            )
            assert r.status_code == 201, r.text
            yield ServedPlatform(url, api)


@pytest.fixture
async def page() -> AsyncIterator[playwright_api.Page]:
    """A fresh page in Debian's Chromium driven by Playwright; it fails the test on any console
    error (a script refused by the CSP, an uncaught exception) and accepts confirmations."""
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            context = await browser.new_context()
            tab = await context.new_page()
            errors: list[str] = []
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
            yield tab
            # 401 and 422 answers are expected and show in the page; anything else is a fault.
            unexpected = [e for e in errors if "the server responded with a status of" not in e]
            assert unexpected == []
        finally:
            await browser.close()


async def _eventually(check: Callable[[], Awaitable[bool]], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def _login(page: playwright_api.Page, url: str, token: str) -> None:
    await page.goto(url)
    await page.wait_for_selector("#login:not([hidden])")
    await page.fill("#token", token)
    await page.click("#login button[type=submit]")


def _row(view: str, name: str) -> str:
    return f'#view[data-view="{view}"] tr[data-name="{name}"]'


async def test_user_provisions_binds_unbinds_and_deprovisions_from_the_page(
    platform_url: ServedPlatform, page: playwright_api.Page
) -> None:
    """Token → marketplace → provision (a bad size is named) → ready → bind → unbind →
    deprovision; the binding's credentials never reach the page."""
    api = platform_url.api
    await _login(page, platform_url.url, ADMIN_TOKEN)
    await page.wait_for_selector("#whoami:has-text('signed in as admin')")
    await page.wait_for_selector('[data-service="sandbox"] tr[data-name="param"]')
    plans = await page.eval_on_selector_all(
        '[data-service="sandbox"] tr[data-name]', "rows => rows.map(r => r.dataset.name)"
    )
    assert {"sync", "async", "param"} <= set(plans)

    await page.click('[data-service="sandbox"] tr[data-name="async"] button.provision')
    form = '[data-service="sandbox"] form.provision'
    await page.fill(f'{form} input[name="instance-name"]', "orders-db")
    await page.fill(f'{form} input[name="size"]', "50")
    await page.fill(f'{form} input[name="delay_seconds"]', "1.5")
    await page.click(f"{form} button[type=submit]")
    problem = f'{form} [data-param="size"] .problem'
    await page.wait_for_selector(f"{problem}:not(:empty)")
    assert "must be <= 10" in await page.text_content(problem)  # type: ignore[operator]
    status = await page.text_content("#status")
    assert status is not None and "size" in status and "10" in status, status
    assert "size: size" not in status
    # Said again inside the form, where the user is looking, not only at the top of the page.
    assert status in (await page.text_content(f"{form} .form-error") or "")
    assert (await api.get("/api/v1/instances/orders-db")).status_code == 404

    await page.fill(f'{form} input[name="size"]', "3")
    await page.click(f"{form} button[type=submit]")
    # The instance shows while the broker works, then ready, without reloading the page.
    await page.wait_for_selector(
        _row("instances", "orders-db") + ' td[data-state="provisioning"]', timeout=WAIT_MS
    )
    await page.wait_for_selector(
        _row("instances", "orders-db") + ' td[data-state="ready"]', timeout=WAIT_MS
    )
    shown = await page.text_content(_row("instances", "orders-db"))
    assert shown is not None and '"size":3' in shown

    await page.click(_row("instances", "orders-db") + " button.bind")
    await page.fill('form.bind input[name="app"]', "chat")
    await page.click("form.bind button[type=submit]")
    await page.wait_for_selector(
        _row("bindings", "orders-db-chat") + ' td[data-state="ready"]', timeout=WAIT_MS
    )
    credentials = (await api.get("/api/v1/apps/chat/bindings")).json()["items"][0]["credentials"]
    text = await page.text_content("body")
    html = await page.content()
    for secret in (credentials["password"], credentials["uri"]):
        assert secret not in (text or "") and secret not in html

    await page.click(_row("bindings", "orders-db-chat") + " button.unbind")
    await page.wait_for_selector(
        _row("bindings", "orders-db-chat"), state="detached", timeout=WAIT_MS
    )
    assert (await api.get("/api/v1/apps/chat/bindings")).json()["items"] == []

    await page.click("nav a[data-view=instances]")
    await page.click(_row("instances", "orders-db") + " button.deprovision")
    await page.wait_for_selector(_row("instances", "orders-db"), state="detached", timeout=WAIT_MS)

    async def gone() -> bool:
        return (await api.get("/api/v1/instances/orders-db")).status_code == 404

    await _eventually(gone)


async def test_a_wrong_token_is_refused_and_the_form_asks_again(
    platform_url: ServedPlatform, page: playwright_api.Page
) -> None:
    """A token the platform does not know shows the login form again, with the reason."""
    await _login(page, platform_url.url, "not-a-token")
    await page.wait_for_selector("#status:has-text('did not accept that token')")
    assert await page.is_visible("#login")
    assert await page.evaluate("sessionStorage.getItem('servicebay-token')") is None


async def test_a_write_only_parameter_is_typed_hidden_and_never_shown_back(
    platform_url: ServedPlatform, page: playwright_api.Page
) -> None:
    """The param plan's ``secret`` (writeOnly) is a password field; the instance shows ``***``."""
    await _login(page, platform_url.url, ADMIN_TOKEN)
    await page.click('[data-service="sandbox"] tr[data-name="param"] button.provision')
    form = '[data-service="sandbox"] form.provision'
    secret = f'{form} input[name="secret"]'
    assert await page.get_attribute(secret, "type") == "password"
    await page.fill(f'{form} input[name="instance-name"]', "vault")
    await page.fill(secret, "hunter2-very-secret")
    await page.click(f"{form} button[type=submit]")
    ready = _row("instances", "vault") + ' td[data-state="ready"]'
    await page.wait_for_selector(ready, timeout=WAIT_MS)
    shown = await page.text_content(_row("instances", "vault"))
    assert shown is not None and '"secret":"***"' in shown
    assert "hunter2-very-secret" not in await page.content()
