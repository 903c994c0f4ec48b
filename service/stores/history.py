"""Message history per room, with ids ordered per room so clients can recover what they missed.

Ids have the form ``<milliseconds>-<sequence>``: a Redis Stream id in cluster mode, and the
same shape in memory, so clients never see the difference.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import wirejson
from ..protocol import format_id, id_after, id_before, parse_id
from .link import REDIS_ERRORS, RedisLink

Message = dict[str, Any]


@dataclass(frozen=True)
class Recovery:
    """Messages after a client's last seen id; ``complete`` is false when some were dropped."""

    messages: list[Message]
    complete: bool


class HistoryStore(Protocol):
    async def append(self, room_id: str, message: Message) -> Message:
        """Store ``message`` (without ``id``) and return it with its new id."""
        ...

    async def recent(self, room_id: str, limit: int, before: str | None = None) -> list[Message]:
        """The last ``limit`` messages (older than ``before``), oldest first."""
        ...

    async def since(self, room_id: str, last_id: str) -> Recovery:
        """Every kept message after ``last_id``, oldest first."""
        ...


@dataclass
class _Room:
    messages: deque[tuple[tuple[int, int], Message]]
    last_id: tuple[int, int] = (0, 0)
    dropped_up_to: tuple[int, int] = (0, 0)
    touched: float = field(default_factory=time.monotonic)


class MemoryHistory:
    """In-process history: a bounded deque per room, dropped after ``ttl`` idle seconds."""

    def __init__(self, size: int, ttl_seconds: float) -> None:
        self._size = size
        self._ttl = ttl_seconds
        self._rooms: dict[str, _Room] = {}
        self._appends = 0

    def _room(self, room_id: str) -> _Room | None:
        room = self._rooms.get(room_id)
        if room is not None and time.monotonic() - room.touched > self._ttl:
            del self._rooms[room_id]
            return None
        return room

    async def append(self, room_id: str, message: Message) -> Message:
        room = self._room(room_id)
        if room is None:
            room = self._rooms[room_id] = _Room(deque())
        now_ms = int(time.time() * 1000)
        ms, seq = room.last_id
        new_id = (now_ms, 0) if now_ms > ms else (ms, seq + 1)
        room.last_id = new_id
        room.touched = time.monotonic()
        stored = {"id": f"{new_id[0]}-{new_id[1]}", **message}
        room.messages.append((new_id, stored))
        while len(room.messages) > self._size:
            room.dropped_up_to = room.messages.popleft()[0]
        self._appends += 1
        if self._appends % 1024 == 0:
            self._sweep()
        return stored

    async def recent(self, room_id: str, limit: int, before: str | None = None) -> list[Message]:
        room = self._room(room_id)
        if room is None or limit <= 0:
            return []
        bound = parse_id(before) if before is not None else None
        picked = [m for key, m in room.messages if bound is None or key < bound]
        return picked[-limit:]

    async def since(self, room_id: str, last_id: str) -> Recovery:
        after = parse_id(last_id)
        room = self._room(room_id)
        if room is None:
            return Recovery([], complete=after == (0, 0))
        missed = [m for key, m in room.messages if key > after]
        return Recovery(missed, complete=after >= room.dropped_up_to)

    def _sweep(self) -> None:
        now = time.monotonic()
        for room_id in [r for r, room in self._rooms.items() if now - room.touched > self._ttl]:
            del self._rooms[room_id]


class HistoryUnavailable(Exception):
    """History could not be written (Redis down); the caller decides how to degrade."""


# KEYS: stream, dropped-marker; ARGV: message JSON, size, ttl seconds.
# Trims by hand so the id of the newest dropped entry is known: recovery needs it to tell
# "nothing missed" from "gap older than what is kept" (XADD MAXLEN does not record it).
_APPEND_SCRIPT = """
local id = redis.call('XADD', KEYS[1], '*', 'm', ARGV[1])
local size = tonumber(ARGV[2])
local excess = redis.call('XLEN', KEYS[1]) - size
if excess > 0 then
  local old = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', excess)
  redis.call('SET', KEYS[2], old[#old][1])
  redis.call('XTRIM', KEYS[1], 'MAXLEN', size)
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return id
"""


class RedisHistory:
    """History in one Redis Stream per room: capped at ``size``, expired after ``ttl`` idle."""

    def __init__(self, link: RedisLink, *, size: int, ttl_seconds: int) -> None:
        self._link = link
        self._redis = link.redis
        self._metrics = link.metrics
        self._size = size
        self._ttl = ttl_seconds
        self._append = link.redis.register_script(_APPEND_SCRIPT)

    def _check_available(self) -> None:
        if not self._link.available():
            raise HistoryUnavailable("redis is down")

    def _keys(self, room_id: str) -> tuple[str, str]:
        stream = self._link.key("history", room_id)
        return stream, f"{stream}:dropped"

    async def append(self, room_id: str, message: Message) -> Message:
        stream, dropped = self._keys(room_id)
        self._check_available()
        with self._metrics.redis_op("history_append"), _unavailable_on_error():
            raw_id = await self._append(
                keys=[stream, dropped],
                args=[wirejson.dumps(message), self._size, self._ttl],
            )
        return {"id": _text(raw_id), **message}

    async def recent(self, room_id: str, limit: int, before: str | None = None) -> list[Message]:
        if limit <= 0:
            return []
        stream, _ = self._keys(room_id)
        self._check_available()
        # an inclusive bound computed here: Redis refuses "(0-0" (nothing can precede it)
        newest = id_before(*parse_id(before)) if before is not None else None
        if before is not None and newest is None:
            return []
        with self._metrics.redis_op("history_read"), _unavailable_on_error():
            entries = await self._redis.xrevrange(
                stream, max=format_id(*newest) if newest else "+", min="-", count=limit
            )
        return [_decode(entry) for entry in reversed(entries)]

    async def since(self, room_id: str, last_id: str) -> Recovery:
        after = parse_id(last_id)
        stream, dropped = self._keys(room_id)
        self._check_available()
        with self._metrics.redis_op("history_read"), _unavailable_on_error():
            async with self._redis.pipeline(transaction=True) as pipe:
                # inclusive, computed here: Redis refuses "(" before the largest id
                oldest = id_after(*after)
                pipe.xrange(
                    stream,
                    min=format_id(*oldest) if oldest else "+",
                    max="+",
                    count=max(self._size, 1) if oldest else 1,
                )
                pipe.get(dropped)
                pipe.exists(stream)
                entries, dropped_id, exists = await pipe.execute()
        if not exists:
            return Recovery([], complete=after == (0, 0))
        dropped_up_to = parse_id(_text(dropped_id)) if dropped_id else (0, 0)
        return Recovery([_decode(e) for e in entries], complete=after >= dropped_up_to)


@contextmanager
def _unavailable_on_error() -> Iterator[None]:
    """Redis failures (refused, timed out, out of memory) become ``HistoryUnavailable``."""
    try:
        yield
    except REDIS_ERRORS as exc:
        raise HistoryUnavailable(str(exc)) from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(entry: tuple[Any, dict[Any, Any]]) -> Message:
    entry_id, fields = entry
    raw = fields.get(b"m", fields.get("m"))
    return {"id": _text(entry_id), **json.loads(raw)}
