"""Every typed ``web.AppKey`` of the application, so state never hides behind string keys."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import socketio
from aiohttp import web

from .chat import ChatNamespace, Gate
from .config import Settings
from .engine.guard import Guard
from .metrics import Metrics
from .stores import Stores

ReadinessCheck = Callable[[], Awaitable[str | None]]
"""Returns ``None`` when fine, else a short reason why the instance should get no traffic."""

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
STORES = web.AppKey("stores", Stores)
GATE = web.AppKey("gate", Gate)
SIO = web.AppKey("sio", socketio.AsyncServer)
NAMESPACE = web.AppKey("namespace", ChatNamespace)
READINESS_CHECKS = web.AppKey("readiness_checks", list[ReadinessCheck])
STARTED_AT = web.AppKey("started_at", float)
REDIS_PING = web.AppKey("redis_ping", Callable[[], Awaitable[float | None]])
"""Round trip to Redis in milliseconds, or ``None`` when it does not answer."""
GUARD = web.AppKey("guard", Guard)
"""The protections against hostile clients (handshake limits, evictions, the sweep)."""
WEBSOCKET_DRIVER = web.AppKey("websocket_driver", str)
"""The websocket driver serving: ``fast`` or ``stock`` (see ``service.engine``)."""
