"""The store interface's promises, for every backend (see /work/coord/CHAT_STORE.md)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
from chat_helpers import eventually

from servicebay.chat.stores import (
    Appended,
    ChatStore,
    NotMember,
    Retention,
    UnknownRoom,
    UnknownUser,
)
from servicebay.chat.stores import sqlite as sqlite_store
from servicebay.chat.stores.sqlite import SQLiteChatStore


async def _room_with(store: ChatStore, *users: str, retention: Retention | None = None) -> None:
    await store.put_room("r", retention or Retention())
    for user in users:
        await store.put_user(user)
        await store.join("r", user)


async def test_append_assigns_consecutive_seqs_in_order(chat_store: ChatStore) -> None:
    """Seqs per room start at 1, grow by one, and read returns them ascending."""
    await _room_with(chat_store, "ann")
    seqs = [(await chat_store.append("r", "ann", f"k{i}", f"m{i}")).seq for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    got = await chat_store.read("r", after=2)
    assert [(m.seq, m.body) for m in got] == [(3, "m2"), (4, "m3"), (5, "m4")]


async def test_same_key_returns_same_seq_and_stores_once(chat_store: ChatStore) -> None:
    """A resend with a known idempotency key gets the first seq and stores nothing."""
    await _room_with(chat_store, "ann")
    first = await chat_store.append("r", "ann", "k", "hello")
    again = await chat_store.append("r", "ann", "k", "hello")
    assert (first.seq, first.duplicate) == (1, False)
    assert (again.seq, again.duplicate, again.sent_at) == (1, True, first.sent_at)
    assert len(await chat_store.read("r", 0)) == 1
    assert (await chat_store.get_room("r")).head == 1  # type: ignore[union-attr]


async def test_concurrent_appends_get_distinct_consecutive_seqs(chat_store: ChatStore) -> None:
    """Many concurrent senders: every append gets its own seq, none lost, none doubled."""
    await _room_with(chat_store, "ann", "bob")
    results = await asyncio.gather(
        *(chat_store.append("r", ("ann", "bob")[i % 2], f"k{i}", str(i)) for i in range(300))
    )
    assert sorted(r.seq for r in results) == list(range(1, 301))
    stored = await chat_store.read("r", 0, limit=1000)
    assert [m.seq for m in stored] == list(range(1, 301))


async def test_sqlite_group_commits_concurrent_appends(tmp_path: Path) -> None:
    """Concurrent appends share transactions: fewer commits than messages."""
    store = SQLiteChatStore(tmp_path / "g.db")
    await store.open()
    try:
        await _room_with(store, "ann")
        before = store.batches
        await asyncio.gather(*(store.append("r", "ann", f"k{i}", "x") for i in range(200)))
        assert store.batches - before < 100
    finally:
        await store.close()


async def test_sqlite_commits_never_checkpoint_the_checkpointer_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's commits leave the WAL to the checkpointer thread (a checkpoint's copy and
    fsyncs inside a commit held up every answer behind it): with the checkpointer held, the WAL
    grows past SQLite's automatic checkpoint (1,000 pages), and once let go it copies every
    frame into the database."""
    started, release, results = threading.Event(), threading.Event(), []
    checkpoint = sqlite_store._checkpoint

    def held(conn: sqlite3.Connection) -> tuple[int, int, int]:
        started.set()
        release.wait(30)
        results.append(checkpoint(conn))
        return results[-1]

    monkeypatch.setattr(sqlite_store, "_checkpoint", held)
    store = SQLiteChatStore(tmp_path / "w.db")
    await store.open()
    try:
        await _room_with(store, "ann")
        assert await asyncio.to_thread(started.wait, 10)
        body = "b" * 16 * 1024
        for batch in range(16):  # 16 commits of 1 MiB
            items = [(f"k{batch}.{i}", body) for i in range(64)]
            await store.append_many("r", "ann", items)
        wal = Path(f"{tmp_path / 'w.db'}-wal")
        assert (await asyncio.to_thread(wal.stat)).st_size > 12 * 1024 * 1024  # 1,000 pages: 4 MiB
        release.set()
        await store.append("r", "ann", "after", "x")  # a commit: another checkpoint is due
        await eventually(lambda: results and results[-1][2] > 3000, 10)
        busy, frames, copied = results[-1]
        assert (busy, copied) == (0, frames)
    finally:
        release.set()
        await store.close()
    again = SQLiteChatStore(tmp_path / "w.db")
    await again.open()
    try:
        assert len(await again.read("r", 0, limit=2000)) == 16 * 64 + 1
    finally:
        await again.close()


