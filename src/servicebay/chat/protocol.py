"""Chat protocol v1: the JSON frames of the WebSocket and their limits (docs/chat-protocol.md).

Where it sits: the server parses every incoming text frame with ``parse_frame`` and answers bad
ones with an ``error`` frame built by ``error_frame``; the Python client and the web page build
the same frames. No I/O here.

Errors::

    ProtocolError(code, message)      code is one of ERROR_CODES; becomes an ``error`` frame
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

VERSION = 1
MAX_FRAME_BYTES = 64 * 1024
MAX_MESSAGE_BYTES = 1024 * 1024  # a WebSocket message carrying an array of frames
MAX_FRAMES_PER_MESSAGE = 1000
MAX_BODY_CHARS = 16 * 1024
MAX_KEY_CHARS = 128
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

ERROR_CODES = {
    "bad_frame": "the frame is not a JSON object of a known type with valid fields",
    "too_large": "the frame or message body exceeds the limit",
    "unsupported_version": "the client asked for a protocol version this server does not speak",
    "unauthorized": "missing, unknown or revoked token",
    "too_many_attempts": "too many failed authentications from this address; retry later",
    "not_ready": "send hello first",
    "unknown_room": "no such room, or a closed room the user is not a member of",
    "not_member": "not a member of the room (an open room: join it first)",
    "unavailable": "the store is unavailable; retry with the same key",
}

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Key = Annotated[str, Field(min_length=1, max_length=MAX_KEY_CHARS)]
Seq = Annotated[int, Field(ge=0)]


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Hello(_Frame):
    """First frame: protocol version, token, and per room the last seq the client has shown."""

    type: Literal["hello"]
    v: int = VERSION
    token: Annotated[str, Field(min_length=1, max_length=512)]
    rooms: dict[Name, Seq | None] = Field(default_factory=dict, max_length=256)


class Join(_Frame):
    """Become a member (open rooms) and subscribe from ``after`` (default: the cursor)."""

    type: Literal["join"]
    room: Name
    after: Seq | None = None


class Leave(_Frame):
    """End the membership of a room."""

    type: Literal["leave"]
    room: Name


# The two frames of every message (sends) and every batch shown (acks) are plain dataclasses:
# a pydantic model costs ~15 µs to build even unvalidated. The common well-formed shape is
# checked by hand (``_quick``); anything else goes through pydantic, which decides and words it.
# Not frozen: a frozen dataclass sets each field through ``object.__setattr__`` (0.88 µs to
# build a ``Send`` here, 0.14 µs unfrozen), and nothing changes a parsed frame anyway.


@dataclass(slots=True)
class Send:
    """Post a message; answered by ``sent`` with the room seq once it is durable."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    type: Literal["send"]
    room: Name
    key: Key
    body: Annotated[str, Field(max_length=MAX_BODY_CHARS)]


