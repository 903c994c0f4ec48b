"""The application factory: wires settings, stores, the Socket.IO server and the routes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import socketio
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from . import engine, keys, wirejson
from .admin import enable_admin_ui
from .chat import ChatNamespace, Gate
from .cluster import Outbox, RedisMonitor, Sequencer
from .cluster.sequencer import deliver_to_room
from .config import Settings
from .demo import setup_demo_routes
from .engine.recovery import install_connect_pid
from .health import setup_health_routes
from .lifecycle import close_transports, monitor_event_loop
from .metrics import Metrics
from .stores import Backend, Stores, build_backend
from .stores.history import RedisHistory
from .stores.ratelimit import RedisRateLimiter

FRAME_OVERHEAD_BYTES = 16 * 1024
"""Room for JSON framing around the largest allowed message in one Engine.IO packet."""


def create_sio(settings: Settings, manager: socketio.AsyncManager) -> engine.Server:
    origins = settings.cors_allowed_origins
    return engine.Server(
        async_mode="aiohttp",
        client_manager=manager,
        # None = same origin only (python-engineio's default); '*' only when configured
        cors_allowed_origins=list(origins) if origins else None,
        ping_interval=settings.ping_interval,
        ping_timeout=settings.ping_timeout,
        max_http_buffer_size=settings.max_message_bytes * 2 + FRAME_OVERHEAD_BYTES,
        # one client's events are handled in order (no task per event)
        async_handlers=False,
        # UTF-8, compact: a message costs about its size on the wire, not 6x (see wirejson)
        json=wirejson,
        logger=False,
        engineio_logger=False,
    )


def create_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    stores: Stores | None = None,
) -> web.Application:
    """Build the whole service for ``settings``; nothing starts until the app runs."""
    app = web.Application(client_max_size=settings.max_message_bytes * 2 + FRAME_OVERHEAD_BYTES)
    metrics = Metrics(registry if registry is not None else CollectorRegistry())
    metrics.max_connections.set(settings.max_connections)
    gate = Gate()
    backend = build_backend(settings, metrics, stores)
    stores = backend.stores
    sio = create_sio(settings, backend.manager)
    namespace = ChatNamespace(settings, stores, metrics, gate)
    sio.register_namespace(namespace)
    if settings.connection_state_recovery_seconds > 0:
        install_connect_pid(sio, namespace.namespace, namespace.pid_for)
    if backend.cluster is not None and isinstance(stores.history, RedisHistory):
        backend.cluster.sequencer = Sequencer(stores.history, deliver_to_room(namespace.emit))
        limiter = stores.limiter if isinstance(stores.limiter, RedisRateLimiter) else None
        namespace.poster = Outbox(stores.history, backend.cluster, settings, limiter)
    sio.attach(app)
    installed = engine.install(app, sio, settings, metrics)
    guard = installed.guard
    guard.on_session_closed.append(namespace.session_closed)

    app[keys.SETTINGS] = settings
    app[keys.METRICS] = metrics
    app[keys.STORES] = stores
    app[keys.GATE] = gate
    app[keys.SIO] = sio
    app[keys.GUARD] = guard
    app[keys.WEBSOCKET_DRIVER] = installed.driver
    app[keys.NAMESPACE] = namespace
    app[keys.READINESS_CHECKS] = [guard.not_ready_reason, namespace.not_ready_reason]
    metrics.at_capacity.set_function(lambda: int(guard.at_capacity() or namespace.at_capacity()))
    app[keys.STARTED_AT] = time.monotonic()

    metrics.connected_clients.set_function(lambda: len(namespace.sessions))
    metrics.rooms.set_function(lambda: _room_count(sio))

    if settings.admin_ui:
        enable_admin_ui(sio, settings)
    if settings.dev:
        setup_demo_routes(app)
    setup_health_routes(app)
    app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    app.cleanup_ctx.append(monitor_event_loop)
    if backend.cluster is not None:
        app.cleanup_ctx.append(_cluster_runner(backend))
    app.on_shutdown.append(_socketio_shutdown)
    return app


def _room_count(sio: socketio.AsyncServer) -> int:
    rooms = sio.manager.rooms.get("/", {})
    return sum(1 for name in rooms if isinstance(name, str) and name.startswith("room:"))


async def _socketio_shutdown(app: web.Application) -> None:
    """Close the remaining sockets and python-socketio's tasks before handlers are awaited."""
    await close_transports(app)
    await app[keys.SIO].shutdown()


def _cluster_runner(
    backend: Backend,
) -> Callable[[web.Application], AsyncIterator[None]]:
    manager = backend.cluster
    assert manager is not None

    async def run_cluster(app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: check Redis and start its monitor before the pub/sub listener (which
        the engine starts right after the cleanup contexts); close both at the end."""
        monitor = RedisMonitor(manager, app[keys.METRICS], app[keys.SETTINGS])
        monitor.refreshers.extend(backend.refreshers)
        await monitor.check_once()
        task = asyncio.create_task(monitor.run())
        app[keys.READINESS_CHECKS].append(monitor.not_ready_reason)
        app[keys.REDIS_PING] = monitor.ping
        yield
        task.cancel()
        poster = app[keys.NAMESPACE].poster
        if isinstance(poster, Outbox):
            await poster.close()
        await manager.close()

    return run_cluster
