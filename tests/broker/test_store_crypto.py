"""Credentials and parameters are encrypted at rest; the key is found, created or demanded."""

from __future__ import annotations

import base64
import os
import sqlite3
import stat
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from psycopg import sql
from sqlalchemy.engine import make_url

from servicebay.broker._crypto import (
    KEY_ENV,
    EncryptionKeyError,
    FieldCipher,
    load_or_create_key,
)
from servicebay.broker._store import (
    BindingRecord,
    InstanceRecord,
    OperationRecord,
    Store,
    open_store,
)

SECRET = "hunter2-" + uuid.uuid4().hex


@pytest.fixture(autouse=True)
def _no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


@pytest.fixture(scope="module")
def crypto_pg_database(postgres_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for this module, dropped afterwards."""
    name = f"sb_crypto_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _write_secrets(store: Store) -> None:
    await store.put_instance(
        InstanceRecord(
            instance_id="i-1",
            service_id="s",
            plan_id="p",
            state="ready",
            request_fingerprint="f",
            parameters={"admin_password": SECRET},
        )
    )
    await store.put_binding(
        BindingRecord(
            instance_id="i-1",
            binding_id="b-1",
            state="ready",
            request_fingerprint="f",
            parameters={"token": SECRET},
            response={"credentials": {"uri": f"amqp://u:{SECRET}@h/v", "password": SECRET}},
        )
    )
    await store.create_operation(
        OperationRecord(
            operation_id="op-1",
            kind="bind",
            instance_id="i-1",
            binding_id="b-1",
            request={"parameters": {"token": SECRET}},
        )
    )


async def test_sqlite_file_holds_no_secret_in_clear(tmp_path: Path) -> None:
    """Neither the database file nor its WAL contains a credential, yet the store reads it."""
    db = tmp_path / "broker.db"
    store = open_store(f"sqlite:///{db}")
    await store.open()
    try:
        await _write_secrets(store)
        binding = await store.get_binding("i-1", "b-1")
        assert binding is not None and binding.response["credentials"]["password"] == SECRET
        # Read raw while the store is open: part of the data may still sit in the WAL file.
        files, dump = _raw_sqlite(db)
        assert SECRET.encode() not in files
        assert "i-1" in dump and "b-1" in dump
        assert SECRET not in dump
    finally:
        await store.close()


def _raw_sqlite(db: Path) -> tuple[bytes, str]:
    """The bytes of the database and its WAL/SHM files, and a SQL dump of its rows."""
    files = b"".join(path.read_bytes() for path in db.parent.glob(db.name + "*"))
    with sqlite3.connect(db) as raw:
        return files, "\n".join(raw.iterdump())


@pytest.mark.postgres
async def test_postgres_tables_hold_no_secret_in_clear(crypto_pg_database: str) -> None:
    """Every stored row of every broker table, read raw from PostgreSQL, is free of credentials."""
    store = open_store(crypto_pg_database, Fernet.generate_key().decode())
    await store.open()
    try:
        await _write_secrets(store)
    finally:
        await store.close()
    with psycopg.connect(crypto_pg_database) as raw:
        rows = []
        for table in ("broker_instances", "broker_bindings", "broker_operations"):
            query = sql.SQL("SELECT t::text FROM {} AS t").format(sql.Identifier(table))
            rows += raw.execute(query).fetchall()
    text = "\n".join(row[0] for row in rows)
    assert "i-1" in text and "op-1" in text
    assert SECRET not in text


@pytest.mark.postgres
def test_postgres_without_a_key_is_refused_clearly(postgres_url: str) -> None:
    """A shared PostgreSQL store cannot invent a key: the error says how to provide one."""
    with pytest.raises(EncryptionKeyError, match=KEY_ENV):
        open_store(postgres_url)


async def test_sqlite_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    """Without a key, a 0600 key file appears next to the database and is reused on restart."""
    db = tmp_path / "data" / "broker.db"
    store = open_store(f"sqlite:///{db}")
    await store.open()
    await _write_secrets(store)
    await store.close()
    key_file = db.parent / "servicebay-broker.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    reopened = open_store(f"sqlite:///{db}")
    await reopened.open()
    try:
        instance = await reopened.get_instance("i-1")
        assert instance is not None and instance.parameters == {"admin_password": SECRET}
    finally:
        await reopened.close()


async def test_key_from_environment_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SERVICEBAY_BROKER_KEY is the key when none is passed; no key file is written."""
    key = Fernet.generate_key().decode()
    monkeypatch.setenv(KEY_ENV, key)
    db = tmp_path / "broker.db"
    store = open_store(f"sqlite:///{db}")
    await store.open()
    await _write_secrets(store)
    await store.close()
    assert not (tmp_path / "servicebay-broker.key").exists()
    explicit = open_store(f"sqlite:///{db}", key)
    await explicit.open()
    await explicit.close()


async def test_wrong_key_fails_at_open_without_revealing_it(tmp_path: Path) -> None:
    """Opening with another key stops at start, with a message that names neither key."""
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    right, wrong = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    store = open_store(url, right)
    await store.open()
    await store.close()
    other = open_store(url, wrong)
    with pytest.raises(EncryptionKeyError, match="different key") as caught:
        await other.open()
    assert right not in str(caught.value) and wrong not in str(caught.value)


async def test_key_rotation_reads_old_records(tmp_path: Path) -> None:
    """With "new,old" keys the store still reads what the old key wrote."""
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    store = open_store(url, old)
    await store.open()
    await _write_secrets(store)
    await store.close()
    rotated = open_store(url, f"{new},{old}")
    await rotated.open()
    try:
        binding = await rotated.get_binding("i-1", "b-1")
        assert binding is not None and binding.parameters == {"token": SECRET}
    finally:
        await rotated.close()


async def test_malformed_key_is_refused_without_echoing_it(tmp_path: Path) -> None:
    """A key that is not Fernet is rejected; the message explains the format, not the value."""
    bad = "not-a-fernet-key-" + SECRET
    store = open_store(f"sqlite:///{tmp_path / 'b.db'}", bad)
    with pytest.raises(EncryptionKeyError, match="not a valid Fernet key") as caught:
        await store.open()
    assert SECRET not in str(caught.value)


def test_concurrent_key_file_creation_agrees_on_one_key(tmp_path: Path) -> None:
    """Processes starting together on a fresh database all end up with the same key."""
    key_file = tmp_path / "servicebay-broker.key"
    with ThreadPoolExecutor(max_workers=8) as pool:
        keys = set(pool.map(lambda _: load_or_create_key(key_file), range(16)))
    assert len(keys) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["servicebay-broker.key"]


async def test_equal_values_in_different_records_never_share_a_token(tmp_path: Path) -> None:
    """Remembered encryptions are per field: the database cannot tell two equal secrets apart."""
    db = tmp_path / "broker.db"
    store = open_store(f"sqlite:///{db}")
    await store.open()
    try:
        for instance_id in ("i-1", "i-2"):
            record = InstanceRecord(
                instance_id=instance_id,
                service_id="s",
                plan_id="p",
                state="provisioning",
                request_fingerprint="f",
                parameters={"admin_password": SECRET},
            )
            await store.create_instance(record)
            record.state = "ready"
            await store.put_instance(record)  # same value again, same field
        tokens = _raw_parameters(db)
    finally:
        await store.close()
    assert len(tokens) == 2 and len(set(tokens)) == 2
    assert all(SECRET not in token for token in tokens)


def test_equal_values_in_different_fields_never_share_a_token() -> None:
    """Every field gets a token of its own, {} included, and every token opens to its value."""
    key = Fernet.generate_key().decode()
    cipher = FieldCipher(key)
    for value in ({}, {"size": 1}):
        tokens = {f"b/i/{n}/r": cipher.encrypt(value, f"b/i/{n}/r") for n in range(3)}
        assert len(set(tokens.values())) == 3
        assert all(FieldCipher(key).decrypt(t, field) == value for field, t in tokens.items())


def _raw_parameters(db: Path) -> list[str]:
    with sqlite3.connect(db) as raw:
        return [row[0] for row in raw.execute("SELECT parameters FROM broker_instances")]


def test_tokens_of_older_stores_still_open() -> None:
    """Fields an older servicebay sealed (Fernet, and GCM without associated data as "sb2:")
    open with the same key; what this version seals is an "sb3:" token showing nothing."""
    key = Fernet.generate_key().decode()
    value = b'{"password":"' + SECRET.encode() + b'"}'
    older = Fernet(key.encode()).encrypt(value).decode()
    assert FieldCipher(key).decrypt(older, "i/x/p") == {"password": SECRET}
    assert FieldCipher(key).decrypt(_sb2(key, value), "i/x/p") == {"password": SECRET}
    token = FieldCipher(key).encrypt({"password": SECRET}, "b/i/b/r")
    assert token.startswith("sb3:") and SECRET not in token
    assert FieldCipher(key).decrypt(token, "b/i/b/r") == {"password": SECRET}


def _sb2(key: str, data: bytes) -> str:
    """A token as the development builds of 2026-12-01 sealed it (no associated data)."""
    derived = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"servicebay broker store fields: AES-256-GCM",
    ).derive(base64.urlsafe_b64decode(key))
    nonce = os.urandom(12)
    sealed = nonce + AESGCM(derived).encrypt(nonce, data, None)
    return "sb2:" + base64.urlsafe_b64encode(sealed).decode()


