"""The chat HTTP API for bound apps (and for administration), with its OpenAPI document.

Where it sits: routes mounted by ``server.create_app`` next to the WebSocket. Apps authenticate
with ``Authorization: Bearer <token>`` (a user token; the chat broker issues one per binding);
administration (users, tokens, rooms, members) uses the server's admin token; an address that
sent too many wrong tokens is answered 429 ``too_many_attempts`` for a while. Errors are
``{"error": code, "message": text}``; ``_error_response`` is the one place that maps them.

Errors::

    ApiError(status, code, message)
    ChatStoreError  → UnknownRoom/UnknownUser 404, NotMember 403, StoreUnavailable 503 (with
                      the generic "unavailable" text; the store's own words go to the log)

A user's call on a closed room they are not in is answered as for a missing room (404
``unknown_room``, by ``ChatService``); ``not_member`` is only said of open rooms, whose names
any user may list anyway, or to the admin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from servicebay.auth_throttle import AuthThrottle
from servicebay.chat.openapi import OPENAPI
from servicebay.chat.protocol import (
    ERROR_CODES,
    MAX_BODY_CHARS,
    MAX_FRAME_BYTES,
    MAX_KEY_CHARS,
    NAME_PATTERN,
)
from servicebay.chat.service import ChatService
from servicebay.chat.stores import (
    ChatStoreError,
    Member,
    NotMember,
    Retention,
    Room,
    StoreUnavailable,
    User,
)

log = structlog.get_logger("servicebay.chat.http")
MAX_WAIT = 30.0
# A signed-up id is the name, "-" and 8 hex digits: at most 64 characters, as NAME_PATTERN allows.
SIGNUP_SUFFIX_BYTES = 4
SIGNUP_NAME_CHARS = 64 - 1 - 2 * SIGNUP_SUFFIX_BYTES
M = TypeVar("M", bound=BaseModel)
Handler = Callable[[Request], Awaitable[Response]]


class ApiError(Exception):
    """A refused request with its HTTP status and error code (and headers to send, if any)."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers


_STORE_STATUS = {"unknown_room": 404, "unknown_user": 404, "not_member": 403, "unavailable": 503}


def _error_response(exc: Exception, service: ChatService) -> JSONResponse:
    headers = None
    if isinstance(exc, ApiError):
        status, code, message, headers = exc.status, exc.code, exc.message, exc.headers
    elif isinstance(exc, StoreUnavailable):
        # What failed inside the store (database or broker words) is for the log, not the caller.
        log.warning("chat.http.store_unavailable", error=str(exc))
        status, code, message = 503, exc.code, ERROR_CODES[exc.code]
    elif isinstance(exc, ChatStoreError):
        status, code, message = _STORE_STATUS.get(exc.code, 500), exc.code, str(exc)
    else:
        raise exc
    service.metrics.errors.labels(code).inc()
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class PostMessage(_Body):
    """Body of POST /rooms/{room}/messages."""

    key: Annotated[str, Field(min_length=1, max_length=MAX_KEY_CHARS)]
    body: Annotated[str, Field(max_length=MAX_BODY_CHARS)]


class AckBody(_Body):
    """Body of POST /rooms/{room}/ack."""

    seq: Annotated[int, Field(ge=0)]


class NewUser(_Body):
    """Body of POST /users."""

    id: Name
    display_name: Annotated[str, Field(max_length=128)] = ""
    kind: Annotated[str, Field(pattern="^(person|app)$")] = "person"


class SignUp(_Body):
    """Body of POST /signup: the name a person goes by (the server makes the id from it)."""

    name: Annotated[str, Field(pattern=NAME_PATTERN, max_length=SIGNUP_NAME_CHARS)]


class NewToken(_Body):
    """Body of POST /users/{user}/tokens."""

    label: Annotated[str, Field(max_length=128)] = ""


