"""Browser protections on every chat HTTP response (the page, its files, the HTTP API).

The page may run only its own script and style and talk only to its own origin, the WebSocket
``/ws`` on the same host included; every other answer may run nothing. Nothing may be framed,
MIME-sniffed or sent a referrer. ``create_app`` puts :class:`SecurityHeaders` outermost.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'{sockets}; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
API_POLICY = "default-src 'none'; frame-ancestors 'none'"
COMMON_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
# A host[:port] the policy may name; anything else (a forged Host) gets 'self' alone.
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def page_policy(host: str) -> str:
    """The page's policy: ``'self'`` plus this host's WebSocket origins (``'self'`` alone does
    not cover ``ws:`` in every browser)."""
    sockets = f" ws://{host} wss://{host}" if _HOST.fullmatch(host) else ""
    return PAGE_POLICY.format(sockets=sockets)


class SecurityHeaders:
    """Adds Content-Security-Policy, X-Frame-Options, X-Content-Type-Options and
    Referrer-Policy to every HTTP response; HTML gets the page policy."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                html = any(
                    k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in headers
                )
                policy = page_policy(host) if html else API_POLICY
                headers += [(b"content-security-policy", policy.encode()), *COMMON_HEADERS]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
