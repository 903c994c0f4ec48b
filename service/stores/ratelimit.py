"""Per-user token buckets: capacity ``events``, refilled evenly over ``window`` seconds."""

from __future__ import annotations

from typing import Protocol

from ..tokenbucket import TokenBuckets
from .link import RedisLink


class RateLimiter(Protocol):
    async def acquire(self, user_id: str) -> float:
        """Take one token; return 0 when allowed, else the seconds until one is available."""
        ...


class MemoryRateLimiter(TokenBuckets):
    """Buckets in this process (the embedded mode, and cluster mode while Redis is down)."""

    def __init__(self, events: int, window_seconds: float) -> None:
        super().__init__(capacity=events, rate=events / window_seconds)

    async def acquire(self, user_id: str) -> float:
        return self.take(user_id)


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
