"""The platform's home and database files are its user's alone, whatever the umask.

Checked while the platform runs (the -wal and -shm files exist then) and on a home the
platform creates itself; tests/security/test_file_modes.py covers a home made beforehand.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from conftest import platform_settings, running_platform


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o000, 0o022])
async def test_home_created_0700_and_database_files_0600(tmp_path: Path, mask: int) -> None:
    """A new SERVICEBAY_HOME is 0700; platform.db, -wal and -shm are 0600 while running."""
    home = tmp_path / "home"
    settings = platform_settings(tmp_path, f"sqlite:///{home / 'platform.db'}", home=home)
    previous = os.umask(mask)
    try:
        async with running_platform(settings) as platform:
            client = platform.client
            answer = await client.post("/api/v1/namespaces", json={"name": "modes"})
            assert answer.status_code == 201, answer.text
            files = sorted(home.glob("platform.db*"))
            names = {f.name for f in files}
            assert {"platform.db", "platform.db-wal", "platform.db-shm"} <= names
            assert _mode(home) == 0o700
            assert {f.name: oct(_mode(f)) for f in files} == {f.name: "0o600" for f in files}
    finally:
        os.umask(previous)
    assert _mode(home) == 0o700
    assert [p.name for p in home.iterdir() if _mode(p) & 0o077] == []
