"""The RabbitMQ broker's one settings object, read from ``SERVICEBAY_RABBITMQ_*`` or flags.

It says which RabbitMQ the broker administers (management URL and admin credentials), what it
hands out to bound apps (AMQP host and port, ``amqps`` with the CA to trust, optionally a
management URL) and the prefix of every name it creates. ``check_management_access`` is the
start-up gate: the broker refuses to serve when RabbitMQ is unreachable or refuses the
credentials, with a message saying which.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from servicebay.brokers.rabbitmq._management import ManagementAPI, ManagementAPIError

__all__ = ["ConfigurationError", "RabbitMQBrokerSettings", "check_management_access"]

ENV_PREFIX = "SERVICEBAY_RABBITMQ_"


class ConfigurationError(Exception):
    """The broker cannot start with these settings; the message says what to fix."""


class RabbitMQBrokerSettings(BaseModel):
    """Settings of the RabbitMQ broker; every field is also ``SERVICEBAY_RABBITMQ_<FIELD>``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    management_url: str = Field(
        "http://127.0.0.1:15672", description="Management API the broker administers."
    )
    management_username: str = Field("guest", description="Admin user (tag 'administrator').")
    management_password: SecretStr = Field(SecretStr("guest"), description="Its password.")
    management_verify_tls: bool = Field(True, description="Verify the management API's TLS.")
    management_ca_file: Path | None = Field(None, description="CA bundle for the management API.")
    amqp_host: str | None = Field(None, description="AMQP host handed out; default: the API's.")
    amqp_port: int | None = Field(None, ge=1, le=65535, description="Default 5672, amqps 5671.")
    amqps: bool = Field(False, description="Hand out amqps:// (TLS) URIs.")
    amqp_ca_file: Path | None = Field(
        None, description="PEM CA chain apps should trust for amqps (the `certificates` entry)."
    )
    public_management_url: str | None = Field(
        None, description="Management URL handed out to bound apps (`management-uri`)."
    )
    # The prefix is the broker's namespace in RabbitMQ: whatever carries it, the broker may
    # adopt or delete, so it cannot be empty.
    prefix: str = Field(
        "sb-", min_length=1, max_length=32, description="Prefix of created vhosts and users."
    )
    timeout: float = Field(10.0, gt=0, description="Seconds per management API request.")
    attempts: int = Field(4, ge=1, le=20, description="Tries per request on transient errors.")

    @field_validator("management_url", "public_management_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        if parts.username or parts.password:
            # Credentials belong in their own settings, which are kept out of logs.
            raise ValueError("must not contain credentials; use management_username/password")
        return value.rstrip("/")

    @field_validator("amqp_ca_file", "management_ca_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> RabbitMQBrokerSettings:
        """Settings from ``SERVICEBAY_RABBITMQ_*`` variables, then ``overrides`` (flags).

        Raises ConfigurationError naming the variable at fault.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{ENV_PREFIX}{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
                for e in exc.errors(include_input=False)
            )
            raise ConfigurationError(f"invalid RabbitMQ broker settings: {problems}") from None

    @property
    def handed_out_host(self) -> str:
        """The AMQP host bound apps connect to."""
        return self.amqp_host or urlsplit(self.management_url).hostname or "127.0.0.1"

    @property
    def handed_out_port(self) -> int:
        """The AMQP port bound apps connect to."""
        if self.amqp_port is not None:
            return self.amqp_port
        return 5671 if self.amqps else 5672

    def management_api(self) -> ManagementAPI:
        """A management API client configured from these settings."""
        verify: ssl.SSLContext | bool = self.management_verify_tls
        if self.management_verify_tls and self.management_ca_file is not None:
            verify = ssl.create_default_context(cafile=str(self.management_ca_file))
        return ManagementAPI(
            self.management_url,
            self.management_username,
            self.management_password.get_secret_value(),
            timeout=self.timeout,
            attempts=self.attempts,
            verify=verify,
        )

    def describe(self) -> dict[str, Any]:
        """The settings as printed at start: the password shows as asterisks."""
        return self.model_dump(mode="json")


async def check_management_access(settings: RabbitMQBrokerSettings, api: ManagementAPI) -> str:
    """Prove the management API is reachable and the admin credentials work; return its version.

    Raises ConfigurationError with a message an operator can act on.
    """
    where = f"RabbitMQ management API at {settings.management_url}"
    try:
        overview = await api.overview()
        me = await api.whoami()
    except ManagementAPIError as exc:
        if exc.status in (401, 403):
            raise ConfigurationError(
                f"{where} refused user {settings.management_username!r}: wrong username or "
                f"password (check SERVICEBAY_RABBITMQ_MANAGEMENT_USERNAME and "
                f"SERVICEBAY_RABBITMQ_MANAGEMENT_PASSWORD)"
            ) from None
        if exc.status is None:
            raise ConfigurationError(
                f"{where} is unreachable: is RabbitMQ running with the management plugin "
                f"(rabbitmq-plugins enable rabbitmq_management), and is "
                f"SERVICEBAY_RABBITMQ_MANAGEMENT_URL right?"
            ) from None
        raise ConfigurationError(f"{where} is failing: {exc.description}") from None
    if "administrator" not in me.tags:
        raise ConfigurationError(
            f"{where}: user {settings.management_username!r} lacks the 'administrator' tag "
            f"needed to create vhosts and users (rabbitmqctl set_user_tags "
            f"{settings.management_username} administrator)"
        )
    return str(overview.get("rabbitmq_version") or "unknown")
