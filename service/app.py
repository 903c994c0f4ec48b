"""The application factory: wires settings, stores, the Socket.IO server and the routes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import socketio
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from . import keys, wirejson
from .admin import enable_admin_ui
from .chat import ChatNamespace, Gate
from .cluster import RedisManager, RedisMonitor
from .config import Settings
from .demo import setup_demo_routes
from .engine.fanout import LocalManager
from .engine.guard import install_guard
from .engine.transport import websocket_driver
from .health import setup_health_routes
from .lifecycle import close_transports, monitor_event_loop
from .metrics import Metrics
from .stores import Stores, memory_stores, redis_stores
from .stores.link import RedisLink
from .stores.presence import RedisPresence

FRAME_OVERHEAD_BYTES = 16 * 1024
"""Room for JSON framing around the largest allowed message in one Engine.IO packet."""


def create_sio(settings: Settings, manager: socketio.AsyncManager) -> socketio.AsyncServer:
    origins = settings.cors_allowed_origins
    sio = socketio.AsyncServer(
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
    sio.eio._async = {
        **sio.eio._async,
        "websocket": websocket_driver(settings.websocket_compression),
    }
    return sio


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
    manager: socketio.AsyncManager
    if settings.cluster:
        manager = RedisManager(settings, metrics)
        link = RedisLink(manager.redis, metrics, settings.redis_prefix, lambda: manager.available)
        stores = stores or redis_stores(settings, link)
    else:
        manager = LocalManager(metrics)
        stores = stores or memory_stores(settings)
    sio = create_sio(settings, manager)
    namespace = ChatNamespace(settings, stores, metrics, gate)
    sio.register_namespace(namespace)
    sio.attach(app)
    guard = install_guard(app, sio, settings, metrics.registry)
    guard.on_session_closed.append(namespace.session_closed)

    app[keys.SETTINGS] = settings
    app[keys.METRICS] = metrics
    app[keys.STORES] = stores
    app[keys.GATE] = gate
    app[keys.SIO] = sio
    app[keys.NAMESPACE] = namespace
    app[keys.READINESS_CHECKS] = [guard.not_ready_reason, namespace.not_ready_reason]
    guard.metrics.at_capacity.set_function(
        lambda: int(guard.at_capacity() or namespace.at_capacity())
    )
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
    if isinstance(manager, RedisManager):
        app.cleanup_ctx.append(_run_cluster)
    app.on_shutdown.append(_socketio_shutdown)
    return app


def _room_count(sio: socketio.AsyncServer) -> int:
    rooms = sio.manager.rooms.get("/", {})
    return sum(1 for name in rooms if isinstance(name, str) and name.startswith("room:"))


async def _socketio_shutdown(app: web.Application) -> None:
    """Close the remaining sockets and python-socketio's tasks before handlers are awaited."""
    await close_transports(app)
    await app[keys.SIO].shutdown()


async def _run_cluster(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: start the pub/sub listener and the Redis monitor; close both at the end."""
    sio = app[keys.SIO]
    manager = sio.manager
    assert isinstance(manager, RedisManager)
    monitor = RedisMonitor(manager, app[keys.METRICS], app[keys.SETTINGS])
    presence = app[keys.STORES].presence
    if isinstance(presence, RedisPresence):
        monitor.refreshers.append(presence)
    await monitor.check_once()
    sio.manager_initialized = True
    manager.initialize()  # the listener starts now, not on the first client
    task = asyncio.create_task(monitor.run())
    app[keys.READINESS_CHECKS].append(monitor.not_ready_reason)
    app[keys.REDIS_PING] = monitor.ping
    yield
    task.cancel()
    await manager.close()
