"""Running and stopping: serve until SIGTERM/SIGINT, then drain without a thundering herd.

aiohttp's own signal handling closes the listener at once; we keep it open while draining so
readiness can answer 503 and late handshakes get a ``draining`` refusal, not a reset.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from . import engine, keys
from .chat import ChatNamespace
from .engine.headers import install_header_timeout
from .protocol import SERVER_SHUTDOWN

log = logging.getLogger(__name__)

DRAIN_TICK_SECONDS = 0.1
"""The finest spacing between two disconnect batches."""
CLOSE_GRACE_SECONDS = 1.0
"""How long closing the last transports may take after the drain."""
HTTP_SHUTDOWN_SECONDS = 2.0
"""aiohttp's wait for in-flight requests (long-polls end with their close packet)."""
LISTEN_BACKLOG = 1024
"""Connections the kernel completes and holds while the event loop is busy (capped by
``net.core.somaxconn``). aiohttp's default, 128, drops the SYN of the 130th client of a
reconnect burst (a drained pod's clients, a rollout), which then waits 1 s, 3 s, 7 s for
its retries."""

SHUTDOWN_PAYLOAD = {"reason": "draining", "reconnect": True}


def begin_drain(app: web.Application) -> None:
    """Readiness turns 503 and new handshakes get ``draining``, from this call on."""
    app[keys.GATE].draining = True
    app[keys.METRICS].draining.set(1)


def drain_schedule(clients: int, seconds: float) -> list[tuple[float, int, int]]:
    """``(offset, start, stop)`` slices of the client list, spread evenly over ``seconds``.

    At most one batch per :data:`DRAIN_TICK_SECONDS` and never more batches than clients,
    so ten clients over ten seconds leave one a second rather than all in the first tenth.
    """
    if clients <= 0:
        return []
    ticks = max(1, min(clients, math.floor(seconds / DRAIN_TICK_SECONDS)))
    interval = seconds / ticks
    return [
        (interval * i, clients * i // ticks, clients * (i + 1) // ticks)
        for i in range(ticks)
        if clients * i // ticks < clients * (i + 1) // ticks
    ]


CLIENT_DISCONNECT_SECONDS = 1.0


async def _shut_down_client(namespace: ChatNamespace, sid: str) -> None:
    """Tell one client why, then close its transport; a socket already gone is not an error.

    The socket ends at the Engine.IO level (python-engineio's public ``disconnect``): the
    official socket.io-client sees ``transport close`` and reconnects with its own back-off,
    through the load balancer to a ready instance, recovering its state there. A Socket.IO
    disconnect instead would read ``io server disconnect``, after which socket.io-client
    stays down by design.
    """
    if sid not in namespace.sessions:
        return
    try:
        await namespace.emit(SERVER_SHUTDOWN, SHUTDOWN_PAYLOAD, to=sid)
        server = namespace.server
        eio_sid = server.manager.eio_sid_from_sid(sid, namespace.namespace)
        if eio_sid is None:
            return
        # a client that stopped reading would hold disconnect() on its send queue:
        # close_transports() drops whatever is left after the drain
        await asyncio.wait_for(server.eio.disconnect(eio_sid), CLIENT_DISCONNECT_SECONDS)
    except TimeoutError:
        log.info(
            "drain: client not reading, left for the final close", extra={"event": "drain_slow"}
        )
    except Exception:
        log.warning("drain: disconnect failed", exc_info=True, extra={"event": "drain_error"})


async def drain(app: web.Application) -> None:
    """Refuse new handshakes, wait for endpoints to update, then disconnect in batches.

    The drain of docs/protocol.md: readiness is 503 at once; after
    ``SHUTDOWN_DELAY_SECONDS`` (load balancers stop sending new connections) each client gets
    ``server:shutdown`` and is disconnected, in batches spread evenly over
    ``SHUTDOWN_DRAIN_SECONDS`` so reconnects reach the other replicas as a trickle, not a herd.
    """
    settings = app[keys.SETTINGS]
    namespace = app[keys.NAMESPACE]
    begin_drain(app)
    log.info("draining", extra={"event": "drain_start", "connections": len(namespace.sessions)})
    # clients the load balancer moves before their turn recover wherever they land
    await namespace.keep_sessions()
    await asyncio.sleep(settings.shutdown_delay_seconds)
    sids = list(namespace.sessions)
    started = time.monotonic()
    for offset, first, last in drain_schedule(len(sids), settings.shutdown_drain_seconds):
        await asyncio.sleep(max(0.0, started + offset - time.monotonic()))
        await asyncio.gather(*(_shut_down_client(namespace, sid) for sid in sids[first:last]))
    log.info(
        "drained",
        extra={
            "event": "drain_done",
            "clients": len(sids),
            "seconds": round(time.monotonic() - started, 3),
        },
    )


async def close_transports(app: web.Application, grace: float = CLOSE_GRACE_SECONDS) -> None:
    """Close every remaining Engine.IO connection, waiting at most ``grace`` seconds
    (python-engineio's own ``disconnect()`` can wait a ping timeout per socket)."""
    closed = await engine.close_transports(app[keys.SIO], grace)
    if closed:
        log.info(
            "closed remaining transports",
            extra={"event": "transports_closed", "connections": closed},
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


class BindError(Exception):
    """The listen address cannot be bound (in use, not ours, no permission); the message is
    one line for the operator, naming the setting to change."""


def _bind_error(host: str, port: int, exc: OSError) -> BindError:
    # asyncio's own message repeats the address; the errno's text alone is the reason
    known = isinstance(exc.errno, int) and exc.errno > 0
    reason = (os.strerror(exc.errno) if known else exc.strerror or str(exc)).lower()
    if exc.errno == errno.EADDRINUSE:
        return BindError(f"PORT {port}: {reason}")
    return BindError(f"HOST {host}, PORT {port}: {reason}")


async def serve(
    app: web.Application, on_started: Callable[[str], Awaitable[None] | None] | None = None
) -> None:
    """Serve ``app`` until a stop signal, drain it, then clean up and return.

    Raises :class:`BindError` (after cleaning up) when the address cannot be bound."""
    settings = app[keys.SETTINGS]
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=HTTP_SHUTDOWN_SECONDS
    )
    await runner.setup()
    install_header_timeout(runner)
    site = web.TCPSite(runner, settings.host, settings.port, backlog=LISTEN_BACKLOG)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise _bind_error(settings.host, settings.port, exc) from None
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
        await close_transports(app)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
    log.info("stopped", extra={"event": "stopped"})
