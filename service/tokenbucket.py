"""One token bucket per key, in this process: the handshake limit per client address and
the embedded mode's event rate limit per user share it."""

from __future__ import annotations

import time

FORGET_EVERY = 4096
"""Calls between two sweeps of full buckets (a full bucket is the same as no bucket)."""


class TokenBuckets:
    """``capacity`` tokens per key, refilled evenly at ``rate`` tokens per second.

    Full buckets are forgotten now and then, so idle keys cost nothing; at most
    ``max_keys`` buckets are kept (the least recently used go first), so a flood of
    distinct keys costs bounded memory.
    """

    def __init__(self, capacity: float, rate: float, max_keys: int | None = None) -> None:
        self.capacity = float(max(1.0, capacity))
        self.rate = rate
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated)
        self._calls = 0

    def take(self, key: str, now: float | None = None) -> float:
        """Take one token: 0 when allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        # popped and re-inserted: the dict keeps the least recently used first
        tokens, updated = self._buckets.pop(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - updated) * self.rate)
        self._calls += 1
        if self._calls % FORGET_EVERY == 0 or (
            self.max_keys is not None and len(self._buckets) >= self.max_keys
        ):
            self._forget(now)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate
        self._buckets[key] = (tokens - 1, now)
        return 0.0

    def _forget(self, now: float) -> None:
        full_after = self.capacity / self.rate
        for key in [k for k, (_, t) in self._buckets.items() if now - t >= full_after]:
            del self._buckets[key]
        if self.max_keys is not None:
            while len(self._buckets) >= self.max_keys:
                del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)
