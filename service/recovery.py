"""Socket.IO connection state recovery (the v4.6 protocol), built on the room history.

How the official client takes part, with no application code:

* the server's CONNECT answer carries ``pid``, a private session id
  (:mod:`service.engine.recovery` puts it there);
* each room message (``message:received``) carries its id as a last, extra argument: the
  client keeps the last one it processed as its *offset*;
* when its transport drops it reconnects with ``auth = {...auth, pid, offset}``; if the server
  answers with the same ``pid`` the client sets ``socket.recovered = true``.

The server side here: when a socket's transport drops (not when it leaves on purpose), its
session — user, rooms and, per room, the id up to which the client has the room — is kept
for ``CONNECTION_STATE_RECOVERY_SECONDS`` (in Redis in cluster mode, so any instance can
restore it). A reconnect that brings a known ``pid`` for the same user gets its rooms back and
every message stored in those rooms after its offset, once each and in id order, before the
CONNECT answer (the client buffers them and hands them over once connected, like socket.io's
own server does). When that is impossible — unknown or expired ``pid``, another user, history
too short for the gap, a room no longer allowed, Redis down — the connection is an ordinary
new one with a new ``pid`` and ``socket.recovered`` stays false: the application resyncs.

Message ids are per room (Redis Stream ids: milliseconds, then a sequence), and the one
offset a client sends is the id of the last message it got from *any* room: a room's replay
starts after the later of that offset and the newest id the socket had from that room when
it joined. Ids across rooms order by creation time, to the millisecond.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from .protocol import JOINED_ROOM, MESSAGE_RECEIVED, ROOM_ID, parse_id
from .stores.history import HistoryStore, HistoryUnavailable
from .stores.sessions import SessionStore

PID = re.compile(r"[A-Za-z0-9_-]{16,64}")
"""What a ``pid`` from a client may look like (ours are 22 URL-safe characters)."""

RECOVERABLE_REASONS = frozenset({"transport close", "transport error", "ping timeout"})
"""python-socketio's disconnect reasons after which the client comes back on its own (a
client that disconnects on purpose, or a socket the server disconnects, does not)."""

START = "0-0"
"""The offset before the first message of any room."""

Message = dict[str, Any]


def new_pid() -> str:
    return secrets.token_urlsafe(16)


def id_key(message_id: str) -> tuple[int, int]:
    return parse_id(message_id)


def later(a: str, b: str) -> str:
    return a if id_key(a) >= id_key(b) else b


@dataclass(frozen=True)
class Resume:
    """What a reconnecting client sent in its CONNECT ``auth``."""

    pid: str
    offset: str | None


def resume_request(auth: object) -> Resume | None:
    """``{pid, offset?}`` from a client's CONNECT auth, or ``None``.

    Hostile input: anything but a pid of the expected shape and, when present, an offset
    that is a message id means "no recovery" (never an error, never a crash).
    """
    if not isinstance(auth, dict):
        return None
    pid = auth.get("pid")
    if not isinstance(pid, str) or not PID.fullmatch(pid):
        return None
    offset = auth.get("offset")
    if offset is None:
        return Resume(pid, None)
    try:
        parse_id(offset)
    except ValueError:
        return None
    return Resume(pid, offset)


def _rooms_of(record: dict[str, Any], max_rooms: int) -> dict[str, str] | None:
    rooms = record.get("r")
    if not isinstance(rooms, dict) or len(rooms) > max_rooms:
        return None
    out: dict[str, str] = {}
    for room_id, upto in rooms.items():
        if not isinstance(room_id, str) or not ROOM_ID.fullmatch(room_id):
            return None
        try:
            parse_id(upto)
        except ValueError:
            return None
        out[room_id] = upto
    return out


class Recovery:
    """Keeps disconnected sessions and restores them with what they missed."""

    def __init__(
        self,
        sessions: SessionStore,
        history: HistoryStore,
        *,
        window_seconds: float,
        max_rooms: int,
    ) -> None:
        self._sessions = sessions
        self._history = history
        self.window_seconds = window_seconds
        self._max_rooms = max_rooms

    @property
    def enabled(self) -> bool:
        return self.window_seconds > 0

    async def persist(
        self, pid: str, user_id: str, rooms: dict[str, str], *, only_if_kept: bool = False
    ) -> None:
        """Keep a dropped socket's session for the recovery window (with ``only_if_kept``:
        refresh a record kept earlier, unless a reconnect took it meanwhile)."""
        await self._sessions.save(
            pid, {"u": user_id, "r": rooms}, self.window_seconds, only_if_kept=only_if_kept
        )

    async def take(self, resume: Resume, user_id: str) -> dict[str, str] | None:
        """The rooms (room -> id the client has) of the session under ``resume.pid``.

        The record is deleted as it is read: a pid restores at most once, whatever follows.
        ``None`` when unknown, expired, another user's or malformed.
        """
        record = await self._sessions.take(resume.pid)
        if record is None or record.get("u") != user_id:
            return None
        return _rooms_of(record, self._max_rooms)

    async def missed(
        self, rooms: dict[str, str], offset: str | None
    ) -> tuple[dict[str, str], list[Message]] | None:
        """Every message kept after the client's position in each room, merged in id order,
        and the rooms' new positions; ``None`` when some of it is no longer kept."""
        positions: dict[str, str] = {}
        messages: list[Message] = []
        for room_id, upto in rooms.items():
            start = upto if offset is None else later(upto, offset)
            try:
                gap = await self._history.since(room_id, start)
            except HistoryUnavailable:
                return None
            # a room with no kept messages at all has nothing to replay; otherwise messages
            # dropped from history since `start` make the gap unrecoverable
            if not gap.complete and gap.messages:
                return None
            messages.extend(gap.messages)
            positions[room_id] = gap.messages[-1]["id"] if gap.messages else start
        messages.sort(key=lambda m: id_key(m["id"]))
        return positions, messages


def with_offset(event: str, data: Any) -> Any:
    """The arguments of a server event once recovery is on.

    ``message:received`` gets its id as the Socket.IO offset (a last, extra argument, which
    the official client remembers). ``joined:room`` would otherwise end with a string (the
    room id) that the client would take for an offset: it gets a trailing ``null``, which
    leaves the client's offset alone. Every other event ends with an object already.
    """
    if event == MESSAGE_RECEIVED and isinstance(data, dict) and isinstance(data.get("id"), str):
        return (data, data["id"])
    if event == JOINED_ROOM and isinstance(data, str):
        return (data, None)
    return data
