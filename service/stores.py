"""Chooses the history, presence and rate-limit backends from the settings, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from .config import Settings
from .history import HistoryStore, MemoryHistory
from .presence import MemoryPresence, PresenceStore
from .ratelimit import MemoryRateLimiter, RateLimiter


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
