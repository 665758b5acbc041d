"""Settings of the chat server: environment and flags, the admin token kept secret."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from servicebay.chat.settings import ChatSettings


def test_environment_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """SERVICEBAY_CHAT_* variables apply; explicit values (flags) win over them."""
    monkeypatch.setenv("SERVICEBAY_CHAT_PORT", "9001")
    monkeypatch.setenv("SERVICEBAY_CHAT_ROOMS", "a,b")
    monkeypatch.setenv("SERVICEBAY_CHAT_KEEP_ALL", "true")
    settings = ChatSettings.from_env(port=9002, host=None)
    assert (settings.port, settings.rooms, settings.keep_all) == (9002, ["a", "b"], True)
    assert settings.host == "127.0.0.1"
    assert settings.retention.keep_all is True


def test_generated_admin_token_is_private_and_never_described(tmp_path: Path) -> None:
    """Without a configured token, one is generated into a 0600 file and reused; describe()
    (printed at start) never shows it."""
    settings = ChatSettings(store=f"sqlite:{tmp_path / 'chat.db'}")
    token = settings.admin_secret()
    path = settings.admin_token_path()
    assert path == tmp_path / "chat.db.admin-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert settings.admin_secret() == token
    assert token not in str(settings.describe())


def test_configured_admin_token_is_not_described() -> None:
    """A token given in the environment is used, and described only as "(set)"."""
    settings = ChatSettings(admin_token="s3cret-admin")  # type: ignore[arg-type]
    assert settings.admin_secret() == "s3cret-admin"
    assert "s3cret-admin" not in str(settings.describe())
    assert settings.describe()["admin_token"] == "(set)"


def test_rabbitmq_store_keeps_its_admin_token_beside_its_metadata(tmp_path: Path) -> None:
    """The RabbitMQ store's generated token sits next to its metadata file (as the SQLite
    store's next to its database), not in the home directory."""
    settings = ChatSettings(store=f"rabbitmq:chat-mq?state={tmp_path / 'meta.db'}")
    assert settings.admin_token_path() == tmp_path / "meta.db.admin-token"
    assert ChatSettings(store="rabbitmq").admin_token_path() == Path(
        "servicebay-chat-rabbitmq.db.admin-token"
    )


def test_serve_tunes_the_interpreter_for_load() -> None:
    """`bay chat serve` freezes what is loaded at start out of the collector's scans, collects
    the young generation less often and shortens the GIL's switch interval (in a fresh
    interpreter: the settings are process-wide)."""
    script = (
        "import gc, sys\n"
        "from servicebay.cli.chat import GC_THRESHOLDS, SWITCH_INTERVAL, tune_interpreter\n"
        "before = gc.get_freeze_count()\n"
        "tune_interpreter()\n"
        "assert before == 0 and gc.get_freeze_count() > 1000, gc.get_freeze_count()\n"
        "assert gc.get_threshold() == GC_THRESHOLDS != (700, 10, 10), gc.get_threshold()\n"
        "assert sys.getswitchinterval() == SWITCH_INTERVAL < 0.005\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