async def test_appended_messages_survive_reopen(tmp_path: Path) -> None:
    """What append acknowledged is there after the store is closed and opened again."""
    store = SQLiteChatStore(tmp_path / "d.db")
    await store.open()
    await _room_with(store, "ann")
    await store.append("r", "ann", "k1", "one")
    await store.ack("r", "ann", 1)
    await store.close()
    again = SQLiteChatStore(tmp_path / "d.db")
    await again.open()
    try:
        assert [m.body for m in await again.read("r", 0)] == ["one"]
        assert (await again.members("r"))[0].cursor == 1
        assert (await again.append("r", "ann", "k1", "one")).duplicate
    finally:
        await again.close()


async def test_unknown_room_and_non_member_store_nothing(chat_store: ChatStore) -> None:
    """Appending to an unknown room or as a non-member raises and stores nothing."""
    await _room_with(chat_store, "ann")
    await chat_store.put_user("eve")
    with pytest.raises(UnknownRoom):
        await chat_store.append("nope", "ann", "k", "x")
    with pytest.raises(NotMember):
        await chat_store.append("r", "eve", "k", "x")
    with pytest.raises(UnknownUser):
        await chat_store.join("r", "ghost")
    assert await chat_store.read("r", 0) == []


async def test_failing_write_does_not_undo_its_batch_neighbours(chat_store: ChatStore) -> None:
    """A refused append in the same group commit leaves the others stored."""
    await _room_with(chat_store, "ann")
    outcomes = await asyncio.gather(
        chat_store.append("r", "ann", "a", "1"),
        chat_store.append("r", "ghost", "b", "2"),
        chat_store.append("r", "ann", "c", "3"),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], NotMember)
    assert [m.body for m in await chat_store.read("r", 0)] == ["1", "3"]


async def test_refused_write_between_appends_keeps_the_head_exact(tmp_path: Path) -> None:
    """A write rolled back to its savepoint amid appends of one commit keeps heads and seqs."""
    store = SQLiteChatStore(tmp_path / "h.db")
    await store.open()
    try:
        await _room_with(store, "ann")
        outcomes = await asyncio.gather(
            store.append("r", "ann", "a", "1"),
            store.issue_token("ghost"),  # refused inside the transaction (its own savepoint)
            store.append("r", "ann", "b", "2"),
            return_exceptions=True,
        )
        assert isinstance(outcomes[1], UnknownUser)
        assert [o.seq for o in (outcomes[0], outcomes[2])] == [1, 2]  # type: ignore[union-attr]
        assert (await store.get_room("r")).head == 2  # type: ignore[union-attr]
    finally:
        await store.close()
    again = SQLiteChatStore(tmp_path / "h.db")
    await again.open()
    try:
        assert (await again.append("r", "ann", "c", "3")).seq == 3
    finally:
        await again.close()


