"""Chooses the history, presence and rate-limit backends from the settings, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import Settings
from .history import HistoryStore, MemoryHistory, RedisHistory
from .link import RedisLink
from .presence import MemoryPresence, PresenceStore, RedisPresence
from .ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from .sessions import MemorySessions, RedisSessions, SessionStore


@dataclass(frozen=True)
class Stores:
    history: HistoryStore
    presence: PresenceStore
    limiter: RateLimiter
    sessions: SessionStore = field(default_factory=MemorySessions)
    """Disconnected sessions kept for connection state recovery."""


def memory_stores(settings: Settings) -> Stores:
    """The embedded default: everything in this process."""
    return Stores(
        history=MemoryHistory(settings.history_size, settings.history_ttl_seconds),
        presence=MemoryPresence(),
        limiter=MemoryRateLimiter(settings.rate_limit_events, settings.rate_limit_window_seconds),
    )


def redis_stores(settings: Settings, link: RedisLink) -> Stores:
    """Cluster mode: history, presence and rate limits shared by every instance; while
    ``link.available()`` is false each falls back at once (``HistoryUnavailable``, local
    presence, local bucket)."""
    return Stores(
        history=RedisHistory(
            link, size=settings.history_size, ttl_seconds=settings.history_ttl_seconds
        ),
        presence=RedisPresence(link, ttl_seconds=settings.presence_ttl_seconds),
        limiter=RedisRateLimiter(
            link,
            events=settings.rate_limit_events,
            window_seconds=settings.rate_limit_window_seconds,
        ),
        sessions=RedisSessions(link),
    )