def test_a_token_sealed_with_another_key_is_refused() -> None:
    """A token no configured key opens is a key error, never a value."""
    token = FieldCipher(Fernet.generate_key().decode()).encrypt({"password": SECRET}, "f")
    with pytest.raises(EncryptionKeyError, match="different key"):
        FieldCipher(Fernet.generate_key().decode()).decrypt(token, "f")


@pytest.mark.parametrize(
    "to_field",
    [
        '["b","i-1","b-2","r"]',  # the same field of another binding
        '["b","i-2","b-1","r"]',  # a binding of the same id under another instance
        '["b","i-1","b-1","p"]',  # another field of the same binding
        '["i","i-1","p"]',  # another kind of record
    ],
)
@pytest.mark.parametrize("fresh", [True, False], ids=["other-process", "same-process"])
def test_a_token_moved_to_another_field_does_not_open(to_field: str, fresh: bool) -> None:
    """A token opens only in the field it was sealed for, even in the process that sealed it
    (whose memory of tokens is per field): moved elsewhere, it is an error naming no secret."""
    key = Fernet.generate_key().decode()
    sealer = FieldCipher(key)
    token = sealer.encrypt({"password": SECRET}, '["b","i-1","b-1","r"]')
    opener = FieldCipher(key) if fresh else sealer
    with pytest.raises(EncryptionKeyError, match="moved from another record") as caught:
        opener.decrypt(token, to_field)
    assert SECRET not in str(caught.value) and token not in str(caught.value)
    assert opener.decrypt(token, '["b","i-1","b-1","r"]') == {"password": SECRET}


