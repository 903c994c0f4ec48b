"""Disconnected sessions kept for connection state recovery, in memory or in Redis.

A record is what a socket needs to come back: its user and, per room, the id up to which the
client already has the room's messages. It lives for ``CONNECTION_STATE_RECOVERY_SECONDS``
and is taken (read and deleted at once) by the reconnect that uses it, so a private session
id works once. In cluster mode it is in Redis, so the client may come back on any instance.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from typing import Any, Protocol

from ..expiring import prune
from .link import REDIS_ERRORS, RedisLink

log = logging.getLogger(__name__)

Record = dict[str, Any]

MAX_MEMORY_SESSIONS = 100_000
"""The embedded store's bound; the oldest records go first."""


class SessionStore(Protocol):
    async def save(
        self, pid: str, record: Record, ttl_seconds: float, *, only_if_kept: bool = False
    ) -> None:
        """Keep ``record`` under ``pid`` for ``ttl_seconds``; with ``only_if_kept``, only
        replace a record still there (never bring back one a reconnect has taken)."""
        ...

    async def take(self, pid: str) -> Record | None:
        """The record under ``pid``, removed; ``None`` when unknown or expired."""
        ...


class MemorySessions:
    """The embedded mode's store: a dict with deadlines, pruned as it is written."""

    def __init__(self) -> None:
        self._records: OrderedDict[str, tuple[float, Record]] = OrderedDict()

    async def save(
        self, pid: str, record: Record, ttl_seconds: float, *, only_if_kept: bool = False
    ) -> None:
        now = time.monotonic()
        records = self._records
        kept = records.pop(pid, None)
        if only_if_kept and (kept is None or kept[0] <= now):
            return
        records[pid] = (now + ttl_seconds, record)
        prune(records, now, MAX_MEMORY_SESSIONS)

    async def take(self, pid: str) -> Record | None:
        entry = self._records.pop(pid, None)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]


class RedisSessions:
    """Cluster mode: ``SET … PX`` at disconnect, ``GETDEL`` at reconnect (one use)."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link

    async def save(
        self, pid: str, record: Record, ttl_seconds: float, *, only_if_kept: bool = False
    ) -> None:
        if not self._link.available():
            return
        try:
            with self._link.metrics.redis_op("session_save"):
                await self._link.redis.set(
                    self._link.key("session", pid),
                    json.dumps(record, separators=(",", ":")),
                    px=max(1, int(ttl_seconds * 1000)),
                    xx=only_if_kept,
                )
        except REDIS_ERRORS as exc:
            log.warning("session not saved", extra={"event": "session_error", "error": str(exc)})

    async def take(self, pid: str) -> Record | None:
        if not self._link.available():
            return None
        try:
            with self._link.metrics.redis_op("session_take"):
                raw = await self._link.redis.getdel(self._link.key("session", pid))
        except REDIS_ERRORS as exc:
            log.warning("session not read", extra={"event": "session_error", "error": str(exc)})
            return None
        if raw is None:
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            return None
        return record if isinstance(record, dict) else None
