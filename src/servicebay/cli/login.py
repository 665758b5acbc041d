"""``bay login`` / ``bay logout``: choose the platform and remember its token.

The URL and token go to ``$SERVICEBAY_HOME/cli.json`` (mode 0600) after the platform confirmed
the token (``GET /whoami``). The token is never printed.
"""

from __future__ import annotations

from typing import Annotated

import typer

from servicebay.cli import _config
from servicebay.cli._api import PlatformAPI
from servicebay.cli.output import OutputFormat, OutputOption, details, emit, fail, note, run


def login(
    url: Annotated[
        str | None,
        typer.Option(help="Platform URL (default: SERVICEBAY_URL, stored URL, or local)."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="SERVICEBAY_TOKEN",
            help="API token (default: the local platform's token file, else prompt).",
        ),
    ] = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Log in to a platform: check the token and remember URL and token.

    Example: bay login --url http://127.0.0.1:8470
    """
    run(_login(url, token, output))


async def _login(url: str | None, token: str | None, output: OutputFormat) -> None:
    chosen = _config.target()
    url = (url or chosen.url).rstrip("/")
    if token is None and url == chosen.url.rstrip("/"):
        token = chosen.token  # re-login to the same platform keeps the token in use
    if token is None and _config.is_local(url):
        token = _config.local_platform_token()  # `bay server` on this machine wrote it
    if token is None:
        token = typer.prompt("API token", hide_input=True, err=True)
    if not token:
        fail("no token given", 3)
    async with PlatformAPI(url, token) as api:
        identity = await api.whoami()
    path = _config.save_config(url, token)
    result = {"url": url, "user": identity.get("user"), "admin": identity.get("admin")}
    emit(result, output, details(result.items()))
    note(f"logged in; settings stored in {path}")


def logout() -> None:
    """Forget the stored platform URL and token.

    Example: bay logout
    """
    path = _config.config_path()
    existed = path.exists()
    path.unlink(missing_ok=True)
    note("logged out" if existed else "was not logged in")


def register(app: typer.Typer) -> None:
    """Add ``login`` and ``logout`` to ``app``."""
    app.command("login")(login)
    app.command("logout")(logout)
