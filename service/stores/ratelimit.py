"""Per-user token buckets: capacity ``events``, refilled evenly over ``window`` seconds."""

from __future__ import annotations

from dataclasses import dataclass
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


# One token from the bucket at ``key``: returns the wait in ms (0: taken). Time comes from Redis
# so every instance agrees on the refill. Shared by the rate-limit script and the script that
# stores a room message (``message:send`` takes its token in the same round trip).
TAKE_TOKEN_LUA = """
local function take_token(key, capacity, rate)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
  local bucket = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(bucket[1]) or capacity
  local ts = tonumber(bucket[2]) or now
  tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
  local wait = 0
  if tokens < 1 then
    wait = (1 - tokens) / rate
  else
    tokens = tokens - 1
  end
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(capacity / rate) + 1000)
  return wait
end
"""

# KEYS: bucket; ARGV: capacity, tokens per millisecond. Returns the wait in ms as a string.
_TAKE_SCRIPT = (
    TAKE_TOKEN_LUA
    + """
return tostring(take_token(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])))
"""
)


class RateLimited(Exception):
    """No token left: retry after ``wait`` seconds."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"rate limited for {wait:.3f} s")
        self.wait = wait


@dataclass(frozen=True)
class Charge:
    """One token of a user's shared bucket, for a script that takes it with its own work."""

    key: str
    capacity: int
    rate_per_ms: str


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

    def charge(self, user_id: str) -> Charge:
        """The token ``user_id``'s next event costs, for a script to take with its work."""
        return Charge(self._link.key("ratelimit", user_id), self._capacity, repr(self._rate_per_ms))

    async def acquire(self, user_id: str) -> float:
        if not self._link.available():
            return self.fallback.take(user_id)
        charge = self.charge(user_id)
        try:
            with self._metrics.redis_op("rate_limit"):
                wait_ms = await self._take(
                    keys=[charge.key], args=[charge.capacity, charge.rate_per_ms]
                )
        except Exception:
            return self.fallback.take(user_id)
        return float(wait_ms) / 1000