class RoomSettings(_Body):
    """Body of PUT /rooms/{room}."""

    open: bool = True
    keep_all: bool = False
    keep_seconds: Annotated[float, Field(ge=0)] = 86400.0
    keep_last: Annotated[int, Field(ge=0)] = 100


async def _parse(request: Request, model: type[M]) -> M:
    raw = await request.body()
    if len(raw) > MAX_FRAME_BYTES:
        raise ApiError(413, "too_large", f"body exceeds {MAX_FRAME_BYTES} bytes")
    try:
        return model.model_validate(json.loads(raw or b"{}"))
    except ValueError as exc:
        too_long = isinstance(exc, ValidationError) and any(
            p["type"] == "string_too_long" and p["loc"] == ("body",) for p in exc.errors()
        )
        if too_long:
            raise ApiError(413, "too_large", f"body exceeds {MAX_BODY_CHARS} characters") from None
        raise ApiError(400, "bad_request", _describe(exc)) from None


def _describe(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:3]
        )
    return f"not JSON: {exc}"


def _bearer(request: Request) -> str:
    """The request's bearer token; 429 unchecked for an address that failed too often."""
    throttle: AuthThrottle = request.app.state.throttle
    wait = throttle.retry_after(_address(request))
    if wait is not None:
        message = f"{ERROR_CODES['too_many_attempts']} (in {wait} s)"
        raise ApiError(429, "too_many_attempts", message, {"Retry-After": str(wait)})
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <token>")
    return token


def _address(request: Request) -> str | None:
    throttle: AuthThrottle = request.app.state.throttle
    return throttle.address(request.scope)


def failed_authentication(throttle: AuthThrottle, address: str | None) -> None:
    """Count a wrong token from ``address``, and say so in the log when it gets throttled."""
    if throttle.failed(address):
        log.warning(
            "chat.auth_throttled",
            client=address,
            failures=throttle.failures,
            window=throttle.window,
            throttled_total=throttle.throttled,
        )


async def _user(request: Request) -> User:
    user = await _service(request).store.authenticate(_bearer(request))
    if user is None:
        failed_authentication(request.app.state.throttle, _address(request))
        raise ApiError(401, "unauthorized", "unknown or revoked token")
    return user


def _admin(request: Request) -> None:
    # Bytes, not str: compare_digest refuses non-ASCII str (a 500 instead of a 401).
    given = _bearer(request).encode()
    if not secrets.compare_digest(given, request.app.state.admin_token.encode()):
        failed_authentication(request.app.state.throttle, _address(request))
        raise ApiError(401, "unauthorized", "this call needs the admin token")


def require_admin(request: Request) -> Response | None:
    """None when the request carries the admin token, else the 401 response to send."""
    try:
        _admin(request)
    except ApiError as exc:
        return _error_response(exc, _service(request))
    return None


def _service(request: Request) -> ChatService:
    service: ChatService = request.app.state.service
    return service


def _int_param(request: Request, name: str, default: int | None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "bad_request", f"{name} must be an integer") from None
    if value < 0:
        raise ApiError(400, "bad_request", f"{name} must be >= 0")
    return value


def _room(room: Room) -> dict[str, Any]:
    r = room.retention
    return {
        "id": room.id,
        "open": room.open,
        "head": room.head,
        "floor": room.floor,
        "retention": {
            "keep_all": r.keep_all,
            "keep_seconds": r.keep_seconds,
            "keep_last": r.keep_last,
        },
    }


def _member(m: Member) -> dict[str, Any]:
    return {"room": m.room, "user": m.user, "cursor": m.cursor}


# app endpoints ---------------------------------------------------------------------------------


async def me(request: Request) -> Response:
    """GET /api/v1/me: the caller and their memberships."""
    user = await _user(request)
    members = await _service(request).store.membership(user.id)
    return JSONResponse(
        {
            "id": user.id,
            "display_name": user.display_name,
            "kind": user.kind,
            "rooms": [_member(m) for m in members],
        }
    )


