"""Probes: ``/healthz`` (liveness), ``/readyz`` (readiness) and ``/health`` (detail)."""

from __future__ import annotations

import asyncio
import os
import resource
import time

from aiohttp import web

from . import keys


async def healthz(request: web.Request) -> web.Response:
    """Alive while the event loop answers; never depends on Redis."""
    return web.json_response({"status": "ok"})


async def not_ready_reasons(app: web.Application) -> list[str]:
    """Why this instance should get no new connections; empty when it should."""
    reasons: list[str] = []
    if app[keys.GATE].draining:
        reasons.append("draining")
    if len(app[keys.NAMESPACE].sessions) >= app[keys.SETTINGS].max_connections:
        reasons.append("at_max_connections")
    checks = app[keys.READINESS_CHECKS]
    if checks:
        results = await asyncio.gather(*(check() for check in checks))
        reasons.extend(r for r in results if r)
    return reasons


async def readyz(request: web.Request) -> web.Response:
    reasons = await not_ready_reasons(request.app)
    if reasons:
        return web.json_response({"status": "not_ready", "reasons": reasons}, status=503)
    return web.json_response({"status": "ready"})


def rss_bytes() -> int:
    """Current resident set size (Linux /proc), falling back to the peak."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def health(request: web.Request) -> web.Response:
    """Detail for humans and dashboards; ``degraded`` also when Redis does not answer (which
    is not a readiness failure: see service/cluster/monitor.py)."""
    app = request.app
    reasons = await not_ready_reasons(app)
    redis_ping = app.get(keys.REDIS_PING)
    redis: dict[str, object] = {
        "configured": redis_ping is not None,
        "connected": False,
        "latency": None,
    }
    if redis_ping is not None:
        latency = await redis_ping()
        redis.update(connected=latency is not None, latency=latency)
        if latency is None:
            reasons.append("redis_unreachable")
    body = {
        "status": "ok" if not reasons else "degraded",
        "reasons": reasons,
        "timestamp": int(time.time() * 1000),
        "instance": app[keys.SETTINGS].instance_id,
        "process": {
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - app[keys.STARTED_AT], 3),
            "memory": {"rss": rss_bytes()},
        },
        "redis": redis,
        "connections": len(app[keys.NAMESPACE].sessions),
    }
    return web.json_response(body)


def setup_health_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/health", health)
