"""The platform's small web page: marketplace, instances, bindings, operations.

Plain HTML, one script and one style sheet, served by the platform itself (no build step). The
page asks for an API token, keeps it in the browser's session storage and calls ``/api/v1`` with
it; it provisions, binds, unbinds and deprovisions, and never shows credentials (they are only
available to the CLI and ``bay run``).

:class:`SecurityHeaders` puts the browser's protections on every response: the page may run
only its own script and style and talk only to its own origin; API answers may run nothing at
all; nothing may be framed, sniffed or sent a referrer.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

WEB_DIR = Path(__file__).parent / "static"

PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# JSON, scripts and styles never need to run or load anything themselves.
API_POLICY = "default-src 'none'; frame-ancestors 'none'"
COMMON_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class SecurityHeaders:
    """Adds Content-Security-Policy, X-Frame-Options, X-Content-Type-Options and
    Referrer-Policy to every HTTP response (the HTML page gets the page policy)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                html = any(
                    k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in headers
                )
                policy = PAGE_POLICY if html else API_POLICY
                headers += [(b"content-security-policy", policy.encode()), *COMMON_HEADERS]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def index(request: Request) -> Response:
    """The page itself."""
    return FileResponse(WEB_DIR / "index.html", media_type="text/html")
