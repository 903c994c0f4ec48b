"""Per-user token buckets: capacity ``events``, refilled evenly over ``window`` seconds."""

from __future__ import annotations

import time
from typing import Protocol

from .link import RedisLink


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


# KEYS: bucket; ARGV: capacity, tokens per millisecond. Returns the wait in ms as a string.
# Time comes from Redis so every instance agrees on the refill.
_TAKE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(bucket[1]) or capacity
local ts = tonumber(bucket[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens < 1 then
  wait = (1 - tokens) / rate
else
  tokens = tokens - 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate) + 1000)
return tostring(wait)
"""


class RedisRateLimiter:
    """The same bucket, shared by every instance: one atomic script call per event.

    When Redis does not answer, the local bucket decides, so a Redis outage neither blocks
    users nor lifts the limit.
    """

    def __init__(self, link: RedisLink, *, events: int, window_seconds: float) -> None:
        self._link = link
        self._metrics = link.metrics
        self._capacity = events
        self._rate_per_ms = events / (window_seconds * 1000)
        self._take = link.redis.register_script(_TAKE_SCRIPT)
        self.fallback = MemoryRateLimiter(events, window_seconds)

    async def acquire(self, user_id: str) -> float:
        if not self._link.available():
            return self.fallback.take(user_id)
        try:
            with self._metrics.redis_op("rate_limit"):
                wait_ms = await self._take(
                    keys=[self._link.key("ratelimit", user_id)],
                    args=[self._capacity, repr(self._rate_per_ms)],
                )
        except Exception:
            return self.fallback.take(user_id)
        return float(wait_ms) / 1000
