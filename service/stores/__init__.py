"""The one backend switch: memory or Redis for history, presence, rate limits AND the
client manager that fans messages out, chosen from the settings in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..cluster import RedisManager
from ..config import Settings
from ..engine.fanout import LocalManager
from .history import HistoryStore, MemoryHistory, RedisHistory
from .link import RedisLink
from .presence import MemoryPresence, PresenceStore, RedisPresence
from .ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from .sessions import MemorySessions, RedisSessions, SessionStore

if TYPE_CHECKING:
    import socketio

    from ..metrics import Metrics


@dataclass(frozen=True)
class Stores:
    history: HistoryStore
    presence: PresenceStore
    limiter: RateLimiter
    sessions: SessionStore = field(default_factory=MemorySessions)
    """Disconnected sessions kept for connection state recovery."""


@dataclass(frozen=True)
class Backend:
    """What the settings chose: the stores, the client manager and, in cluster mode, the
    Redis manager to start and monitor (with the stores the monitor keeps refreshed)."""

    stores: Stores
    manager: socketio.AsyncManager
    cluster: RedisManager | None = None
    refreshers: tuple[Any, ...] = field(default=())


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


def build_backend(settings: Settings, metrics: Metrics, stores: Stores | None = None) -> Backend:
    """Embedded (no ``REDIS_URL``): in-process stores and manager. Cluster mode: one Redis
    client, opened by the Redis manager, shared by the manager and every store; the stores
    fall back while the manager's monitor says Redis is down. ``stores`` overrides the
    stores (tests)."""
    if not settings.cluster:
        return Backend(stores or memory_stores(settings), LocalManager(metrics))
    manager = RedisManager(settings, metrics)
    link = RedisLink(manager.redis, metrics, settings.redis_prefix, lambda: manager.available)
    stores = stores or redis_stores(settings, link)
    refreshers = (stores.presence,) if isinstance(stores.presence, RedisPresence) else ()
    return Backend(stores, manager, manager, refreshers)
