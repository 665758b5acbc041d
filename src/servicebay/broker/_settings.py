"""One typed settings object per broker process: auth, database, key, timings, logging.

Values come from ``SERVICEBAY_BROKER_*`` environment variables, overridden by whatever the caller
passes (the ``bay broker serve`` flags), see `BrokerSettings.from_env`. `BrokerSettings.describe`
is what a broker prints at start: every setting, secrets reduced to whether they are set.

Setting (environment variable ``SERVICEBAY_BROKER_<NAME>``), default:

- ``username``, ``password``: basic auth; None = off.
- ``bearer_token``: accept this bearer token; None = off.
- ``db``: store URL, ``sqlite:///./servicebay-broker.db`` (a file) or ``postgresql://...``.
- ``key``: Fernet key of the encrypted fields; None = ``servicebay-broker.key`` next to a SQLite
  database (PostgreSQL requires one).
- ``retry_after``: 2 — seconds suggested to pollers of last_operation (``Retry-After``).
- ``shutdown_grace``: 10 — seconds in-flight work may finish at shutdown before it is recorded.
- ``operation_lease``: 30 — seconds after a process's last heartbeat before another process may
  take over its unfinished operation (a restarted broker resumes its own after that long).
- ``sync_abandoned_after``: 120 — seconds a synchronous provision/bind left in progress by a
  process that died blocks retries (422 ConcurrencyError) before a retry takes it over.
- ``auth_failures``: 10, ``auth_window``: 60 — after that many failed authentications from one
  address within that many seconds, the address is answered 429 (``Retry-After``) for as long;
  ``auth_failures`` 0 turns this off (for deployments that throttle elsewhere).
- ``trusted_proxies``: none — IP addresses or networks (comma-separated in the environment) of
  reverse proxies whose ``X-Forwarded-For`` names the client the throttle counts (see
  `servicebay.auth_throttle`); from any other peer the header is ignored.
- ``log_level``: ``info`` (critical, error, warning, info, debug).
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from servicebay.auth_throttle import ThrottleSettings
from servicebay.broker._crypto import KEY_FILE_NAME

__all__ = ["ENV_PREFIX", "LOG_LEVELS", "BrokerSettings", "SettingsError"]

ENV_PREFIX = "SERVICEBAY_BROKER_"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
_SECRETS = ("password", "bearer_token", "key")


class SettingsError(ValueError):
    """A setting has an invalid value; the message names the setting, never a secret's value."""


class BrokerSettings(ThrottleSettings):
    """Settings of one broker process (see the module docstring for names and defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    username: str | None = None
    # repr=False: printing or logging the settings object never shows a secret.
    password: str | None = Field(default=None, repr=False)
    bearer_token: str | None = Field(default=None, repr=False)
    db: str = "sqlite:///./servicebay-broker.db"
    key: str | None = Field(default=None, repr=False)
    retry_after: int = Field(default=2, ge=0)
    shutdown_grace: float = Field(default=10.0, ge=0)
    operation_lease: float = Field(default=30.0, gt=0)
    sync_abandoned_after: float = Field(default=120.0, gt=0)
    log_level: str = "info"

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().lower()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("db")
    @classmethod
    def _supported_database(cls, value: str) -> str:
        # The message never repeats the URL: it may carry a database password.
        try:
            backend = make_url(value).get_backend_name()
        except ArgumentError:
            backend = ""
        if backend not in ("sqlite", "postgresql", "postgres"):
            raise ValueError("must be sqlite:///path/to/file.db or postgresql://user@host/dbname")
        return value

    @classmethod
    def from_env(cls, **overrides: Any) -> BrokerSettings:
        """Settings from ``SERVICEBAY_BROKER_*`` variables; non-None ``overrides`` win.

        Empty variables count as unset. Raises SettingsError naming each invalid setting.
        """
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            env_value = os.environ.get(ENV_PREFIX + name.upper(), "")
            if env_value.strip():
                values[name] = env_value
        values.update({name: value for name, value in overrides.items() if value is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise SettingsError(_describe_errors(exc)) from None

    def __repr_args__(self) -> Any:
        # The database URL may embed a password: show it masked, as describe() does.
        for name, value in super().__repr_args__():
            yield name, (_masked_url(value) if name == "db" else value)

    @property
    def auth_configured(self) -> bool:
        """True when basic (username and password) or bearer authentication is set."""
        return bool(self.username and self.password) or bool(self.bearer_token)

    def describe(self) -> dict[str, Any]:
        """Every setting as it may be printed: secrets show only whether they are set."""
        described = self.model_dump()
        for name in _SECRETS:
            described[name] = "***" if described[name] else None
        described["db"] = _masked_url(self.db)
        described["key"] = self._key_source()
        return described

    def _key_source(self) -> str:
        if self.key:
            return "*** (configured)"
        if os.environ.get(ENV_PREFIX + "KEY"):
            return f"*** ({ENV_PREFIX}KEY)"
        url = make_url(self.db)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            return f"key file {KEY_FILE_NAME} next to the database"
        if url.get_backend_name() == "sqlite":
            return "ephemeral (in-memory database)"
        return "missing (PostgreSQL needs SERVICEBAY_BROKER_KEY)"


def _masked_url(url: str) -> str:
    return str(make_url(url).render_as_string(hide_password=True))


def _describe_errors(exc: ValidationError) -> str:
    # Built from locations and messages only: pydantic's own text repeats the input value,
    # which for a password or a database URL would be a secret.
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        name = ".".join(str(part) for part in error["loc"]) or "settings"
        env = ENV_PREFIX + name.upper()
        problems.append(f"{name} ({env}): {error['msg']}")
    return "invalid broker settings: " + "; ".join(problems)