async def test_a_credential_moved_to_another_binding_row_is_refused(tmp_path: Path) -> None:
    """Copying binding A's sealed response into binding B's row (database write access, no
    key) does not hand A's credentials to B's reader: reading B fails, A still reads."""
    db = tmp_path / "broker.db"
    key = Fernet.generate_key().decode()
    store = open_store(f"sqlite:///{db}", key)
    await store.open()
    await _write_secrets(store)
    await store.put_binding(
        BindingRecord(
            instance_id="i-1",
            binding_id="b-2",
            state="ready",
            request_fingerprint="f",
            parameters={},
            response={"credentials": {"password": "b-2's own"}},
        )
    )
    await store.close()
    with sqlite3.connect(db) as raw:
        raw.execute(
            "UPDATE broker_bindings SET response = (SELECT response FROM broker_bindings"
            " WHERE binding_id = 'b-1') WHERE binding_id = 'b-2'"
        )
    reopened = open_store(f"sqlite:///{db}", key)
    await reopened.open()
    try:
        with pytest.raises(EncryptionKeyError) as caught:
            await reopened.get_binding("i-1", "b-2")
        assert SECRET not in str(caught.value)
        binding = await reopened.get_binding("i-1", "b-1")
        assert binding is not None and binding.response["credentials"]["password"] == SECRET
    finally:
        await reopened.close()


