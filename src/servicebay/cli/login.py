"""``bay login`` / ``bay logout``: choose the platform and remember its token.

The URL and token go to ``$SERVICEBAY_HOME/cli.json`` (mode 0600) after the platform confirmed
the token (``GET /whoami``), with the namespace commands work in when given no ``-n`` (checked
to exist first). The token is never printed.
"""

from __future__ import annotations

import sys
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
    namespace: Annotated[
        str | None,
        typer.Option(
            "--namespace",
            "-n",
            help="Namespace commands use when given no -n (default: the one stored before for "
            "this platform, else default).",
        ),
    ] = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Log in to a platform: check the token and remember URL, token and namespace.

    Example: bay login --url http://127.0.0.1:8470 --namespace staging
    """
    run(_login(url, token, namespace, output))


async def _login(
    url: str | None, token: str | None, namespace: str | None, output: OutputFormat
) -> None:
    chosen = _config.target()
    url = (url or chosen.url).rstrip("/")
    if token is None and url == chosen.url.rstrip("/"):
        token = chosen.token  # re-login to the same platform keeps the token in use
    if token is None and _config.is_local(url):
        token = _config.local_platform_token()  # `bay server` on this machine wrote it
    if token is None:
        token = _ask_token()
    if not token:
        fail("no token given", 3)
    stored = _config.read_config()
    if namespace is None and stored.get("url", "").rstrip("/") == url:
        namespace = stored.get("namespace")
    async with PlatformAPI(url, token) as api:
        identity = await api.whoami()
        if namespace is not None:
            await api.namespace(namespace)  # a typo here would send every later command astray
    path = _config.save_config(url, token, namespace)
    result = {
        "url": url,
        "user": identity.get("user"),
        "admin": identity.get("admin"),
        "namespace": namespace or _config.DEFAULT_NAMESPACE,
    }
    emit(result, output, details(result.items()))
    note(f"logged in; settings stored in {path}")


def _ask_token() -> str:
    """Ask on the terminal (hidden), or read one line piped in (``... | bay login``)."""
    if sys.stdin is not None and sys.stdin.isatty():
        return str(typer.prompt("API token", hide_input=True, err=True))
    line = sys.stdin.readline() if sys.stdin is not None else ""
    if not line.strip():
        fail("no token given and no terminal to ask for one: use --token or SERVICEBAY_TOKEN", 3)
    return line.strip()


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
