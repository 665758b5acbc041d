"""The platform's one settings object, read from flags and ``SERVICEBAY_*`` environment.

Every platform process (``bay server``, ``bay worker``) builds exactly one
:class:`PlatformSettings` and prints :meth:`PlatformSettings.describe` at start; the description
never contains a secret (database passwords are masked, keys and tokens are not shown).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ConfigDict

from servicebay.auth_throttle import ThrottleSettings

DEFAULT_PORT = 8470


def servicebay_home() -> Path:
    """``$SERVICEBAY_HOME`` or ``~/.servicebay``: where the default database, key and token live."""
    return Path(os.environ.get("SERVICEBAY_HOME") or Path.home() / ".servicebay")


class PlatformSettings(ThrottleSettings):
    """Settings of one platform process.

    ``db`` is a SQLAlchemy URL without driver (``sqlite:///path`` or ``postgresql://...``); the
    async and migration drivers are chosen from it. ``key`` (Fernet) encrypts credentials and
    sensitive parameters at rest; when absent a key file in ``home`` is created (mode 0600).
    ``tokens`` maps API tokens to user names; when absent the token file in ``home`` is used.
    ``auth_failures`` wrong tokens from one address within ``auth_window`` seconds get it 429
    for that long (``SERVICEBAY_PLATFORM_AUTH_FAILURES``, ``SERVICEBAY_PLATFORM_AUTH_WINDOW``;
    0 failures turns that off). ``trusted_proxies`` (``SERVICEBAY_PLATFORM_TRUSTED_PROXIES``,
    comma-separated addresses or networks, none by default) are the reverse proxies whose
    ``X-Forwarded-For`` names the client counted; from any other peer it is ignored.
    """

    model_config = ConfigDict(frozen=True)

    home: Path
    db: str
    key: str | None = None
    tokens: dict[str, str] | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    run_worker: bool = True
    worker_concurrency: int = 8
    broker_timeout: float = 30.0
    lease_seconds: float = 15.0
    poll_interval: float = 0.5
    default_retry_after: float = 2.0
    max_polling_duration: float = 3600.0
    orphan_backoff_cap: float = 60.0
    log_level: str = "info"

    @classmethod
    def from_env(cls, **overrides: Any) -> PlatformSettings:
        """Build settings from ``SERVICEBAY_*`` environment, then apply non-None ``overrides``."""
        home = Path(overrides.pop("home", None) or servicebay_home())
        values: dict[str, Any] = {
            "home": home,
            "db": os.environ.get("SERVICEBAY_PLATFORM_DB") or f"sqlite:///{home / 'platform.db'}",
            "key": os.environ.get("SERVICEBAY_PLATFORM_KEY") or None,
            "tokens": parse_tokens(os.environ.get("SERVICEBAY_PLATFORM_TOKENS")),
        }
        timeout = os.environ.get("SERVICEBAY_PLATFORM_BROKER_TIMEOUT")
        if timeout:
            values["broker_timeout"] = float(timeout)
        lease = os.environ.get("SERVICEBAY_PLATFORM_LEASE_SECONDS")
        if lease:
            values["lease_seconds"] = float(lease)
        for name in ("auth_failures", "auth_window", "trusted_proxies"):
            raw = os.environ.get(f"SERVICEBAY_PLATFORM_{name.upper()}")
            if raw:
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def describe(self) -> dict[str, Any]:
        """What to print at start: everything but secrets."""
        from sqlalchemy.engine import make_url  # here, not at import: `bay` starts without it

        return {
            "home": str(self.home),
            "db": make_url(self.db).render_as_string(hide_password=True),
            "key": "from environment" if self.key else "key file",
            "tokens": "from environment" if self.tokens else "token file",
            "host": self.host,
            "port": self.port,
            "run_worker": self.run_worker,
            "worker_concurrency": self.worker_concurrency,
            "broker_timeout": self.broker_timeout,
            "auth_failures": self.auth_failures,
            "auth_window": self.auth_window,
            "trusted_proxies": self.trusted_proxies,
        }


def parse_tokens(value: str | None) -> dict[str, str] | None:
    """Parse ``user=token,token2`` into ``{token: user}``; a bare token belongs to ``admin``."""
    if not value:
        return None
    tokens: dict[str, str] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        user, sep, token = item.partition("=")
        if not sep:
            user, token = "admin", item
        tokens[token.strip()] = user.strip()
    return tokens or None
