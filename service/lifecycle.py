"""Running and stopping: serve until SIGTERM/SIGINT, then drain without a thundering herd.

aiohttp's own signal handling closes the listener at once; we keep it open while draining so
readiness can answer 503 and late handshakes get a ``draining`` refusal, not a reset.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from . import keys
from .protocol import SERVER_SHUTDOWN

log = logging.getLogger(__name__)

DRAIN_TICK_SECONDS = 0.1


async def drain(app: web.Application) -> None:
    """Refuse new handshakes, wait for endpoints to update, then disconnect in batches."""
    settings = app[keys.SETTINGS]
    namespace = app[keys.NAMESPACE]
    app[keys.GATE].draining = True
    app[keys.METRICS].draining.set(1)
    log.info("draining", extra={"event": "drain_start", "connections": len(namespace.sessions)})
    await asyncio.sleep(settings.shutdown_delay_seconds)
    sids = list(namespace.sessions)
    ticks = max(1, math.floor(settings.shutdown_drain_seconds / DRAIN_TICK_SECONDS))
    batch = max(1, math.ceil(len(sids) / ticks))
    interval = settings.shutdown_drain_seconds / ticks
    started = time.monotonic()
    for index in range(0, len(sids), batch):
        if index:
            await asyncio.sleep(max(0.0, started + interval * (index // batch) - time.monotonic()))
        for sid in sids[index : index + batch]:
            if sid not in namespace.sessions:
                continue
            await namespace.emit(SERVER_SHUTDOWN, {"reason": "draining", "reconnect": True}, to=sid)
            await namespace.disconnect(sid)
    log.info(
        "drained",
        extra={"event": "drain_done", "clients": len(sids), "seconds": time.monotonic() - started},
    )


async def monitor_event_loop(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: sample how late a 0.25 s timer fires, into the event-loop lag histogram."""
    histogram = app[keys.METRICS].event_loop_lag

    async def sample() -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + 0.25
            await asyncio.sleep(0.25)
            histogram.observe(max(0.0, loop.time() - expected))

    task = asyncio.create_task(sample())
    yield
    task.cancel()


async def serve(
    app: web.Application, on_started: Callable[[str], Awaitable[None] | None] | None = None
) -> None:
    """Serve ``app`` until a stop signal, drain it, then clean up and return."""
    settings = app[keys.SETTINGS]
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    address = runner.addresses[0] if runner.addresses else (settings.host, settings.port)
    url = f"http://{address[0]}:{address[1]}"
    log.info("listening", extra={"event": "listening", "url": url})
    if on_started is not None:
        result = on_started(url)
        if result is not None:
            await result
    try:
        await stop.wait()
        log.info("stop signal received", extra={"event": "shutdown"})
        await drain(app)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
    log.info("stopped", extra={"event": "stopped"})
