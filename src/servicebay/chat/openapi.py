"""The OpenAPI 3.1 document of the chat HTTP API (served at /api/v1/openapi.json).

Where it sits: data only; ``http_api`` serves it and a test checks that every route in the route
table is described here, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = _json(_ref("Error"), "Refused; nothing changed")
_ERRORS = {
    "400": _ERROR,
    "401": _ERROR,
    "403": _json(
        _ref("Error"),
        "Refused; nothing changed. `not_member`: not a member of this open room (join it first)",
    ),
    "404": _json(
        _ref("Error"),
        "Refused; nothing changed. `unknown_room` also for a closed room the caller is not in",
    ),
    "429": _json(
        _ref("Error"),
        "`too_many_attempts`: too many wrong tokens from this address; the token was not "
        "checked. Retry after `Retry-After` seconds",
    ),
    "503": _ERROR,
}
_ROOM = {"name": "room", "in": "path", "required": True, "schema": {"type": "string"}}
_USER = {"name": "user", "in": "path", "required": True, "schema": {"type": "string"}}


def _op(summary: str, ok: dict[str, Any], body: str | None = None, **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**ok, **_ERRORS}, **extra}
    if body is not None:
        op["requestBody"] = {"required": True, **_json(_ref(body), body)}
    return op


_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    },
    "PostMessage": {
        "type": "object",
        "required": ["key", "body"],
        "properties": {
            "key": {"type": "string", "maxLength": 128, "description": "idempotency key"},
            "body": {"type": "string", "maxLength": 16384},
        },
    },
    "Posted": {
        "type": "object",
        "properties": {
            "room": {"type": "string"},
            "seq": {"type": "integer"},
            "ts": {"type": "number"},
            "duplicate": {"type": "boolean"},
        },
    },
    "Message": {
        "type": "object",
        "properties": {
            "room": {"type": "string"},
            "seq": {"type": "integer"},
            "from": {"type": "string"},
            "key": {"type": "string"},
            "body": {"type": "string"},
            "ts": {"type": "number"},
        },
    },
    "Messages": {
        "type": "object",
        "properties": {
            "room": {"type": "string"},
            "head": {"type": "integer"},
            "messages": {"type": "array", "items": _ref("Message")},
        },
    },
    "Ack": {"type": "object", "required": ["seq"], "properties": {"seq": {"type": "integer"}}},
    "Cursor": {
        "type": "object",
        "properties": {"room": {"type": "string"}, "cursor": {"type": "integer"}},
    },
    "NewUser": {
        "type": "object",
        "required": ["id"],
        "properties": {
            "id": {"type": "string"},
            "display_name": {"type": "string"},
            "kind": {"enum": ["person", "app"]},
        },
    },
    "SignUp": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {
                "type": "string",
                "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,54}$",
                "description": "the name to go by; the user id is this name, '-' and 8 hex digits",
            }
        },
    },
    "SignedUp": {
        "type": "object",
        "required": ["user", "token"],
        "properties": {
            "user": {"type": "string", "description": "the new user's id, made by the server"},
            "token": {"type": "string", "description": "the user's token, shown once"},
        },
    },
    "NewToken": {"type": "object", "properties": {"label": {"type": "string"}}},
    "Token": {
        "type": "object",
        "properties": {
            "token_id": {"type": "string"},
            "user": {"type": "string"},
            "token": {"type": "string"},
        },
    },
    "RoomSettings": {
        "type": "object",
        "properties": {
            "open": {"type": "boolean"},
            "keep_all": {"type": "boolean"},
            "keep_seconds": {"type": "number"},
            "keep_last": {"type": "integer"},
        },
    },
    "Room": {"type": "object"},
    "Member": {"type": "object"},
}

_PATHS: dict[str, Any] = {
    "/api/v1/openapi.json": {"get": _op("This document", {"200": _json({}, "OpenAPI")})},
    "/api/v1/me": {"get": _op("The caller and their rooms", {"200": _json({}, "Caller")})},
    "/api/v1/signup": {
        "post": _op(
            "Sign up a new person (if enabled); every sign-up creates a user of its own",
            {"201": _json(_ref("SignedUp"), "")},
            "SignUp",
        )
    },
    "/api/v1/rooms": {
        "get": _op("Open rooms and the caller's closed ones", {"200": _json({}, "Rooms")})
    },
    "/api/v1/rooms/{room}": {
        "put": _op(
            "Create a room or change it (admin)",
            {"200": _json(_ref("Room"), "")},
            "RoomSettings",
            parameters=[_ROOM],
        )
    },
    "/api/v1/rooms/{room}/messages": {
        "post": _op(
            "Post a message; answered once durable. A known key answers 200 with the first seq",
            {"201": _json(_ref("Posted"), "Stored"), "200": _json(_ref("Posted"), "Known key")},
            "PostMessage",
            parameters=[_ROOM],
        ),
        "get": _op(
            "Messages after a seq (default: the caller's cursor); waits up to `wait` s if none",
            {"200": _json(_ref("Messages"), "")},
            parameters=[
                _ROOM,
                {"name": "after", "in": "query", "schema": {"type": "integer"}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 1000}},
                {"name": "wait", "in": "query", "schema": {"type": "integer", "maximum": 30}},
            ],
        ),
    },
    "/api/v1/rooms/{room}/ack": {
        "post": _op(
            "Acknowledge every message up to seq (durable cursor)",
            {"200": _json(_ref("Cursor"), "")},
            "Ack",
            parameters=[_ROOM],
        )
    },
    "/api/v1/rooms/{room}/members/{user}": {
        "put": _op(
            "Join (user `me`, open rooms) or add a member (admin)",
            {"200": _json(_ref("Member"), "")},
            parameters=[_ROOM, _USER],
        ),
        "delete": _op(
            "Leave (`me`) or remove a member (admin)",
            {"204": {"description": "Removed"}},
            parameters=[_ROOM, _USER],
        ),
    },
    "/api/v1/users": {
        "post": _op("Create or update a user (admin)", {"201": _json({}, "User")}, "NewUser")
    },
    "/api/v1/users/{user}/tokens": {
        "post": _op(
            "Issue a token, shown once (admin)",
            {"201": _json(_ref("Token"), "")},
            "NewToken",
            parameters=[_USER],
        )
    },
    "/api/v1/tokens/{token_id}": {
        "delete": _op(
            "Revoke a token (admin)",
            {"204": {"description": "Revoked"}},
            parameters=[{"name": "token_id", "in": "path", "required": True}],
        )
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "servicebay chat", "version": "1"},
    "components": {
        "schemas": _SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{"bearer": []}],
    "paths": _PATHS,
}