def test_a_tampered_token_is_refused() -> None:
    """Flipping any one bit of a token's sealed bytes (nonce, ciphertext or tag) is an error."""
    key = Fernet.generate_key().decode()
    token = FieldCipher(key).encrypt({"password": SECRET}, "f")
    sealed = base64.urlsafe_b64decode(token[4:])
    for index in (0, 12, len(sealed) - 1):  # nonce, ciphertext, tag
        flipped = bytearray(sealed)
        flipped[index] ^= 0x01
        tampered = "sb3:" + base64.urlsafe_b64encode(bytes(flipped)).decode()
        with pytest.raises(EncryptionKeyError):
            FieldCipher(key).decrypt(tampered, "f")


def test_a_token_sealed_under_the_second_key_of_a_rotation_opens() -> None:
    """With "new,old" keys, a token the old key sealed opens; the new key seals from then on."""
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = FieldCipher(old).encrypt({"password": SECRET}, "f")
    rotated = FieldCipher(f"{new},{old}")
    assert rotated.decrypt(token, "f") == {"password": SECRET}
    assert FieldCipher(new).decrypt(rotated.encrypt({"n": 1}, "g"), "g") == {"n": 1}
    with pytest.raises(EncryptionKeyError):
        FieldCipher(new).decrypt(token, "f")


@pytest.mark.parametrize(
    "garbage",
    [
        "sb3:",
        "sb3:AAAA",
        "sb2:AAAA",
        "sb3:" + "A" * 38,  # shorter than a nonce and a tag
        "sb3:!!!!not base64!!!!",
        "sb3:ÿÿÿÿ",
        "sb2:\ud800",
        "gAAAAAtruncated",
        "",
        "{}",
    ],
)
def test_truncated_or_garbage_tokens_are_refused(garbage: str) -> None:
    """A token that is truncated or not a token at all is a key error, never a value."""
    with pytest.raises(EncryptionKeyError):
        FieldCipher(Fernet.generate_key().decode()).decrypt(garbage, "f")


def test_non_alphabet_characters_are_not_skipped() -> None:
    """Base64 is decoded strictly: a valid token with a stray character in it is refused."""
    key = Fernet.generate_key().decode()
    token = FieldCipher(key).encrypt({"password": SECRET}, "f")
    with pytest.raises(EncryptionKeyError):
        FieldCipher(key).decrypt(token[:10] + "*" + token[10:], "f")


async def test_a_store_of_the_previous_format_opens_and_is_marked_newer(tmp_path: Path) -> None:
    """A store an older servicebay wrote (schema 1, Fernet key check and fields) opens; it is
    then marked schema 2, so an older servicebay, which cannot open "sb3:" tokens, refuses it
    with "upgrade" rather than reading "wrong key"."""
    db = tmp_path / "broker.db"
    key = Fernet.generate_key().decode()
    store = open_store(f"sqlite:///{db}", key)
    await store.open()
    await store.close()
    fernet = Fernet(key.encode())
    with sqlite3.connect(db) as raw:
        check = fernet.encrypt(b'"servicebay-broker-key-check"').decode()
        raw.execute("UPDATE broker_schema SET version = 1, key_check = ?", (check,))
    reopened = open_store(f"sqlite:///{db}", key)
    await reopened.open()
    await reopened.close()
    with sqlite3.connect(db) as raw:
        assert raw.execute("SELECT version FROM broker_schema").fetchall() == [(2,)]
