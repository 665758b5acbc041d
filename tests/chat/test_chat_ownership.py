"""One server owns a store: a second one is refused before it touches anything, and the owner's
lock is free the moment the owner is SIGKILLed (the chaos tests restart at once)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from chat_helpers import BACKENDS, eventually, serve_chat

from servicebay.chat.settings import ChatSettings
from servicebay.chat.stores import StoreInUse, StoreNotOpened, open_store
from support import chat_rabbitmq

ADMIN = "ownership-admin-token"


@pytest.mark.parametrize("store_url", BACKENDS)
async def test_a_second_open_of_an_owned_store_is_refused(
    store_url: Callable[[Path], str], tmp_path: Path
) -> None:
    """While one store object has the store open, another is refused (StoreInUse); once the
    first closes, the second opens."""
    url = store_url(tmp_path)
    first, second = open_store(url), open_store(url)
    await first.open()
    try:
        with pytest.raises(StoreInUse, match="in use by another chat server"):
            await second.open()
    finally:
        await first.close()
    await second.open()
    await second.close()


@pytest.mark.rabbitmq
async def test_a_copy_of_a_rabbitmq_store_elsewhere_is_refused(tmp_path: Path) -> None:
    """A server with a copy of the metadata file (another directory or host) finds the store's
    exclusive owner queue held in RabbitMQ and is refused."""
    url = chat_rabbitmq.store_url(tmp_path)
    first = open_store(url)
    await first.open()
    try:
        copy = tmp_path / "copy.db"
        with sqlite3.connect(tmp_path / "chat-meta.db") as src, sqlite3.connect(copy) as dst:
            src.backup(dst)
        twin = open_store(url.replace("chat-meta.db", "copy.db"))
        with pytest.raises(StoreInUse, match=r"holds the RabbitMQ queue chat\..*\.owner"):
            await twin.open()
    finally:
        await first.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _serve(store: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "servicebay.cli.chat", "serve", "--store", store]
    cmd += ["--port", str(port)]
    env = {**os.environ, "SERVICEBAY_CHAT_ADMIN_TOKEN": ADMIN}
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=out, env=env)


async def _ready(port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

        async def answers() -> bool:
            try:
                return (await http.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(answers, 60)


async def test_second_server_on_the_same_sqlite_store_exits_2_and_the_first_keeps_serving(
    tmp_path: Path,
) -> None:
    """`bay chat serve` on a store another server owns (other port) says so in one line and
    exits 2; every post through the owner then succeeds, in sequence."""
    store = f"sqlite:{tmp_path / 'chat.db'}"
    port = _free_port()
    owner = _serve(store, port, tmp_path / "owner.log")
    try:
        await _ready(port)
        second = await asyncio.to_thread(_run_serve, "--store", store)
        errors = [line for line in second.stderr.splitlines() if "error" in line.lower()]
        assert second.returncode == 2
        assert errors == [
            f"error: the store {tmp_path / 'chat.db'} is in use by another chat server "
            f"(pid {owner.pid}, lock {tmp_path / 'chat.db.lock'}): one server per store"
        ]
        assert "Traceback" not in second.stderr
        admin = {"Authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=admin) as http:
            (await http.post("/api/v1/users", json={"id": "ann"})).raise_for_status()
            (await http.put("/api/v1/rooms/lobby/members/ann")).raise_for_status()
            token = (await http.post("/api/v1/users/ann/tokens", json={})).json()["token"]
            ann = {"Authorization": f"Bearer {token}"}
            seqs = []
            for n in range(10):
                sent = await http.post(
                    "/api/v1/rooms/lobby/messages", json={"key": f"k{n}", "body": "hi"}, headers=ann
                )
                assert sent.status_code == 201, sent.text
                seqs.append(sent.json()["seq"])
        assert seqs == list(range(1, 11))
    finally:
        owner.kill()
        owner.wait()


async def test_the_lock_is_free_right_after_kill_9(tmp_path: Path) -> None:
    """A server SIGKILLed holds nothing: one started at once on the same store and port
    serves (the kernel drops the lock with the dead process). Settings are printed once."""
    store = f"sqlite:{tmp_path / 'chat.db'}"
    port = _free_port()
    first = _serve(store, port, tmp_path / "first.log")
    await _ready(port)
    first.send_signal(signal.SIGKILL)
    first.wait()
    again = _serve(store, port, tmp_path / "again.log")
    try:
        await _ready(port)
        assert again.poll() is None
        log = (tmp_path / "again.log").read_text()
        assert "error" not in log
        assert log.count("keep_last") == 1
    finally:
        again.terminate()
        assert await asyncio.to_thread(again.wait, 30) == 0


def _run_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "servicebay.cli.chat", "serve", "--port", str(_free_port())]
    return subprocess.run(
        cmd + list(args),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def _one_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single error line of a refused start (exit 2, no traceback)."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_rabbitmq_store_without_a_binding_is_one_line(tmp_path: Path) -> None:
    """No binding of type rabbitmq: one line that says how to bind and start, exit 2."""
    env = {"SERVICE_BINDING_ROOT": ""}
    line = _one_error(_run_serve("--store", f"rabbitmq:?state={tmp_path / 'm.db'}", env=env))
    assert line.startswith("error: no binding matches type='rabbitmq'")
    assert "bay run --app chat -- bay chat serve --store rabbitmq" in line
    assert not (tmp_path / "m.db").exists()


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ({"type": "rabbitmq"}, "error: the binding 'chat-mq' has no entry 'uri'"),
        (
            {"type": "rabbitmq", "uri": "http://127.0.0.1/"},
            "error: the binding 'chat-mq': entry 'uri' is not an amqp:// URI",
        ),
    ],
    ids=["no-uri", "not-amqp"],
)
def test_rabbitmq_store_with_a_malformed_binding_is_one_line(
    tmp_path: Path, entries: dict[str, str], expected: str
) -> None:
    """A binding without a usable ``uri`` entry: one line naming the binding, exit 2."""
    binding = tmp_path / "bindings" / "chat-mq"
    binding.mkdir(parents=True)
    for name, value in entries.items():
        (binding / name).write_text(value)
    env = {"SERVICE_BINDING_ROOT": str(tmp_path / "bindings")}
    line = _one_error(_run_serve("--store", f"rabbitmq:?state={tmp_path / 'm.db'}", env=env))
    assert line == expected


@pytest.mark.rabbitmq
def test_rabbitmq_refusing_the_credentials_is_one_line(tmp_path: Path) -> None:
    """RabbitMQ up but refusing the binding's password: one line, exit 2, password not shown
    (an unreachable RabbitMQ is not refused: the server starts and waits for it)."""
    uri = "amqp://guest:not-the-password@127.0.0.1:5672/"
    url = chat_rabbitmq.store_url(tmp_path, uri)
    line = _one_error(_run_serve("--store", url))
    assert line == (
        "error: RabbitMQ refused the connection: ProbableAuthenticationError: "
        "check the binding's credentials and vhost"
    )


def test_sqlite_store_in_a_missing_directory_is_refused_and_nothing_created(
    tmp_path: Path,
) -> None:
    """`--store sqlite:/missing/dir/x.db` does not create the directory: one line, exit 2."""
    missing = tmp_path / "missing" / "dir"
    line = _one_error(_run_serve("--store", f"sqlite:{missing / 'x.db'}"))
    assert line == f"error: the directory {missing} of the SQLite store does not exist"
    assert not (tmp_path / "missing").exists()


def test_unreadable_sqlite_store_is_one_line(tmp_path: Path) -> None:
    """A path SQLite cannot open (here a directory): one line, exit 2."""
    (tmp_path / "x.db").mkdir()
    line = _one_error(_run_serve("--store", f"sqlite:{tmp_path / 'x.db'}"))
    assert line.startswith(f"error: cannot open the SQLite store {tmp_path / 'x.db'}: ")


def test_busy_port_is_refused_before_the_store_is_touched(tmp_path: Path) -> None:
    """The port is bound before the store is opened: a busy port leaves the store untouched."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run_serve("--store", f"sqlite:{tmp_path / 'x.db'}", "--port", str(port))
    assert _one_error(result) == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert list(tmp_path.iterdir()) == []


