"""Encryption at rest of the store's sensitive JSON fields (parameters, credentials, requests).

The store hands every sensitive field to a `FieldCipher` before writing and after reading, so the
database only ever holds Fernet tokens (AES-128-CBC + HMAC-SHA256, from ``cryptography``). Where
the key comes from, in order: the configured key (``BrokerSettings.key``), the
``SERVICEBAY_BROKER_KEY`` environment variable, and for a SQLite file a key file
``servicebay-broker.key`` created with mode 0600 next to the database. A shared PostgreSQL store
has no such "next to", so it requires an explicit key. Several comma-separated keys may be given:
the first encrypts, all decrypt, which is how a key is rotated.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from servicebay.broker._store import StoreError

__all__ = ["KEY_ENV", "KEY_FILE_NAME", "EncryptionKeyError", "FieldCipher", "load_or_create_key"]

KEY_ENV = "SERVICEBAY_BROKER_KEY"
KEY_FILE_NAME = "servicebay-broker.key"


class EncryptionKeyError(StoreError):
    """No usable key: none configured where one is required, malformed, or not the store's key."""


class FieldCipher:
    """Encrypts JSON values to Fernet tokens (str) and back, remembering recent work.

    The store writes a record and reads it back within a request or two, and rewrites fields
    unchanged (a provision creates the row, then records its result), so two small bounded
    memories save most Fernet calls: token → JSON for tokens this process made or opened, and
    (field, JSON) → token for a field re-written with the same value. The second is keyed by
    the field's identity (``context``, e.g. ``"instance/<id>/parameters"``), so equal values in
    different fields never share a token and the database shows no more than it did. The one
    exception is the empty object ``{}`` (a bind without parameters, a binding not yet answered):
    every field holding it shares one token per process, since a token's length already tells
    that its value is empty, so sharing it tells nothing more.
    """

    def __init__(self, key: str, *, memory: int = 4096) -> None:
        try:
            fernets = [Fernet(part.strip().encode()) for part in key.split(",") if part.strip()]
        except (ValueError, TypeError) as exc:
            # Never echo the key itself: the message says what is wrong, not what was given.
            raise EncryptionKeyError(
                "the broker's encryption key is not a valid Fernet key "
                "(32 url-safe base64-encoded bytes; create one with "
                '`python -c "from cryptography.fernet import Fernet; '
                'print(Fernet.generate_key().decode())"`)'
            ) from exc
        if not fernets:
            raise EncryptionKeyError("the broker's encryption key is empty")
        self._fernet = MultiFernet(fernets)
        self._memory = memory
        self._opened: OrderedDict[str, str] = OrderedDict()
        self._sealed: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._empty: str | None = None  # the token of {}, made on first use

    def encrypt(self, value: Any, context: str | None = None) -> str:
        """The Fernet token of ``value`` as compact JSON (the same token if ``context``'s value
        is unchanged since this process last encrypted it)."""
        data = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        if data == "{}":
            if self._empty is None:
                self._empty = self._fernet.encrypt(b"{}").decode("ascii")
                self._remember(self._opened, self._empty, data)
            return self._empty
        if context is not None:
            token = self._sealed.get((context, data))
            if token is not None:
                return token
        token = self._fernet.encrypt(data.encode()).decode("ascii")
        if context is not None:
            self._remember(self._sealed, (context, data), token)
        self._remember(self._opened, token, data)
        return token

    def decrypt(self, token: str) -> Any:
        """The JSON value inside ``token``; EncryptionKeyError if it was sealed with another key."""
        data = self._opened.get(token)
        if data is None:
            try:
                data = self._fernet.decrypt(token.encode("ascii")).decode()
            except InvalidToken as exc:
                raise EncryptionKeyError(
                    "cannot decrypt the broker's stored records: the store was written with a "
                    f"different key (set {KEY_ENV} or BrokerSettings.key to the key it was "
                    "created with)"
                ) from exc
            self._remember(self._opened, token, data)
        return json.loads(data)

    def _remember(self, memory: OrderedDict[Any, str], key: Any, value: str) -> None:
        memory[key] = value
        if len(memory) > self._memory:
            memory.popitem(last=False)


def load_or_create_key(key_file: Path) -> str:
    """The key stored in ``key_file``, creating the file (mode 0600) with a new key if absent.

    Safe when several broker processes start at once on one database: the file appears
    atomically with its content (written aside, then hard-linked into place), and whoever
    loses the race reads the winner's key.
    """
    try:
        return _read_key_file(key_file)
    except FileNotFoundError:
        pass
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".servicebay-key-", dir=key_file.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            os.fchmod(tmp.fileno(), 0o600)
            tmp.write(Fernet.generate_key() + b"\n")
            tmp.flush()
            os.fsync(tmp.fileno())
        # link() refuses to replace an existing file: another process's key wins the race.
        with contextlib.suppress(FileExistsError):
            os.link(tmp_name, key_file)
    finally:
        os.unlink(tmp_name)
    return _read_key_file(key_file)


def _read_key_file(key_file: Path) -> str:
    key = key_file.read_text(encoding="ascii").strip()
    if not key:
        raise EncryptionKeyError(f"the key file {key_file} is empty")
    return key
