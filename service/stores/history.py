"""Message history per room, with ids ordered per room so clients can recover what they missed.

Ids have the form ``<milliseconds>-<sequence>``: a Redis Stream id in cluster mode, and the
same shape in memory, so clients never see the difference.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.exceptions import NoScriptError, OutOfMemoryError

from .. import wirejson
from ..protocol import format_id, id_after, id_before, parse_id
from .link import REDIS_ERRORS, RedisLink
from .ratelimit import TAKE_TOKEN_LUA, Charge, RateLimited

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


class HistoryFull(HistoryUnavailable):
    """Redis answers but refuses writes (``maxmemory`` reached with ``noeviction``): waiting
    for it would not help, and a plain PUBLISH still works."""


@dataclass(frozen=True)
class Posted:
    """A message stored (and published) by :meth:`RedisHistory.post`."""

    message: Message
    prev: str
    """The id of the entry before it in the stream ("" when unknown): a listener that last
    delivered another id knows it missed something."""
    duplicate: bool = False
    """An earlier attempt of the same post had been stored already (nothing was written)."""
    replicas: int | None = None
    """How many replicas acknowledged the write (``WAIT``), when asked for."""


# KEYS: stream, newest dropped id, and optionally the sender's rate-limit bucket.
# ARGV: message JSON, size, ttl seconds, nonce, dedupe-from id ("" = no check), channel
# ("" = store only), publish command (PUBLISH or SPUBLISH), room name as a JSON string, and
# with a bucket its capacity and tokens per millisecond.
# One atomic step: store, trim, expire, publish. Every instance sees a message on the channel
# exactly when it is in the stream, and the published payload names the entry before it, so a
# listener notices a gap. The channel carries the room in the same hash tag as the keys, so the
# script runs on Redis Cluster too (one slot).
# Trims by hand so the id of the newest dropped entry is known: recovery needs it to tell
# "nothing missed" from "gap older than what is kept" (XADD MAXLEN does not record it).
# The nonce (field ``n``) lets a retry after an uncertain failure (a timeout: the first try may
# still run when a frozen Redis resumes) find the first try instead of storing twice.
# With a bucket, the sender's token is taken first (after the dedupe: a retry that finds its
# first try pays nothing), so ``message:send`` costs one round trip; an empty bucket stores
# nothing and returns the wait in ms as a fourth element. Only where the bucket and the room
# may share a script (not on Redis Cluster: different slots).
_POST_SCRIPT = (
    TAKE_TOKEN_LUA
    + """
if ARGV[5] ~= '' then
  local recent = redis.call('XRANGE', KEYS[1], ARGV[5], '+', 'COUNT', 2000)
  for i = #recent, 1, -1 do
    local fields = recent[i][2]
    for j = 1, #fields - 1, 2 do
      if fields[j] == 'n' and fields[j + 1] == ARGV[4] then
        return {recent[i][1], '', 1}
      end
    end
  end
end
if KEYS[3] then
  local wait = take_token(KEYS[3], tonumber(ARGV[9]), tonumber(ARGV[10]))
  if wait > 0 then return {'', '', 0, tostring(wait)} end
