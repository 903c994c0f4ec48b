"""The wire protocol of DESIGN §3: event names, error codes and payload validation.

Validation never coerces: a room id must already be a string of the allowed characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

JOIN_ROOM = "join:room"
LEAVE_ROOM = "leave:room"
MESSAGE_SEND = "message:send"
MESSAGE_PRIVATE = "message:private"
TYPING_START = "typing:start"
TYPING_STOP = "typing:stop"
HISTORY_GET = "history:get"
PRESENCE_GET = "presence:get"
CLIENT_EVENTS = (
    JOIN_ROOM,
    LEAVE_ROOM,
    MESSAGE_SEND,
    MESSAGE_PRIVATE,
    TYPING_START,
    TYPING_STOP,
    HISTORY_GET,
    PRESENCE_GET,
)

JOINED_ROOM = "joined:room"
USER_JOINED = "user:joined"
USER_LEFT = "user:left"
MESSAGE_RECEIVED = "message:received"
PRIVATE_RECEIVED = "message:private:received"
TYPING_USER_START = "typing:user:start"
TYPING_USER_STOP = "typing:user:stop"
SERVER_SHUTDOWN = "server:shutdown"
SERVER_EVENTS = (
    JOINED_ROOM,
    USER_JOINED,
    USER_LEFT,
    MESSAGE_RECEIVED,
    PRIVATE_RECEIVED,
    TYPING_USER_START,
    TYPING_USER_STOP,
    SERVER_SHUTDOWN,
)

ERROR_CODES = (
    "invalid_payload",
    "not_in_room",
    "rate_limited",
    "too_large",
    "unknown_event",
    "internal",
    "too_many_rooms",
    "forbidden",
)

# python-socketio's disconnect reasons -> bounded metric label values ("other" otherwise)
DISCONNECT_REASONS = {
    "client disconnect": "client_disconnect",
    "server disconnect": "server_disconnect",
    "ping timeout": "ping_timeout",
    "transport close": "transport_close",
    "transport error": "transport_error",
}

ROOM_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
MAX_USER_ID_CHARS = 256
DEFAULT_HISTORY_LIMIT = 50


def parse_id(value: object) -> tuple[int, int]:
    """``"<ms>-<seq>"`` -> ``(ms, seq)``; raises ``ValueError`` for anything else."""
    if not isinstance(value, str) or len(value) > 48:
        raise ValueError("message id must be a string like '1700000000000-0'")
    ms, sep, seq = value.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit():
        raise ValueError("message id must be a string like '1700000000000-0'")
    return int(ms), int(seq)


class EventError(Exception):
    """A refused event; becomes ``{ok: false, error: {code, message, ...}}`` in the ack."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra

    def ack(self) -> dict[str, Any]:
        return {"ok": False, "error": {"code": self.code, "message": self.message, **self.extra}}


def room_channel(room_id: str) -> str:
    """The Socket.IO room that holds a chat room's members."""
    return f"room:{room_id}"


def user_channel(user_id: str) -> str:
    """The Socket.IO room every socket of a user joins on connect."""
    return f"user:{user_id}"


def room_id(value: object) -> str:
    if not isinstance(value, str) or not ROOM_ID.fullmatch(value):
        raise EventError(
            "invalid_payload", "roomId must be a string of 1-128 characters [A-Za-z0-9_.:-]"
        )
    return value


def room_ref(payload: object) -> str:
    """A room named either as ``roomId`` or as ``{roomId}``."""
    if isinstance(payload, dict):
        return room_id(_object(payload, "roomId")["roomId"])
    return room_id(payload)


def _object(payload: object, *required: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise EventError("invalid_payload", "payload must be an object")
    missing = [key for key in required if key not in payload]
    if missing:
        raise EventError("invalid_payload", f"missing field(s): {', '.join(missing)}")
    return payload


def message_text(value: object, max_bytes: int) -> str:
    if not isinstance(value, str) or not value:
        raise EventError("invalid_payload", "message must be a non-empty string")
    # a str holds at most 4 bytes per character: skip the encode when it cannot be too big
    if len(value) * 4 > max_bytes and len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise EventError("too_large", f"message exceeds {max_bytes} bytes", maxBytes=max_bytes)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise EventError("invalid_payload", "message must be valid UTF-8 text") from None
    return value


def message_id(value: object, field: str) -> str:
    try:
        parse_id(value)
    except ValueError as exc:
        raise EventError("invalid_payload", f"{field}: {exc}") from None
    assert isinstance(value, str)
    return value


@dataclass(frozen=True)
class JoinRequest:
    room_id: str
    since: str | None


def join_request(payload: object) -> JoinRequest:
    if isinstance(payload, str):
        return JoinRequest(room_id(payload), None)
    data = _object(payload, "roomId")
    since = data.get("since")
    return JoinRequest(
        room_id(data["roomId"]), None if since is None else message_id(since, "since")
    )


@dataclass(frozen=True)
class RoomMessage:
    room_id: str
    message: str


def room_message(payload: object, max_bytes: int) -> RoomMessage:
    data = _object(payload, "roomId", "message")
    return RoomMessage(room_id(data["roomId"]), message_text(data["message"], max_bytes))


@dataclass(frozen=True)
class PrivateMessage:
    target_user_id: str
    message: str


def private_message(payload: object, max_bytes: int) -> PrivateMessage:
    data = _object(payload, "targetUserId", "message")
    target = data["targetUserId"]
    if not isinstance(target, str) or not target or len(target) > MAX_USER_ID_CHARS:
        raise EventError("invalid_payload", "targetUserId must be a non-empty string")
    return PrivateMessage(target, message_text(data["message"], max_bytes))


@dataclass(frozen=True)
class HistoryQuery:
    room_id: str
    before: str | None
    limit: int


def history_query(payload: object, max_limit: int) -> HistoryQuery:
    if isinstance(payload, str):
        return HistoryQuery(room_id(payload), None, min(DEFAULT_HISTORY_LIMIT, max_limit))
    data = _object(payload, "roomId")
    before = data.get("before")
    limit = data.get("limit", min(DEFAULT_HISTORY_LIMIT, max_limit))
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise EventError("invalid_payload", "limit must be a positive integer")
    return HistoryQuery(
        room_id(data["roomId"]),
        None if before is None else message_id(before, "before"),
        min(limit, max_limit),
    )