async def list_rooms(request: Request) -> Response:
    """GET /api/v1/rooms: the open rooms and the caller's closed ones (any valid token)."""
    user = await _user(request)
    store = _service(request).store
    rooms = await store.list_rooms()
    if not all(r.open for r in rooms):
        # A closed room's name and activity are for its members only.
        mine = {m.room for m in await store.membership(user.id)}
        rooms = [r for r in rooms if r.open or r.id in mine]
    return JSONResponse({"rooms": [_room(r) for r in rooms]})


async def post_message(request: Request) -> Response:
    """POST /api/v1/rooms/{room}/messages: 201 with the seq once durable; 200 for a known key."""
    user = await _user(request)
    body = await _parse(request, PostMessage)
    room = request.path_params["room"]
    appended = await _service(request).send(room, user, body.key, body.body)
    payload = {"room": room, "seq": appended.seq, "ts": appended.sent_at}
    payload["duplicate"] = appended.duplicate
    return JSONResponse(payload, status_code=200 if appended.duplicate else 201)


async def read_messages(request: Request) -> Response:
    """GET /api/v1/rooms/{room}/messages?after=&limit=&wait=: messages after a seq (long-poll)."""
    user = await _user(request)
    service = _service(request)
    room = request.path_params["room"]
    cursor = await service.ensure_member(room, user)
    after = _int_param(request, "after", cursor)
    limit = min(_int_param(request, "limit", 100) or 100, 1000)
    wait = min(float(_int_param(request, "wait", 0) or 0), MAX_WAIT)
    hub = await service.hub(room)
    assert after is not None
    if hub.head <= after and wait > 0:
        # A long-poll that ends empty is a normal answer; the client asks again.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hub.wait_beyond(after), timeout=wait)
    entries = await service.fetch(hub, after, limit)
    if entries:
        service.count_delivery(hub, user.id, entries)
    messages = [json.loads(e.text) for e in entries]
    for m in messages:
        del m["type"]
    return JSONResponse({"room": room, "messages": messages, "head": hub.head})


async def ack(request: Request) -> Response:
    """POST /api/v1/rooms/{room}/ack: advance the caller's durable cursor."""
    user = await _user(request)
    body = await _parse(request, AckBody)
    service = _service(request)
    hub = await service.room_for(request.path_params["room"], user)
    if not await service.is_member(hub, user.id):
        raise NotMember(hub.room, user.id)
    cursor = await service.ack(hub, user.id, body.seq)
    return JSONResponse({"room": hub.room, "cursor": cursor})


async def signup(request: Request) -> Response:
    """POST /api/v1/signup: a new person with a token (when the server allows sign-up).

    The caller gives a name, the server makes the id (the name and a random suffix): every
    sign-up creates a user of its own and is answered alike, so sign-up tells nobody which ids
    exist, and cannot take an id the admin is about to create (docs/security.md).
    """
    if not request.app.state.settings.signup:
        raise ApiError(403, "forbidden", "sign-up is disabled on this server")
    body = await _parse(request, SignUp)
    store = _service(request).store
    while True:  # a drawn id that exists already is drawn again (one in 2**32 per user)
        user_id = f"{body.name}-{secrets.token_hex(SIGNUP_SUFFIX_BYTES)}"
        if await store.get_user(user_id) is None:
            break
    await store.put_user(user_id, body.name, "person")
    issued = await store.issue_token(user_id, "signup")
    return JSONResponse({"user": user_id, "token": issued.token}, status_code=201)


# administration --------------------------------------------------------------------------------


async def create_user(request: Request) -> Response:
    """POST /api/v1/users (admin): create or update a user."""
    _admin(request)
    body = await _parse(request, NewUser)
    user = await _service(request).store.put_user(body.id, body.display_name, body.kind)
    return JSONResponse(
        {"id": user.id, "display_name": user.display_name, "kind": user.kind}, status_code=201
    )


