"""Background duties of a cluster instance: Redis health, heartbeats, presence refresh, and
the sequencer's periodic look for gaps.

A Redis outage is not a readiness failure: every instance shares it, and failing readiness
would empty the Service (new clients could not even reach the instance that would serve them
locally). ``socketio_redis_up`` and ``/health`` report it. Readiness fails only for an
instance whose pub/sub hears nothing while Redis answers: that one is worse than its peers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ..config import Settings
from ..logs import redis_endpoint
from ..metrics import Metrics
from .manager import RedisManager
from .sequencer import SWEEP_SECONDS

log = logging.getLogger(__name__)

MONITOR_PING_SECONDS = 1.0
"""How long the monitor waits for PONG (at most REDIS_TIMEOUT_SECONDS). A failed ping is
retried at once, so Redis counts as down within about two of these: from then on
publishes, rate limits and history skip Redis instead of each waiting out the timeout."""


class RedisMonitor:
    """Background duties of a cluster instance: Redis health, heartbeats, presence refresh."""

    def __init__(self, manager: RedisManager, metrics: Metrics, settings: Settings) -> None:
        self.manager = manager
        self.metrics = metrics
        self.settings = settings
        self.up = False
        self.checked = False
        self.latency_ms: float | None = None
        self.refreshers: list[Any] = []  # stores with an async refresh()

    async def ping(self) -> float | None:
        """Round trip in milliseconds, or None when Redis does not answer in time."""
        started = time.perf_counter()
        try:
            with self.metrics.redis_op("ping"):
                await asyncio.wait_for(
                    self.manager.redis.ping(),
                    min(MONITOR_PING_SECONDS, self.settings.redis_timeout_seconds),
                )
        except Exception:
            return None
        return round((time.perf_counter() - started) * 1000, 3)

    async def check_once(self) -> None:
        latency = await self.ping()
        if latency is None:
            # one late answer (this event loop was blocked, a GC pause) is not an outage
            latency = await self.ping()
        was_up, self.up = self.up, latency is not None
        self.latency_ms = latency
        self.manager.available = self.up
        self.metrics.redis_up.set(1 if self.up else 0)
        first, self.checked = not self.checked, True
        if first or was_up != self.up:  # a Redis down at start-up is reported too
            where = redis_endpoint(self.settings.redis_url)  # never the password
            log.log(
                logging.INFO if self.up else logging.WARNING,
                f"redis reachable at {where}"
                if self.up
                else f"redis unreachable at {where} (REDIS_URL), retrying",
                extra={"event": "redis_up" if self.up else "redis_down"},
            )
        if self.up:
            if self.manager.listener_outdated:
                await self.manager.reconnect_listener()
            await self.manager.heartbeat()
        self.metrics.pubsub_deaf.set(1 if self.manager.deaf else 0)

    async def run(self) -> None:
        interval = min(0.5, self.manager.heartbeat_seconds)
        refresh_every = self.settings.presence_ttl_seconds / 3
        refreshed = swept = time.monotonic()
        while True:
            await self.check_once()
            if self.up and time.monotonic() - swept >= SWEEP_SECONDS:
                swept = time.monotonic()
                self.manager.sweep_soon()
            if self.up and time.monotonic() - refreshed >= refresh_every:
                refreshed = time.monotonic()
                for store in self.refreshers:
                    try:
                        await store.refresh()
                    except Exception as exc:
                        log.warning("presence refresh failed", extra={"error": str(exc)})
            await asyncio.sleep(interval)

    async def not_ready_reason(self) -> str | None:
        """``pubsub_deaf`` only: Redis being down is shared by every instance (see above)."""
        return "pubsub_deaf" if self.manager.deaf else None