@dataclass(slots=True)
class Ack:
    """Cumulative: the client has shown every message of the room up to ``seq``."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    type: Literal["ack"]
    room: Name
    seq: Seq


class Typing(_Frame):
    """The user is typing in a room (relayed, not stored)."""

    type: Literal["typing"]
    room: Name


class Ping(_Frame):
    """Liveness probe; answered by ``pong`` with the same id."""

    type: Literal["ping"]
    id: Annotated[str, Field(max_length=64)] = ""


ClientFrame = Hello | Join | Leave | Send | Ack | Typing | Ping
_BY_TYPE: dict[str, Callable[[Any], ClientFrame]] = {
    "hello": Hello.model_validate,
    "join": Join.model_validate,
    "leave": Leave.model_validate,
    "send": TypeAdapter(Send).validate_python,
    "ack": TypeAdapter(Ack).validate_python,
    "typing": Typing.model_validate,
    "ping": Ping.model_validate,
}
_NAME = re.compile(NAME_PATTERN)
# Room names that matched NAME_PATTERN: a set lookup per frame instead of a regex match.
_GOOD_NAMES: set[str] = set()
_GOOD_NAMES_KEPT = 4096


def _good_name(name: str) -> bool:
    if _NAME.fullmatch(name) is None:
        return False
    if len(_GOOD_NAMES) >= _GOOD_NAMES_KEPT:
        _GOOD_NAMES.clear()
    _GOOD_NAMES.add(name)
    return True


def _quick(data: dict[str, Any]) -> ClientFrame | None:
    """A well-formed ``send`` or ``ack`` in its plain shape, without pydantic; else None.

    Accepts only what the models accept, with the same values (``type(x) is int`` keeps bools
    and floats for pydantic to judge), given strings as orjson parses them: it does not look
    for lone surrogates, which orjson never yields (``_load``).
    """
    kind, room = data.get("type"), data.get("room")
    if type(room) is not str or len(data) != 4 - (kind == "ack"):
        return None
    if room not in _GOOD_NAMES and not _good_name(room):
        return None
    if kind == "send":
        key, body = data.get("key"), data.get("body")
        if (
            type(key) is str
            and 0 < len(key) <= MAX_KEY_CHARS
            and type(body) is str
            and len(body) <= MAX_BODY_CHARS
        ):
            return Send("send", room, key, body)
    elif kind == "ack":
        seq = data.get("seq")
        if type(seq) is int and seq >= 0:
            return Ack("ack", room, seq)
    return None


class ProtocolError(Exception):
    """A frame the server refuses; ``code`` is one of ``ERROR_CODES``."""

    def __init__(self, code: str, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


def parse_frame(raw: str | bytes) -> ClientFrame:
    """Parse one client frame (a JSON object) or raise ``ProtocolError`` saying what is wrong."""
    if len(raw) > MAX_FRAME_BYTES:
        raise ProtocolError("too_large", f"frame exceeds {MAX_FRAME_BYTES} bytes")
    data, exact = _load(raw)
    if not isinstance(data, dict):
        raise ProtocolError("bad_frame", "a frame is a JSON object")
    return _validate(data, exact)


def parse_message(raw: str | bytes) -> list[ClientFrame | ProtocolError]:
    """Parse one WebSocket message: a frame, or a JSON array of frames (each judged alone).

    Raises ``ProtocolError`` when the message as a whole is unusable.
    """
    head = raw[:64].lstrip()[:1]
    limit = MAX_MESSAGE_BYTES if head in ("[", b"[") else MAX_FRAME_BYTES
    if len(raw) > limit:
        raise ProtocolError("too_large", f"message exceeds {limit} bytes")
    data, exact = _load(raw)
    if isinstance(data, dict):
        return [_validate(data, exact)]
    if not isinstance(data, list):
        raise ProtocolError("bad_frame", "a message is a JSON object or an array of objects")
    if len(data) > MAX_FRAMES_PER_MESSAGE:
        raise ProtocolError("too_large", f"more than {MAX_FRAMES_PER_MESSAGE} frames")
    parsed: list[ClientFrame | ProtocolError] = []
    for item in data:
        try:
            if not isinstance(item, dict):
                raise ProtocolError("bad_frame", "a frame is a JSON object")
            parsed.append(_validate(item, exact))
        except ProtocolError as exc:
            parsed.append(exc)
    return parsed


def _load(raw: str | bytes) -> tuple[Any, bool]:
    """The parsed JSON, and whether orjson parsed it (then no string holds a lone surrogate).

    orjson refuses lone surrogates (``"\\ud800"``, valid JSON text); the standard parser, which
    decides what orjson refuses (and words the error), admits them. Such strings cannot be
    stored (UTF-8) and the models refuse them (``string_unicode``), so ``_quick``, which does
    not look at code points, must never judge what came through the fallback.
    """
    try:
        return orjson.loads(raw), True
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw), False
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError("bad_frame", f"not JSON: {exc}") from None


def _validate(data: dict[str, Any], exact: bool = True) -> ClientFrame:
    if exact and (quick := _quick(data)) is not None:
        return quick
    ref = data.get("key") if isinstance(data.get("key"), str) else None
    validate = _BY_TYPE.get(data.get("type"))  # type: ignore[arg-type]
    if validate is None:
        known = ", ".join(_BY_TYPE)
        raise ProtocolError("bad_frame", f"type: must be one of {known}", ref)
    try:
        return validate(data)
    except ValidationError as exc:
        raise ProtocolError(_code_of(exc), _describe(exc), ref) from None


def _code_of(exc: ValidationError) -> str:
    for problem in exc.errors():
        if problem["loc"] and problem["loc"][-1] == "body" and problem["type"] == "string_too_long":
            return "too_large"
    return "bad_frame"


def _describe(exc: ValidationError) -> str:
    parts = []
    for problem in exc.errors()[:3]:
        where = ".".join(str(p) for p in problem["loc"]) or "frame"
        parts.append(f"{where}: {problem['msg']}")
    return "; ".join(parts)


def error_frame(code: str, message: str, ref: str | None = None) -> dict[str, Any]:
    """The ``error`` frame for a refused frame (``ref`` echoes the send's key if any)."""
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if ref is not None:
        frame["ref"] = ref
    return frame


def message_frame(
    room: str, seq: int, sender: str, key: str, body: str, sent_at: float
) -> dict[str, Any]:
    """The ``msg`` frame delivering one stored message."""
    return {
        "type": "msg",
        "room": room,
        "seq": seq,
        "from": sender,
        "key": key,
        "body": body,
        "ts": sent_at,
    }


def encode(frame: dict[str, Any]) -> str:
    """Compact JSON text of a frame (orjson: the server encodes every frame it sends)."""
    try:
        return orjson.dumps(frame).decode()
    except TypeError:
        # orjson refuses lone surrogates: an error frame echoing a refused key (``ref``) may
        # hold one. Escaped, the text stays valid UTF-8 and the client gets its key back.
        return json.dumps(frame, separators=(",", ":"))


def encode_many(frames: list[dict[str, Any]]) -> str:
    """Frames encoded at once: one frame's text, or several as ``Frames`` (an array's inside)."""
    if len(frames) == 1:
        return encode(frames[0])
    try:
        return Frames(orjson.dumps(frames).decode()[1:-1])
    except TypeError:
        return Frames(",".join(encode(frame) for frame in frames))


class Frames(str):
    """Several encoded frames joined by commas: the inside of one JSON array message."""

    __slots__ = ()
