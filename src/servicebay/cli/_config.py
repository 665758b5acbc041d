"""Where the CLI finds its platform: URL and token, from flags, environment or ``cli.json``.

Order, first wins: ``SERVICEBAY_URL`` / ``SERVICEBAY_TOKEN``; ``$SERVICEBAY_HOME/cli.json``
(written by ``bay login``, mode 0600); for a platform on this machine, the token file
``$SERVICEBAY_HOME/platform.token`` that ``bay server`` creates on first start. So after
``bay server`` nothing else is needed on the same machine.

The namespace a command works in: ``-n/--namespace``, else ``SERVICEBAY_NAMESPACE``, else the
one ``bay login --namespace`` stored in ``cli.json``, else ``default``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from servicebay.cli._api import PlatformAPI

DEFAULT_URL = "http://127.0.0.1:8470"
DEFAULT_NAMESPACE = "default"


class NotLoggedIn(Exception):
    """No token anywhere: ``bay login`` first."""


@dataclass(frozen=True)
class Target:
    """The platform a command talks to, and where that choice came from (for messages)."""

    url: str
    token: str | None
    source: str


def home() -> Path:
    """Return ``$SERVICEBAY_HOME`` (default ``~/.servicebay``)."""
    return Path(os.environ.get("SERVICEBAY_HOME") or Path.home() / ".servicebay")


def config_path() -> Path:
    """Return the path of the CLI's own settings file."""
    return home() / "cli.json"


def read_config() -> dict[str, str]:
    """Return what ``bay login`` stored (empty when it never ran)."""
    path = config_path()
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {key: str(value) for key, value in data.items() if value is not None}


def save_config(url: str, token: str, namespace: str | None = None) -> Path:
    """Store URL, token and default namespace in ``cli.json``: created 0600, replaced atomically."""
    settings = {"url": url, "token": token}
    if namespace is not None:
        settings["namespace"] = namespace
    path = config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".cli.json.")  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(settings, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def default_namespace() -> str:
    """The namespace ``bay login --namespace`` stored, else ``default``.

    An unreadable ``cli.json`` gives ``default`` here; the command reports the file itself
    when it connects (``target`` reads it again).
    """
    try:
        return read_config().get("namespace") or DEFAULT_NAMESPACE
    except (OSError, ValueError):
        return DEFAULT_NAMESPACE


def local_platform_token() -> str | None:
    """Return the token ``bay server`` wrote on this machine, if readable."""
    path = home() / "platform.token"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def is_local(url: str) -> bool:
    """Whether ``url`` points at this machine (where ``platform.token`` is the right token)."""
    host = urlsplit(url).hostname or ""
    return host in {"localhost", "127.0.0.1", "::1"}


def target() -> Target:
    """Decide which platform and token to use (see the module docstring for the order)."""
    stored = read_config()
    url = os.environ.get("SERVICEBAY_URL") or stored.get("url") or DEFAULT_URL
    token = os.environ.get("SERVICEBAY_TOKEN")
    if token:
        return Target(url, token, "SERVICEBAY_TOKEN")
    if stored.get("token"):
        return Target(url, stored["token"], str(config_path()))
    token = local_platform_token()
    if token:
        return Target(url, token, str(home() / "platform.token"))
    return Target(url, None, "nowhere")


def connect() -> PlatformAPI:
    """Return a client for the chosen platform, or raise :class:`NotLoggedIn`."""
    chosen = target()
    if chosen.token is None:
        raise NotLoggedIn(
            f"no platform token: run `bay login --url {chosen.url}` or set SERVICEBAY_TOKEN"
        )
    return PlatformAPI(chosen.url, chosen.token)
