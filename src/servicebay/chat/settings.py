"""The chat server's one settings object, from flags and ``SERVICEBAY_CHAT_*`` environment.

Where it sits: ``bay chat serve`` builds it, ``server.create_app`` reads it, and it is printed at
start through ``describe()`` (never the admin token).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr

from servicebay.auth_throttle import ThrottleSettings
from servicebay.chat.stores import DEFAULT_STORE, Retention, local_file

ENV_PREFIX = "SERVICEBAY_CHAT_"


class ChatSettings(ThrottleSettings):
    """How one chat server runs.

    From `ThrottleSettings`: after ``auth_failures`` wrong tokens from one address within
    ``auth_window`` seconds, that address is refused (429, or ``too_many_attempts`` on the
    WebSocket) for as long; ``trusted_proxies`` are the reverse proxies whose X-Forwarded-For
    names the client counted.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    store: str = DEFAULT_STORE
    admin_token: SecretStr | None = None
    signup: bool = True
    rooms: list[str] = Field(default_factory=lambda: ["lobby"])
    keep_all: bool = False
    keep_seconds: float = 86400.0
    keep_last: int = 100
    compact_every: float = 30.0
    log_level: str = "info"

    @classmethod
    def from_env(cls, **overrides: Any) -> ChatSettings:
        """Settings from ``SERVICEBAY_CHAT_*`` variables, then explicit overrides (flags)."""
        values: dict[str, Any] = {}
        for name, info in cls.model_fields.items():
            raw = os.environ.get(ENV_PREFIX + name.upper())
            if raw is None:
                continue
            if info.annotation == list[str]:
                values[name] = [part for part in raw.split(",") if part]
            else:
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)

    @property
    def retention(self) -> Retention:
        """Retention of the rooms this server creates."""
        return Retention(self.keep_all, self.keep_seconds, self.keep_last)

    def admin_secret(self) -> str:
        """The admin token: configured, or kept in a 0600 file next to the store's local file.

        Called once the store is open, so that file's directory exists (it is never created).
        """
        if self.admin_token is not None:
            return self.admin_token.get_secret_value()
        path = self.admin_token_path()
        if path.exists():
            return path.read_text().strip()
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token)
        return token

    def admin_token_path(self) -> Path:
        """Where the generated admin token lives: ``<file>.admin-token`` beside the store's file
        on this machine (the SQLite log, or the RabbitMQ store's metadata)."""
        local = local_file(self.store)
        return local.with_name(local.name + ".admin-token")

    def describe(self) -> dict[str, Any]:
        """Settings to print at start, without secrets."""
        shown = self.model_dump(exclude={"admin_token"})
        shown["admin_token"] = "(set)" if self.admin_token else str(self.admin_token_path())
        return shown