async def test_store_failure_text_stays_out_of_error_bodies(tmp_path: Path) -> None:
    """A commit the database refuses (a rogue writer took the next seq behind the server's
    back) answers 503 "unavailable" with the generic text; the database's words stay in the
    log."""
    settings = ChatSettings(store=f"sqlite:{tmp_path / 'chat.db'}", admin_token=ADMIN)  # type: ignore[arg-type]
    async with serve_chat(settings) as chat:
        token = await chat.user("ann", "lobby")
        ann = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=chat.http, headers=ann) as http:
            first = await http.post("/api/v1/rooms/lobby/messages", json={"key": "a", "body": "1"})
            assert first.json()["seq"] == 1
            with sqlite3.connect(tmp_path / "chat.db") as rogue:
                rogue.execute("INSERT INTO messages VALUES ('lobby', 2, 'ann', 'rogue', 'x', 0)")
            failed = await http.post("/api/v1/rooms/lobby/messages", json={"key": "b", "body": "2"})
    assert failed.status_code == 503
    assert failed.json() == {
        "error": "unavailable",
        "message": "the store is unavailable; retry with the same key",
    }


async def test_sqlite_store_does_not_create_missing_directories(tmp_path: Path) -> None:
    """Opening a store in a directory that does not exist is refused; nothing is created."""
    store = open_store(f"sqlite:{tmp_path / 'no' / 'such' / 'x.db'}")
    with pytest.raises(StoreNotOpened, match="does not exist"):
        await store.open()
    assert not (tmp_path / "no").exists()


