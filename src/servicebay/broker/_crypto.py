"""Encryption at rest of the store's sensitive JSON fields (parameters, credentials, requests).

The store hands every sensitive field to a `FieldCipher` before writing and after reading, so the
database only ever holds tokens: ``sb3:`` and the url-safe base64 of a random 96-bit nonce and
the AES-256-GCM ciphertext with its tag (``cryptography``'s AESGCM, a key derived from the
configured one with HKDF-SHA256). The field's identity (its ``context``: record kind, ids and
field name, e.g. ``["b","<instance>","<binding>","r"]``) is the associated data of the seal, so
a token opens only in the field it was sealed for: someone who can write the database but has
no key cannot move binding A's credentials into binding B's row, or parameters into a response.
Older tokens still open, without that binding: ``sb2:`` (the same GCM seal without associated
data, written by development builds on 2026-12-01) and Fernet tokens (AES-128-CBC +
HMAC-SHA256) of older stores; GCM took over because a Fernet encryption built a dozen Python
and OpenSSL objects each time (~13% of the CPU of an in-process lifecycle; one AESGCM call
costs a quarter of it). Keys keep Fernet's format (32 url-safe base64-encoded bytes). Where the
key comes from, in order: the configured key (``BrokerSettings.key``), the
``SERVICEBAY_BROKER_KEY`` environment variable, and for a SQLite file a key file
``servicebay-broker.key`` created with mode 0600 next to the database. A shared PostgreSQL store
has no such "next to", so it requires an explicit key. Several comma-separated keys may be given:
the first encrypts, all decrypt, which is how a key is rotated.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from servicebay.broker._store import StoreError

__all__ = ["KEY_ENV", "KEY_FILE_NAME", "EncryptionKeyError", "FieldCipher", "load_or_create_key"]

KEY_ENV = "SERVICEBAY_BROKER_KEY"
KEY_FILE_NAME = "servicebay-broker.key"
# Neither prefix is in the url-safe base64 alphabet: no Fernet token starts with one.
_PREFIX = "sb3:"  # GCM, the field's context as associated data
_PREFIX_NO_AAD = "sb2:"  # GCM without associated data (development builds of 2026-12-01)
_TAG = 16
_NONCE = 12
_HKDF_INFO = b"servicebay broker store fields: AES-256-GCM"
_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class EncryptionKeyError(StoreError):
    """No usable key: none configured where one is required, malformed, or not the store's key."""


class FieldCipher:
    """Encrypts JSON values to tokens (str) and back, remembering recent work.

    Every call names the field (``context``), which is sealed with the value as associated data:
    a token opens only with the context it was sealed with, so equal values in different fields
    never share a token and no token can be moved to another field or record. The store writes
    a record and reads it back within a request or two, and rewrites fields unchanged (a
    provision creates the row, then records its result), so two small bounded memories save most
    cipher calls, both keyed by the context too: (context, token) → JSON for tokens this process
    made or opened, and (context, JSON) → token for a field re-written with the same value.
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
        self._fernet = MultiFernet(fernets)  # opens the tokens of older stores
        # The first key seals, every key opens (rotation), as with MultiFernet.
        self._gcms = [AESGCM(_derived(part)) for part in key.split(",") if part.strip()]
        self._memory = memory
        self._opened: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._sealed: OrderedDict[tuple[str, str], str] = OrderedDict()

    def encrypt(self, value: Any, context: str) -> str:
        """The token of ``value`` as compact JSON, bound to the field ``context`` (the same token
        if the field's value is unchanged since this process last encrypted it)."""
        data = _DUMPS(value)
        token = self._sealed.get((context, data))
        if token is None:
            token = self._seal(data.encode(), context)
            self._remember(self._sealed, (context, data), token)
            self._remember(self._opened, (context, token), data)
        return token

    def decrypt(self, token: str, context: str) -> Any:
        """The JSON value inside ``token``, sealed for the field ``context``; EncryptionKeyError if
        no configured key opens it (another key, altered, or moved from another field)."""
        data = self._opened.get((context, token))
        if data is None:
            data = self._open(token, context)
            self._remember(self._opened, (context, token), data)
        return json.loads(data)

    def _seal(self, data: bytes, context: str) -> str:
        nonce = os.urandom(_NONCE)
        sealed = nonce + self._gcms[0].encrypt(nonce, data, _aad(context))
        return _PREFIX + base64.urlsafe_b64encode(sealed).decode("ascii")

    def _open(self, token: str, context: str) -> str:
        try:
            if token.startswith(_PREFIX):
                return self._open_gcm(token[len(_PREFIX) :], _aad(context))
            if token.startswith(_PREFIX_NO_AAD):
                return self._open_gcm(token[len(_PREFIX_NO_AAD) :], None)
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except (InvalidToken, InvalidTag, binascii.Error, ValueError):
            pass
        # Never echo the token or what it holds: the message says what may be wrong.
        raise EncryptionKeyError(
            "cannot decrypt the broker's stored records: the store was written with a "
            f"different key (set {KEY_ENV} or BrokerSettings.key to the key it was "
            "created with), or a stored value was altered or moved from another record"
        )

    def _open_gcm(self, text: str, aad: bytes | None) -> str:
        # Strict: a character outside the alphabet is an error, not silently skipped.
        sealed = base64.b64decode(text, altchars=b"-_", validate=True)
        if len(sealed) < _NONCE + _TAG:
            raise ValueError("token too short")
        nonce, ciphertext = sealed[:_NONCE], sealed[_NONCE:]
        for gcm in self._gcms:
            with contextlib.suppress(InvalidTag):
                return gcm.decrypt(nonce, ciphertext, aad).decode()
        raise InvalidTag

    def _remember(self, memory: OrderedDict[Any, str], key: Any, value: str) -> None:
        memory[key] = value
        if len(memory) > self._memory:
            memory.popitem(last=False)


def _aad(context: str) -> bytes:
    # surrogatepass: any str names a field, even one holding a lone surrogate.
    return context.encode("utf-8", "surrogatepass")


def _derived(key: str) -> bytes:
    """The AES-256-GCM key derived from one (already validated) Fernet key."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO)
    return hkdf.derive(base64.urlsafe_b64decode(key.strip()))


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
