"""Secrets of the platform itself: the encryption key for data at rest and the API tokens.

Both come from the environment when set (``SERVICEBAY_PLATFORM_KEY``,
``SERVICEBAY_PLATFORM_TOKENS``), otherwise from files in ``$SERVICEBAY_HOME`` that the first
start creates with mode 0600 (``platform.key``, ``platform.token``). Several platform processes
sharing one database must share the key: give them the same home or the same variable.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

KEY_FILE = "platform.key"
TOKEN_FILE = "platform.token"  # noqa: S105 - a file name, not a secret


def _create_private_file(path: Path, content: str) -> None:
    """Write ``content`` to a new file readable by its owner only; keep an existing file."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the home: ours alone
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process won the race; its content is the one to use
    with os.fdopen(fd, "w") as handle:
        handle.write(content + "\n")


def load_key(home: Path, key: str | None) -> bytes:
    """The Fernet key: ``key`` if given, else the key file in ``home`` (created on first use)."""
    if key:
        return key.encode()
    path = home / KEY_FILE
    _create_private_file(path, Fernet.generate_key().decode())
    return path.read_text().strip().encode()


def load_tokens(home: Path, tokens: dict[str, str] | None) -> dict[str, str]:
    """``{token: user}``: ``tokens`` if given, else the admin token file (created on first use)."""
    if tokens:
        return dict(tokens)
    path = home / TOKEN_FILE
    _create_private_file(path, secrets.token_urlsafe(32))
    return {path.read_text().strip(): "admin"}


class Cipher:
    """Encrypts JSON values for storage; what the database holds is never readable without it."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    def seal(self, value: Any) -> str:
        """Encrypt a JSON-serialisable value into a token string."""
        return self._fernet.encrypt(json.dumps(value, separators=(",", ":")).encode()).decode()

    def open(self, token: str | None) -> Any:
        """Decrypt what :meth:`seal` produced; ``None`` stays ``None``."""
        if token is None:
            return None
        try:
            return json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken as exc:
            raise RuntimeError("stored secret cannot be decrypted: wrong platform key") from exc