end
local prev = ''
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if last[1] then prev = last[1][1] end
local id = redis.call('XADD', KEYS[1], '*', 'm', ARGV[1], 'n', ARGV[4])
local size = tonumber(ARGV[2])
local excess = redis.call('XLEN', KEYS[1]) - size
if excess > 0 then
  local old = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', excess)
  redis.call('SET', KEYS[2], old[#old][1])
  redis.call('XTRIM', KEYS[1], 'MAXLEN', size)
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if ARGV[6] ~= '' then
  redis.call(ARGV[7], ARGV[6], '{"method":"stored","room":' .. ARGV[8] .. ',"id":"' .. id ..
    '","prev":"' .. prev .. '","m":' .. ARGV[1] .. '}')
end
return {id, prev, 0}
"""
)


class RedisHistory:
    """History in one Redis Stream per room: capped at ``size``, expired after ``ttl`` idle."""

    def __init__(self, link: RedisLink, *, size: int, ttl_seconds: int) -> None:
        self._link = link
        self._redis = link.redis
        self._metrics = link.metrics
        self._size = size
        self._ttl = ttl_seconds
        self._post = link.redis.register_script(_POST_SCRIPT)
        self._nonces = itertools.count(1)
        self._nonce_base = secrets.token_hex(4)

    def _check_available(self) -> None:
        if not self._link.available():
            raise HistoryUnavailable("redis is down")

    def _keys(self, room_id: str) -> tuple[str, str]:
        stream = self._link.key("history", room_id)
        return stream, f"{stream}:dropped"

    def nonce(self) -> str:
        """A token unique to one post of this process, stored with the entry."""
        return f"{self._nonce_base}{next(self._nonces):x}"

    async def append(self, room_id: str, message: Message) -> Message:
        self._check_available()
        posted = await self.post(room_id, message, nonce=self.nonce())
        return posted.message

    async def post(
        self,
        room_id: str,
        message: Message,
        *,
        nonce: str,
        channel: str = "",
        sharded: bool = False,
        dedupe_from_ms: int | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 0,
        charge: Charge | None = None,
    ) -> Posted:
        """Store ``message`` and, with a ``channel``, publish it there in the same script.

        ``dedupe_from_ms``: an earlier try of this nonce may have been stored from then on;
        if so, return that entry (``duplicate``) and write nothing. ``wait_replicas``: send
        ``WAIT`` on the same connection, in the same round trip, and report how many replicas
        acknowledged. ``charge``: take the sender's token first; raises :class:`RateLimited`
        (nothing stored) when the bucket is empty.
        """
        keys: tuple[str, ...] = self._keys(room_id)
        body = wirejson.dumps(message)
        args = [
            body,
            self._size,
            self._ttl,
            nonce,
            f"{dedupe_from_ms}" if dedupe_from_ms is not None else "",
            channel,
            "SPUBLISH" if sharded else "PUBLISH",
            json.dumps(f"room:{room_id}"),
        ]
        if charge is not None:
            keys = (*keys, charge.key)
            args += [charge.capacity, charge.rate_per_ms]
        replicas: int | None = None
        with self._metrics.redis_op("history_append"), _unavailable_on_error():
            if wait_replicas > 0:
                result, replicas = await self._post_and_wait(
                    keys, args, wait_replicas, wait_timeout_ms
                )
            else:
                result = await self._post(keys=list(keys), args=args)
        raw_id, prev, duplicate, *limited = result
        if limited:
            raise RateLimited(float(_text(limited[0])) / 1000)
        return Posted({"id": _text(raw_id), **message}, _text(prev), bool(int(duplicate)), replicas)

    async def _post_and_wait(
        self, keys: tuple[str, ...], args: list[Any], replicas: int, timeout_ms: int
    ) -> tuple[Any, int]:
        """The script and ``WAIT`` pipelined on one connection: WAIT counts the replicas that
        have this connection's writes, so it must follow the script on the same one."""
        for attempt in (1, 2):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.evalsha(self._post.sha, len(keys), *keys, *args)
                pipe.execute_command("WAIT", replicas, timeout_ms)
                try:
                    result, acked = await pipe.execute()
                except NoScriptError:
                    if attempt == 2:
                        raise
                    # a fresh master (after a failover) has no script cache yet
                    await self._redis.script_load(_POST_SCRIPT)
                    continue
            return result, int(acked)
        raise AssertionError("unreachable")

    async def latest(self, room_ids: list[str]) -> dict[str, str]:
        """The newest id of each room's stream (rooms without one are left out)."""
        if not room_ids:
            return {}
        with self._metrics.redis_op("history_read"), _unavailable_on_error():
            async with self._redis.pipeline(transaction=False) as pipe:
                for room_id in room_ids:
                    pipe.xrevrange(self._keys(room_id)[0], max="+", min="-", count=1)
                results = await pipe.execute()
        return {
            room_id: _text(entries[0][0])
            for room_id, entries in zip(room_ids, results, strict=True)
            if entries
        }

    async def between(
        self, room_id: str, after: str, before: str | None = None, limit: int = 1000
    ) -> list[Message]:
        """Kept messages with ``after < id < before`` (``before`` None: up to the newest)."""
        stream, _ = self._keys(room_id)
        # inclusive bounds computed here: Redis refuses "(" past the ends of the id space
        oldest = id_after(*parse_id(after))
        newest = id_before(*parse_id(before)) if before is not None else None
        if oldest is None or (before is not None and newest is None):
            return []
        with self._metrics.redis_op("history_read"), _unavailable_on_error():
            entries = await self._redis.xrange(
                stream,
                min=format_id(*oldest),
                max=format_id(*newest) if newest else "+",
                count=limit,
            )
        return [_decode(entry) for entry in entries]

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
    except OutOfMemoryError as exc:
        raise HistoryFull(str(exc)) from exc
    except REDIS_ERRORS as exc:
        raise HistoryUnavailable(str(exc)) from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(entry: tuple[Any, dict[Any, Any]]) -> Message:
    entry_id, fields = entry
    raw = fields.get(b"m", fields.get("m"))
    return {"id": _text(entry_id), **json.loads(raw)}
