"""What every Redis-backed store shares: the client, the metrics, the key prefix and the
monitor's verdict on whether Redis is up."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

if TYPE_CHECKING:  # metrics -> protocol -> history -> link: no import at run time
    from ..metrics import Metrics

REDIS_ERRORS = (RedisError, OSError, TimeoutError)
"""What a Redis call raises when Redis is refused, slow or out of memory."""


@dataclass(frozen=True)
class RedisLink:
    redis: Any
    metrics: Metrics
    prefix: str
    available: Callable[[], bool] = lambda: True
    """False while the monitor says Redis is down: stores fall back at once instead of each
    call waiting out the command timeout."""

    def key(self, kind: str, tag: str) -> str:
        """``<prefix>:<kind>:{<tag>}``: the hash tag keeps a room's keys on one cluster slot."""
        return f"{self.prefix}:{kind}:{{{tag}}}"