async def issue_token(request: Request) -> Response:
    """POST /api/v1/users/{user}/tokens (admin): a new token, shown once."""
    _admin(request)
    body = await _parse(request, NewToken)
    issued = await _service(request).store.issue_token(request.path_params["user"], body.label)
    return JSONResponse(
        {"token_id": issued.token_id, "user": issued.user_id, "token": issued.token},
        status_code=201,
    )


async def revoke_token(request: Request) -> Response:
    """DELETE /api/v1/tokens/{token_id} (admin): revoke exactly that token."""
    _admin(request)
    if not await _service(request).store.revoke_token(request.path_params["token_id"]):
        raise ApiError(404, "unknown_token", "no such token")
    return Response(status_code=204)


async def put_room(request: Request) -> Response:
    """PUT /api/v1/rooms/{room} (admin): create a room or change its settings."""
    _admin(request)
    body = await _parse(request, RoomSettings)
    room_id = request.path_params["room"]
    if not _valid_name(room_id):
        raise ApiError(400, "bad_request", f"room names match {NAME_PATTERN}")
    retention = Retention(body.keep_all, body.keep_seconds, body.keep_last)
    room = await _service(request).store.put_room(room_id, retention, body.open)
    return JSONResponse(_room(room))


async def put_member(request: Request) -> Response:
    """PUT /api/v1/rooms/{room}/members/{user}: join ("me", open rooms) or add (admin)."""
    service = _service(request)
    room, who = request.path_params["room"], request.path_params["user"]
    if who == "me":
        user = await _user(request)
        cursor = await service.ensure_member(room, user)
        return JSONResponse({"room": room, "user": user.id, "cursor": cursor})
    _admin(request)
    return JSONResponse(_member(await service.join(room, who)))


async def delete_member(request: Request) -> Response:
    """DELETE /api/v1/rooms/{room}/members/{user} (admin, or "me")."""
    service = _service(request)
    room, who = request.path_params["room"], request.path_params["user"]
    if who == "me":
        user = await _user(request)
        await service.room_for(room, user)  # a closed room: as if missing
    else:
        _admin(request)
        user = User(who, who)
    if not await service.leave(room, user):
        raise ApiError(404, "not_member", f"{user.id!r} is not a member of {room!r}")
    return Response(status_code=204)


async def openapi(request: Request) -> Response:
    """GET /api/v1/openapi.json."""
    return JSONResponse(OPENAPI)


def _valid_name(name: str) -> bool:
    import re

    return re.fullmatch(NAME_PATTERN, name) is not None


def _guarded(handler: Handler) -> Handler:
    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except (ApiError, ChatStoreError) as exc:
            return _error_response(exc, _service(request))

    run.__doc__ = handler.__doc__
    return run


def routes() -> list[BaseRoute]:
    """The API's route table (every handler's errors mapped in one place)."""
    table: list[tuple[str, Handler, list[str]]] = [
        ("/api/v1/openapi.json", openapi, ["GET"]),
        ("/api/v1/me", me, ["GET"]),
        ("/api/v1/signup", signup, ["POST"]),
        ("/api/v1/rooms", list_rooms, ["GET"]),
        ("/api/v1/rooms/{room}", put_room, ["PUT"]),
        ("/api/v1/rooms/{room}/messages", post_message, ["POST"]),
        ("/api/v1/rooms/{room}/messages", read_messages, ["GET"]),
        ("/api/v1/rooms/{room}/ack", ack, ["POST"]),
        ("/api/v1/rooms/{room}/members/{user}", put_member, ["PUT"]),
        ("/api/v1/rooms/{room}/members/{user}", delete_member, ["DELETE"]),
        ("/api/v1/users", create_user, ["POST"]),
        ("/api/v1/users/{user}/tokens", issue_token, ["POST"]),
        ("/api/v1/tokens/{token_id}", revoke_token, ["DELETE"]),
    ]
    return [Route(path, _guarded(h), methods=m) for path, h, m in table]


__all__ = ["ApiError", "StoreUnavailable", "failed_authentication", "require_admin", "routes"]
