"""Chooses the history, presence and rate-limit backends from the settings, in one place."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import Settings
from .history import HistoryStore, MemoryHistory, RedisHistory
from .metrics import Metrics
from .presence import MemoryPresence, PresenceStore, RedisPresence
from .ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter


@dataclass(frozen=True)
class Stores:
    history: HistoryStore
    presence: PresenceStore
    limiter: RateLimiter


def memory_stores(settings: Settings) -> Stores:
    """The embedded default: everything in this process."""
    return Stores(
        history=MemoryHistory(settings.history_size, settings.history_ttl_seconds),
        presence=MemoryPresence(),
        limiter=MemoryRateLimiter(settings.rate_limit_events, settings.rate_limit_window_seconds),
    )


def redis_stores(
    settings: Settings,
    redis: Any,
    metrics: Metrics,
    available: Callable[[], bool] = lambda: True,
) -> Stores:
    """Cluster mode: history, presence and rate limits shared by every instance.

    ``available`` is the Redis monitor's verdict: while Redis is down every store falls back
    at once (local bucket, local presence, ``HistoryUnavailable``) instead of each call
    waiting out the command timeout.
    """
    return Stores(
        history=RedisHistory(
            redis,
            metrics,
            size=settings.history_size,
            ttl_seconds=settings.history_ttl_seconds,
            prefix=settings.redis_prefix,
            available=available,
        ),
        presence=RedisPresence(
            redis,
            metrics,
            ttl_seconds=settings.presence_ttl_seconds,
            prefix=settings.redis_prefix,
            available=available,
        ),
        limiter=RedisRateLimiter(
            redis,
            metrics,
            events=settings.rate_limit_events,
            window_seconds=settings.rate_limit_window_seconds,
            prefix=settings.redis_prefix,
            available=available,
        ),
    )
