"""BrokerSettings: environment, overrides, validation, and a description free of secrets."""

from __future__ import annotations

import pytest

from servicebay.broker._settings import BrokerSettings, SettingsError

SECRETS = {"password": "pw-9f8e7d", "bearer_token": "tok-1a2b3c", "key": "key-4d5e6f"}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in BrokerSettings.model_fields:
        monkeypatch.delenv(f"SERVICEBAY_BROKER_{name.upper()}", raising=False)


def test_defaults_are_the_documented_ones() -> None:
    """Without environment or flags: SQLite file in the working directory, no auth."""
    settings = BrokerSettings.from_env()
    assert settings.db == "sqlite:///./servicebay-broker.db"
    assert (settings.retry_after, settings.shutdown_grace, settings.log_level) == (2, 10.0, "info")
    assert settings.username is None and settings.password is None
    assert not settings.auth_configured


def test_environment_is_read_and_flags_override_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """SERVICEBAY_BROKER_* variables set values; non-None overrides (flags) win over them."""
    monkeypatch.setenv("SERVICEBAY_BROKER_USERNAME", "env-user")
    monkeypatch.setenv("SERVICEBAY_BROKER_PASSWORD", "env-pass")
    monkeypatch.setenv("SERVICEBAY_BROKER_RETRY_AFTER", "7")
    monkeypatch.setenv("SERVICEBAY_BROKER_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("SERVICEBAY_BROKER_BEARER_TOKEN", "")
    settings = BrokerSettings.from_env(username="flag-user", password=None, shutdown_grace=1.5)
    assert settings.username == "flag-user"
    assert settings.password == "env-pass"
    assert settings.retry_after == 7
    assert settings.shutdown_grace == 1.5
    assert settings.log_level == "debug"
    assert settings.bearer_token is None
    assert settings.auth_configured


@pytest.mark.parametrize(
    ("override", "setting"),
    [
        ({"retry_after": -1}, "retry_after"),
        ({"log_level": "loud"}, "log_level"),
        ({"db": "mysql://root:pw-9f8e7d@h/db"}, "db"),
        ({"shutdown_grace": "soon"}, "shutdown_grace"),
    ],
)
def test_invalid_values_name_the_setting_not_the_value(
    override: dict[str, object], setting: str
) -> None:
    """A bad value is refused with its setting and variable named, and no secret echoed."""
    with pytest.raises(SettingsError, match=setting) as caught:
        BrokerSettings.from_env(**override)
    assert f"SERVICEBAY_BROKER_{setting.upper()}" in str(caught.value)
    assert "pw-9f8e7d" not in str(caught.value)


def test_unknown_override_is_refused() -> None:
    """A misspelt setting is an error, not silently ignored."""
    with pytest.raises(SettingsError, match="pasword"):
        BrokerSettings.from_env(pasword="x")


def test_describe_and_repr_show_no_secret() -> None:
    """describe() (printed at start) and repr() say whether secrets are set, never what they are."""
    settings = BrokerSettings.from_env(
        username="admin", db="postgresql://bay:dbpw-77aa@db.example/bay", **SECRETS
    )
    described = settings.describe()
    text = repr(described) + repr(settings) + str(settings)
    for secret in [*SECRETS.values(), "dbpw-77aa"]:
        assert secret not in text
    assert described["username"] == "admin"
    assert described["password"] == "***"
    assert described["db"] == "postgresql://bay:***@db.example/bay"
    assert described["key"].startswith("***")


def test_describe_says_where_the_key_comes_from() -> None:
    """Without a key: a key file for SQLite, and a warning for PostgreSQL."""
    sqlite = BrokerSettings.from_env(db="sqlite:////var/lib/b.db").describe()
    assert "key file" in sqlite["key"]
    postgres = BrokerSettings.from_env(db="postgresql://h/db").describe()
    assert "missing" in postgres["key"]
    assert BrokerSettings.from_env().describe()["bearer_token"] is None


def test_timings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lease and abandonment timings are settable for crash tests and operators."""
    monkeypatch.setenv("SERVICEBAY_BROKER_OPERATION_LEASE", "1.5")
    monkeypatch.setenv("SERVICEBAY_BROKER_SYNC_ABANDONED_AFTER", "3")
    settings = BrokerSettings.from_env()
    assert (settings.operation_lease, settings.sync_abandoned_after) == (1.5, 3.0)
    assert BrokerSettings().sync_abandoned_after == 120.0
    with pytest.raises(SettingsError, match="SERVICEBAY_BROKER_SYNC_ABANDONED_AFTER"):
        BrokerSettings.from_env(sync_abandoned_after=0)
