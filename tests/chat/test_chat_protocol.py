"""Protocol v1 frames against golden fixtures, and invariants of the room hub (hypothesis)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from servicebay.chat.protocol import MAX_BODY_CHARS, Ack, ProtocolError, Send, parse_frame
from servicebay.chat.service import Entry, RoomHub
from servicebay.chat.stores import Retention
from servicebay.chat.stores.sqlite import SQLiteChatStore

FIXTURES = Path(__file__).parent / "fixtures"
VALID = json.loads((FIXTURES / "chat_frames_valid.json").read_text())
INVALID = json.loads((FIXTURES / "chat_frames_invalid.json").read_text())


@pytest.mark.parametrize("frame", VALID, ids=lambda f: f["type"])
def test_valid_frames_parse_to_their_type(frame: dict[str, Any]) -> None:
    """Every golden valid frame parses, keeping its type and fields."""
    parsed = parse_frame(json.dumps(frame))
    assert parsed.type == frame["type"]
    for name, value in frame.items():
        assert getattr(parsed, name) == value


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c["raw"][:40])
def test_invalid_frames_are_refused_with_their_code(case: dict[str, str]) -> None:
    """Every golden malformed frame raises ProtocolError with the documented code and a reason."""
    with pytest.raises(ProtocolError) as refused:
        parse_frame(case["raw"])
    assert refused.value.code == case["code"]
    assert refused.value.message


@given(st.permutations(list(range(1, 40))))
def test_hub_publishes_in_seq_order_whatever_the_arrival_order(order: list[int]) -> None:
    """Messages arriving out of order become visible only as a gap-free prefix, in seq order."""
    hub = RoomHub("r", head=0, cursors={})
    for seq in order:
        hub.publish(Entry(seq, "s", str(seq)))
        visible = [e.seq for e in hub.cached(0, 100) or []]
        assert visible == list(range(1, hub.head + 1))
    assert hub.head == 39 and not hub.pending


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("send"), st.sampled_from(["ann", "bob"]), st.integers(0, 8)),
            st.tuples(st.just("ack"), st.sampled_from(["ann", "bob"]), st.integers(0, 30)),
            st.tuples(st.just("compact"), st.just(""), st.just(0)),
        ),
        max_size=40,
    )
)
def test_store_log_invariants(steps: list[tuple[str, str, int]]) -> None:
    """Any mix of sends (keys repeat), acks and compactions keeps the log's promises."""
    asyncio.run(_check_store(steps))


async def _check_store(steps: list[tuple[str, str, int]]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteChatStore(Path(tmp) / "p.db")
        await store.open()
        try:
            await store.put_room("r", Retention(keep_seconds=0, keep_last=2))
            for user in ("ann", "bob"):
                await store.put_user(user)
                await store.join("r", user)
            first_seq: dict[tuple[str, int], int] = {}
            cursors = {"ann": 0, "bob": 0}
            for kind, user, n in steps:
                if kind == "send":
                    appended = await store.append("r", user, f"k{n}", f"{user}{n}")
                    seq = first_seq.setdefault((user, n), appended.seq)
                    assert appended.seq == seq  # same key, same seq, whenever
                elif kind == "ack":
                    new = await store.ack("r", user, n)
                    assert new >= cursors[user]  # never backwards
                    cursors[user] = new
                else:
                    await store.compact()
                room = await store.get_room("r")
                assert room is not None
                assert room.head == len(first_seq)  # each key stored once, seqs consecutive
                assert room.floor <= min(cursors.values())  # only what everyone acked is gone
                assert room.floor <= max(0, room.head - 2)  # keep_last holds
                kept = [m.seq for m in await store.read("r", 0, limit=1000)]
                assert kept == list(range(room.floor + 1, room.head + 1))
        finally:
            await store.close()


# Lone surrogates are valid JSON text ("\\ud800") that the models refuse; st.text() alone
# never draws them (category Cs), so they are drawn on purpose.
_CHAR = st.one_of(st.characters(exclude_categories=()), st.characters(categories=["Cs"]))
_TEXT = st.one_of(
    st.sampled_from(["lobby", "a", "x" * 64, "x" * 65, "lob by", "lobby\n", "-a", ""]),
    st.sampled_from(["\ud800", "\udfff", "half an emoji: \ud83d", "k\udc00"]),
    st.text(max_size=70),
    st.text(_CHAR, max_size=70),
)
_VALUE = st.one_of(_TEXT, st.integers(-2, 2**70), st.booleans(), st.floats(), st.none())


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(["send", "ack"]),
    room=_VALUE,
    key=st.one_of(_VALUE, st.text(_CHAR, min_size=120, max_size=140)),
    body=st.one_of(
        _VALUE,
        st.just("b" * MAX_BODY_CHARS),
        st.just("b" * (MAX_BODY_CHARS + 1)),
        st.just("b" * (MAX_BODY_CHARS - 1) + "\ud800"),
    ),
    seq=_VALUE,
    extra=st.booleans(),
)
def test_sends_and_acks_are_judged_as_their_models_judge_them(
    kind: str, room: Any, key: Any, body: Any, seq: Any, extra: bool
) -> None:
    """The quick path for sends and acks accepts exactly what the pydantic models accept.

    Lone surrogates included: ``json.dumps`` escapes them, so they arrive as valid JSON text.
    """
    data = {"type": kind, "room": room}
    data.update({"key": key, "body": body} if kind == "send" else {"seq": seq})
    if extra:
        data["extra"] = 1
    model = TypeAdapter(Send if kind == "send" else Ack)
    try:
        expected: Any = model.validate_python(data)
    except ValidationError:
        expected = ProtocolError
    try:
        got: Any = parse_frame(json.dumps(data))
    except ProtocolError:
        got = ProtocolError
    assert got == expected


def test_room_names_are_judged_on_every_frame_and_remembered_within_a_bound() -> None:
    """Valid room names are remembered (a set lookup, not a regex per frame), at most
    _GOOD_NAMES_KEPT of them; an invalid name is never remembered, so it is refused every time."""
    from servicebay.chat import protocol

    for i in range(protocol._GOOD_NAMES_KEPT + 10):
        frame = {"type": "ack", "room": f"room-{i}", "seq": 1}
        assert parse_frame(json.dumps(frame)) == Ack("ack", f"room-{i}", 1)
        assert len(protocol._GOOD_NAMES) <= protocol._GOOD_NAMES_KEPT
    for _ in range(2):
        with pytest.raises(ProtocolError) as refused:
            parse_frame(json.dumps({"type": "ack", "room": "-bad", "seq": 1}))
        assert refused.value.code == "bad_frame"
    assert "-bad" not in protocol._GOOD_NAMES
