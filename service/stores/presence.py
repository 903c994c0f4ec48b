"""Who is in a room: distinct user ids, counted over every socket of every instance."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Protocol

from .link import REDIS_ERRORS, RedisLink

log = logging.getLogger(__name__)


class PresenceStore(Protocol):
    async def add(self, room_id: str, user_id: str, sid: str) -> None: ...

    async def remove(self, room_id: str, user_id: str, sid: str) -> None: ...

    async def users(self, room_id: str) -> list[str]:
        """Distinct user ids in the room, sorted."""
        ...


class MemoryPresence:
    """Presence of this process only: room -> user -> the sids that user has in it."""

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))

    async def add(self, room_id: str, user_id: str, sid: str) -> None:
        self._rooms[room_id][user_id].add(sid)

    async def remove(self, room_id: str, user_id: str, sid: str) -> None:
        users = self._rooms.get(room_id)
        if users is None or user_id not in users:
            return
        users[user_id].discard(sid)
        if not users[user_id]:
            del users[user_id]
        if not users:
            del self._rooms[room_id]

    async def users(self, room_id: str) -> list[str]:
        return sorted(self._rooms.get(room_id, {}))

    def snapshot(self) -> dict[str, dict[str, set[str]]]:
        return {
            room: {user: set(sids) for user, sids in users.items()}
            for room, users in self._rooms.items()
        }


class RedisPresence:
    """Cluster-wide presence: a sorted set per room of ``<sid>:<user>`` scored by expiry.

    Each instance re-adds its own entries every ``ttl / 3`` seconds (:meth:`refresh`), so the
    users of a killed instance vanish from :meth:`users` within ``ttl`` seconds.
    """

    def __init__(self, link: RedisLink, *, ttl_seconds: float) -> None:
        self._link = link
        self._redis = link.redis
        self._metrics = link.metrics
        self._ttl = ttl_seconds
        self._local = MemoryPresence()  # what this instance must keep refreshing

    def _key(self, room_id: str) -> str:
        return self._link.key("presence", room_id)

    async def add(self, room_id: str, user_id: str, sid: str) -> None:
        await self._local.add(room_id, user_id, sid)
        if not self._link.available():
            return  # the refresh writes it when Redis is back
        try:
            await self._write({room_id: {user_id: {sid}}})
        except REDIS_ERRORS:
            log.info("presence write deferred to the next refresh", extra={"event": "presence"})

    async def remove(self, room_id: str, user_id: str, sid: str) -> None:
        await self._local.remove(room_id, user_id, sid)
        if not self._link.available():
            return  # the entry expires on its own
        try:
            with self._metrics.redis_op("presence_write"):
                await self._redis.zrem(self._key(room_id), f"{sid}:{user_id}")
        except REDIS_ERRORS:
            log.info("presence entry left to expire", extra={"event": "presence"})

    async def users(self, room_id: str) -> list[str]:
        """Everyone in the room; while Redis is down, this instance's members only."""
        key = self._key(room_id)
        if not self._link.available():
            return await self._local.users(room_id)
        try:
            with self._metrics.redis_op("presence_read"):
                members = await self._redis.zrangebyscore(key, time.time(), "+inf")
        except REDIS_ERRORS:
            return await self._local.users(room_id)
        return sorted({_text(m).split(":", 1)[1] for m in members})

    async def refresh(self) -> None:
        """Push every local entry's expiry forward and drop expired entries of those rooms."""
        await self._write(self._local.snapshot())

    async def _write(self, rooms: dict[str, dict[str, set[str]]]) -> None:
        if not rooms:
            return
        now = time.time()
        expires = now + self._ttl
        with self._metrics.redis_op("presence_write"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for room_id, users in rooms.items():
                    key = self._key(room_id)
                    members = {
                        f"{sid}:{user}": expires for user, sids in users.items() for sid in sids
                    }
                    pipe.zadd(key, members)
                    pipe.zremrangebyscore(key, "-inf", now)
                    pipe.expire(key, int(self._ttl * 2) + 1)
                await pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