async def test_sqlite_op_failing_unexpectedly_fails_alone(tmp_path: Path) -> None:
    """An append that cannot be written (a lone surrogate) fails alone; its batch commits."""
    store = SQLiteChatStore(tmp_path / "u.db")
    await store.open()
    try:
        await _room_with(store, "ann", "bob")
        await store.append("r", "ann", "a0", "before")
        before = store.batches
        acked = asyncio.ensure_future(store.ack("r", "ann", 1))  # staged first, in this turn
        outcomes = await asyncio.gather(  # one loop turn: one group commit
            acked,
            store.append("r", "ann", "a", "hello"),
            store.append("r", "bob", "b", "half an emoji: \ud83d"),  # fails after a write
            store.append("r", "bob", "\udfff", "x"),  # fails before any write
            store.append_many("r", "ann", [("c", "one"), ("d", "two")]),
            return_exceptions=True,
        )
        assert store.batches - before == 1
        assert isinstance(outcomes[2], UnicodeEncodeError)
        assert isinstance(outcomes[3], UnicodeEncodeError)
        assert outcomes[0] == 1
        assert outcomes[1].seq == 2  # type: ignore[union-attr]
        assert [o.seq for o in outcomes[4]] == [3, 4]  # type: ignore[union-attr]
        stored = await store.read("r", 0)
        assert [(m.seq, m.sender, m.body) for m in stored] == [
            (1, "ann", "before"),
            (2, "ann", "hello"),
            (3, "ann", "one"),
            (4, "ann", "two"),
        ]
        assert (await store.members("r"))[0].cursor == 1
        assert (await store.get_room("r")).head == 4  # type: ignore[union-attr]
        assert (await store.append("r", "bob", "b", "whole")).seq == 5  # the key was not kept
    finally:
        await store.close()


async def test_append_many_is_append_in_order(chat_store: ChatStore) -> None:
    """Several sends in one write: consecutive seqs, known and repeated keys are duplicates;
    a non-member's items are refused (per item, or the whole write), nothing stored."""
    store = chat_store
    await _room_with(store, "ann")
    first = await store.append("r", "ann", "k0", "zero")
    items = [("k1", "one"), ("k0", "again"), ("k2", "two"), ("k1", "one again")]
    outcomes = await store.append_many("r", "ann", items)
    assert all(isinstance(o, Appended) for o in outcomes)
    assert [(o.seq, o.duplicate) for o in outcomes] == [  # type: ignore[union-attr]
        (2, False),
        (1, True),
        (3, False),
        (2, True),
    ]
    assert outcomes[1].sent_at == first.sent_at  # type: ignore[union-attr]
    assert list(await store.append_many("r", "ann", [])) == []
    try:
        refused = await store.append_many("r", "eve", [("k", "x"), ("l", "y")])
    except NotMember:
        pass
    else:
        assert [type(o) for o in refused] == [NotMember, NotMember]
    stored = await store.read("r", 0)
    assert [(m.seq, m.key, m.body) for m in stored] == [
        (1, "k0", "zero"),
        (2, "k1", "one"),
        (3, "k2", "two"),
    ]
    assert (await store.get_room("r")).head == 3  # type: ignore[union-attr]


async def test_ack_moves_cursor_forward_only_and_not_past_head(chat_store: ChatStore) -> None:
    """Acks are cumulative: never backwards, never beyond the newest message."""
    await _room_with(chat_store, "ann")
    for i in range(3):
        await chat_store.append("r", "ann", f"k{i}", "x")
    assert await chat_store.ack("r", "ann", 2) == 2
    assert await chat_store.ack("r", "ann", 1) == 2
    assert await chat_store.ack("r", "ann", 99) == 3


async def test_ack_many_moves_each_member_as_ack_would(chat_store: ChatStore) -> None:
    """One write for several members: forward only, capped at the head, strangers left out."""
    await _room_with(chat_store, "ann", "bob")
    for i in range(3):
        await chat_store.append("r", "ann", f"k{i}", "x")
    await chat_store.ack("r", "bob", 2)
    moved = await chat_store.ack_many("r", {"ann": 99, "bob": 1, "ghost": 2})
    assert moved == {"ann": 3, "bob": 2}
    assert {m.user: m.cursor for m in await chat_store.members("r")} == {"ann": 3, "bob": 2}


async def test_newcomer_cursor_starts_at_head(chat_store: ChatStore) -> None:
    """A member joining later starts at the head, yet may read retained history."""
    await _room_with(chat_store, "ann")
    await chat_store.append("r", "ann", "k", "before")
    await chat_store.put_user("bob")
    bob = await chat_store.join("r", "bob")
    assert bob.cursor == 1
    assert [m.body for m in await chat_store.read("r", 0)] == ["before"]


