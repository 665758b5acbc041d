"""Credentials and parameters are encrypted at rest; the key is found, created or demanded."""

from __future__ import annotations

import sqlite3
import stat
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from cryptography.fernet import Fernet
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


def test_only_the_empty_object_shares_its_token_across_fields() -> None:
    """{} (whose token's length already says it is empty) is sealed once per process; any
    other value gets a token of its own per field, and every token opens to its value."""
    key = Fernet.generate_key().decode()
    cipher = FieldCipher(key)
    empty = {cipher.encrypt({}, f"b/i/{n}/r") for n in range(3)}
    assert len(empty) == 1
    assert FieldCipher(key).decrypt(empty.pop()) == {}
    tokens = {cipher.encrypt({"size": 1}, f"i/{n}/p") for n in range(3)}
    assert len(tokens) == 3
    assert all(FieldCipher(key).decrypt(token) == {"size": 1} for token in tokens)


def _raw_parameters(db: Path) -> list[str]:
    with sqlite3.connect(db) as raw:
        return [row[0] for row in raw.execute("SELECT parameters FROM broker_instances")]


def test_tokens_of_older_stores_still_open() -> None:
    """A field an older servicebay sealed as a Fernet token opens with the same key; what this
    version seals is an AES-GCM token that shows nothing of its value."""
    key = Fernet.generate_key().decode()
    older = Fernet(key.encode()).encrypt(b'{"password":"' + SECRET.encode() + b'"}').decode()
    assert FieldCipher(key).decrypt(older) == {"password": SECRET}
    token = FieldCipher(key).encrypt({"password": SECRET}, "b/i/b/r")
    assert token.startswith("sb2:") and SECRET not in token
    assert FieldCipher(key).decrypt(token) == {"password": SECRET}


def test_a_token_sealed_with_another_key_is_refused() -> None:
    """A token no configured key opens is a key error, never a value."""
    token = FieldCipher(Fernet.generate_key().decode()).encrypt({"password": SECRET})
    with pytest.raises(EncryptionKeyError, match="different key"):
        FieldCipher(Fernet.generate_key().decode()).decrypt(token)
