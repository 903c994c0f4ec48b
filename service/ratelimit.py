"""Per-user token buckets: capacity ``events``, refilled evenly over ``window`` seconds."""

from __future__ import annotations

import time
from typing import Protocol


class RateLimiter(Protocol):
    async def acquire(self, user_id: str) -> float:
        """Take one token; return 0 when allowed, else the seconds until one is available."""
        ...


class MemoryRateLimiter:
    """Buckets in this process; full buckets are forgotten so idle users cost nothing."""

    def __init__(self, events: int, window_seconds: float) -> None:
        self.capacity = float(events)
        self.rate = events / window_seconds  # tokens per second
        self._buckets: dict[str, tuple[float, float]] = {}  # user -> (tokens, updated)
        self._calls = 0

    async def acquire(self, user_id: str) -> float:
        return self.take(user_id)

    def take(self, user_id: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        tokens, updated = self._buckets.get(user_id, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - updated) * self.rate)
        if tokens < 1:
            self._buckets[user_id] = (tokens, now)
            return (1 - tokens) / self.rate
        self._buckets[user_id] = (tokens - 1, now)
        self._calls += 1
        if self._calls % 4096 == 0:
            self._forget_full(now)
        return 0.0

    def _forget_full(self, now: float) -> None:
        full_after = self.capacity / self.rate
        stale = [u for u, (_, updated) in self._buckets.items() if now - updated >= full_after]
        for user_id in stale:
            del self._buckets[user_id]