async def test_retention_waits_for_every_member(chat_store: ChatStore) -> None:
    """Nothing is deleted while one member has not acknowledged it; then it goes."""
    await _room_with(chat_store, "ann", "bob", retention=Retention(keep_seconds=0, keep_last=0))
    for i in range(4):
        await chat_store.append("r", "ann", f"k{i}", str(i))
    await chat_store.ack("r", "ann", 4)
    await chat_store.ack("r", "bob", 2)
    assert await chat_store.compact() == {"r": 2}
    assert [m.seq for m in await chat_store.read("r", 0)] == [3, 4]
    assert (await chat_store.get_room("r")).floor == 2  # type: ignore[union-attr]
    assert await chat_store.compact() == {}
    await chat_store.ack("r", "bob", 4)
    assert await chat_store.compact() == {"r": 2}
    assert await chat_store.read("r", 0) == []
    # Keys outlive their messages: a late resend is still recognised.
    assert (await chat_store.append("r", "ann", "k0", "0")).seq == 1


async def test_retention_keeps_history_when_asked(chat_store: ChatStore) -> None:
    """keep_all, keep_last and keep_seconds each hold back deletion of acknowledged messages."""
    await chat_store.put_user("ann")
    for name, retention in {
        "all": Retention(keep_all=True, keep_seconds=0, keep_last=0),
        "last": Retention(keep_seconds=0, keep_last=2),
        "young": Retention(keep_seconds=3600, keep_last=0),
    }.items():
        await chat_store.put_room(name, retention)
        await chat_store.join(name, "ann")
        for i in range(5):
            await chat_store.append(name, "ann", f"k{i}", "x")
        await chat_store.ack(name, "ann", 5)
    assert await chat_store.compact() == {"last": 3}
    assert [m.seq for m in await chat_store.read("last", 0)] == [4, 5]
    assert len(await chat_store.read("all", 0)) == 5
    assert len(await chat_store.read("young", 0)) == 5


async def test_tokens_authenticate_and_are_not_stored_in_clear(tmp_path: Path) -> None:
    """A token authenticates its user, a revoked one does not; the file holds no clear token."""
    store = SQLiteChatStore(tmp_path / "t.db")
    await store.open()
    try:
        await store.put_user("ann", "Ann")
        issued = await store.issue_token("ann", "web")
        kept = await store.issue_token("ann", "app")
        assert (await store.authenticate(issued.token)).id == "ann"  # type: ignore[union-attr]
        assert await store.authenticate("wrong") is None
        assert await store.revoke_token(issued.token_id)
        assert await store.authenticate(issued.token) is None
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "t.db") as conn:
        dump = "\n".join(conn.iterdump())
    assert kept.token not in dump
    assert "ann" in dump


async def test_any_text_is_stored_as_sent(chat_store: ChatStore) -> None:
    """Rows are written as one JSON array (``insert_rows``): text it could bend (a NUL, which
    ends a JSON-extracted text; escapes; non-BMP characters; digits) is stored exactly, and a
    key with a NUL is still recognised on a resend."""
    await _room_with(chat_store, "ann")
    items = [
        ("k\x00one", "a\x00b"),
        ("123", '"quoted" \\u0000 \\ back'),
        ("é😀", "é😀\n\t"),
        ("k4", ""),
    ]
    outcomes = await chat_store.append_many("r", "ann", items)
    assert [o.seq for o in outcomes] == [1, 2, 3, 4]  # type: ignore[union-attr]
    stored = await chat_store.read("r", 0)
    assert [(m.key, m.body) for m in stored] == items
    again = await chat_store.append_many("r", "ann", [("k\x00one", "x"), ("123", "y")])
    assert [(o.seq, o.duplicate) for o in again] == [(1, True), (2, True)]  # type: ignore[union-attr]
