"""The platform's small web page: marketplace, instances, bindings, operations.

Plain HTML and one script, served by the platform itself (no build step). The page asks for
an API token, keeps it in the browser's session storage and calls ``/api/v1`` with it; it
never shows credentials (they are only available to the CLI and ``bay run``).
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response

WEB_DIR = Path(__file__).parent / "static"


async def index(request: Request) -> Response:
    """The page itself."""
    return FileResponse(WEB_DIR / "index.html", media_type="text/html")
