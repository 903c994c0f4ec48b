"""The wire protocol (docs/protocol.md): event names, error codes and payload validation.

Validation never coerces: a room id must already be a string of the allowed characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from . import wirejson

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
AUTH_EXPIRED = "auth:expired"
"""``{code: "token_expired", message}`` right before the server disconnects a socket whose
token expired: reconnect with a fresh token."""
SERVER_EVENTS = (
    JOINED_ROOM,
    USER_JOINED,
    USER_LEFT,
    MESSAGE_RECEIVED,
    PRIVATE_RECEIVED,
    TYPING_USER_START,
    TYPING_USER_STOP,
    SERVER_SHUTDOWN,
    AUTH_EXPIRED,
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
    "token expired": "token_expired",  # ours: the socket's JWT expired
}

ROOM_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
MAX_USER_ID_CHARS = 256
DEFAULT_HISTORY_LIMIT = 50


def valid_user_id(value: object) -> bool:
    """The rule for a user id (a token's ``sub``, a private message's target): a non-empty
    string of at most :data:`MAX_USER_ID_CHARS` characters that encodes as UTF-8 (it names
    a Redis channel in cluster mode: a lone surrogate cannot be encoded)."""
    return isinstance(value, str) and 0 < len(value) <= MAX_USER_ID_CHARS and _utf8(value)


MAX_ID_PART = 2**64 - 1
"""Both halves of a message id are unsigned 64-bit integers (as in a Redis Stream id)."""
_ID = re.compile(r"([0-9]{1,24})-([0-9]{1,24})")


def parse_id(value: object) -> tuple[int, int]:
    """``"<ms>-<seq>"`` -> ``(ms, seq)``; raises ``ValueError`` for anything else.

    ASCII digits only (``str.isdigit`` also accepts other scripts' digits, which Redis
    refuses) and each half within the unsigned 64-bit range Redis accepts.
    """
    match = _ID.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError("message id must be a string like '1700000000000-0'")
    ms, seq = int(match.group(1)), int(match.group(2))
    if ms > MAX_ID_PART or seq > MAX_ID_PART:
        raise ValueError("message id out of range (each part below 2^64)")
    return ms, seq


def format_id(ms: int, seq: int) -> str:
    """The canonical text of an id (no leading zeros)."""
    return f"{ms}-{seq}"


def id_after(ms: int, seq: int) -> tuple[int, int] | None:
    """The smallest id greater than ``(ms, seq)``; None past the largest possible id."""
    if seq < MAX_ID_PART:
        return ms, seq + 1
    return (ms + 1, 0) if ms < MAX_ID_PART else None


def id_before(ms: int, seq: int) -> tuple[int, int] | None:
    """The largest id smaller than ``(ms, seq)``; None before ``0-0``."""
    if seq > 0:
        return ms, seq - 1
    return (ms - 1, MAX_ID_PART) if ms > 0 else None


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
    if CONTROL_CHARS.search(value):
        # JSON escapes each as six bytes (\u0001): a message would cost six times its size
        raise EventError(
            "invalid_payload", "message must not contain control characters (tab, LF, CR are ok)"
        )
    return value


CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
"""C0 control characters refused in messages; tab, line feed and carriage return are text."""


def json_bytes(value: object) -> int:
    """What ``value`` costs on the wire and in Redis (UTF-8 JSON, compact)."""
    return len(wirejson.dumps(value).encode("utf-8"))


def fit_bytes(messages: list[Any], budget: int, *, keep: str) -> tuple[list[Any], bool]:
    """The messages at the ``keep`` end (``"newest"``: the list's tail, ``"oldest"``: its
    head) whose JSON fits in ``budget`` bytes, at least one; and whether any were cut."""
    ordered = messages if keep == "oldest" else list(reversed(messages))
    kept: list[Any] = []
    used = 0
    for message in ordered:
        used += json_bytes(message) + 1
        if kept and used > budget:
            break
        kept.append(message)
    cut = len(kept) < len(messages)
    return (kept if keep == "oldest" else kept[::-1]), cut


def bound_reply(reply: dict[str, Any], budget: int) -> dict[str, Any]:
    """Cut the message lists of a reply so it fits the socket's send buffer.

    ``history``/``messages`` keep their newest messages and gain ``more: true`` when some
    were cut (page back with ``history:get {before: <oldest id>}``); ``missed`` keeps its
    oldest and gains ``missedMore: true`` (``join:room {since: <last missed id>}`` again).
    """
    lists = [key for key in ("history", "messages", "missed") if reply.get(key)]
    if not lists:
        return reply
    share = max(1, budget // len(lists))
    for key in lists:
        kept, cut = fit_bytes(reply[key], share, keep="oldest" if key == "missed" else "newest")
        if cut:
            reply[key] = kept
            reply["missedMore" if key == "missed" else "more"] = True
    return reply


def message_id(value: object, field: str) -> str:
    """A client's message id, validated to the range Redis accepts, in canonical form."""
    try:
        return format_id(*parse_id(value))
    except ValueError as exc:
        raise EventError("invalid_payload", f"{field}: {exc}") from None


def _utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
    if not valid_user_id(target):
        raise EventError(
            "invalid_payload",
            f"targetUserId must be UTF-8 text of 1-{MAX_USER_ID_CHARS} characters",
        )
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