@pytest.mark.rabbitmq
async def test_rabbitmq_append_failure_text_stays_in_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that fails for an unexpected reason answers its senders "unavailable" without
    the exception's words (they may name streams, URIs or data)."""
    from servicebay.chat.stores.base import StoreUnavailable
    from servicebay.chat.stores.rabbitmq import RabbitMQChatStore

    async def broken(*args: object) -> None:
        raise RuntimeError("internal detail amqp://user:pw@host")

    store = open_store(chat_rabbitmq.store_url(tmp_path))
    await store.open()
    try:
        await store.put_room("r")
        await store.put_user("ann")
        await store.join("r", "ann")
        monkeypatch.setattr(RabbitMQChatStore, "_write_batch", broken)
        with pytest.raises(StoreUnavailable) as failed:
            await store.append("r", "ann", "k1", "hello")
        assert str(failed.value) == "the append was not stored; retry"
    finally:
        await store.close()


def test_owner_lock_not_written_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recording the owner's pid fails (a full disk): the open is refused as ``StoreNotOpened``,
    and neither the descriptor nor the lock stays behind to refuse the next open."""
    from servicebay.chat.stores import _owner

    real_pwrite = os.pwrite

    def full_disk(fd: int, data: bytes, offset: int) -> int:
        raise OSError(28, "No space left on device")

    lock = _owner.OwnerLock(tmp_path / "chat.db")
    monkeypatch.setattr(_owner.os, "pwrite", full_disk)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(StoreNotOpened, match="No space left"):
        lock.acquire()
    assert len(os.listdir("/proc/self/fd")) == before
    monkeypatch.setattr(_owner.os, "pwrite", real_pwrite)
    again = _owner.OwnerLock(tmp_path / "chat.db")
    again.acquire()  # not StoreInUse: the failed attempt kept no lock
    again.release()


async def test_sqlite_store_failing_to_open_closes_what_it_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader's connection fails after the writer's opened: the writer is closed too (no
    descriptor of the database stays open in a process that goes on without the store)."""
    from servicebay.chat.stores import sqlite as sqlite_store

    opened: list[sqlite3.Connection] = []
    real_connect = sqlite_store._connect

    def second_fails(path: str, synchronous: str) -> sqlite3.Connection:
        if opened:
            raise sqlite3.OperationalError("unable to open database file")
        opened.append(real_connect(path, synchronous))
        return opened[-1]

    monkeypatch.setattr(sqlite_store, "_connect", second_fails)
    store = sqlite_store.SQLiteChatStore(tmp_path / "chat.db")
    with pytest.raises(StoreNotOpened):
        await store.open()
    with pytest.raises(sqlite3.ProgrammingError):  # closed
        opened[0].execute("SELECT 1")
