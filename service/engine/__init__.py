"""Every use of python-engineio's, python-socketio's, aiohttp's and asyncio's private
internals, behind one seam.

* :class:`Server`: the ``socketio.AsyncServer`` to create (its Engine.IO server makes
  bounded send queues and tracks websockets; its packets bound binary attachments);
* :func:`install`: wires the rest onto the app (guard, websocket driver, manager start-up)
  after checking the library versions;
* :func:`close_transports`: the shutdown's last step.

Nothing outside this package reaches past a library's public API.

``WEBSOCKET_DRIVER=fast`` (the default) serves websockets with the engine's own driver
(:mod:`.transport`: no task per connection, direct writes, timer pings);
``WEBSOCKET_DRIVER=stock`` leaves websocket handling to python-engineio, with no patch of
any library internal: the fallback when an upgrade breaks the fast path. The fast path is
only trusted on the library versions it was written for (:mod:`.versions`); on any other it
logs one warning and the stock path serves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiohttp import web

from ..config import Settings
from ..metrics import Metrics
from .guard import Guard, install_guard
from .server import Server, close_transports, start_manager
from .versions import WRITTEN_FOR, unknown_versions

log = logging.getLogger(__name__)

__all__ = ["Engine", "Server", "close_transports", "install"]


@dataclass(frozen=True)
class Engine:
    driver: str
    """The websocket driver serving: ``fast`` or ``stock``."""
    guard: Guard


def choose_driver(requested: str) -> str:
    """``requested``, or ``stock`` when the libraries are not the versions the fast path
    was written for (one warning)."""
    if requested != "fast":
        return requested
    unknown = unknown_versions()
    if unknown:
        found = ", ".join(f"{name} {version or 'missing'}" for name, version in unknown.items())
        wanted = ", ".join(f"{name} {version}" for name, version in WRITTEN_FOR.items())
        log.warning(
            "websocket driver: the fast path was written for %s, found %s; using the stock "
            "path (set WEBSOCKET_DRIVER=stock to silence this)",
            wanted,
            found,
            extra={"event": "engine_fallback"},
        )
        return "stock"
    return requested


def install(app: web.Application, sio: Server, settings: Settings, metrics: Metrics) -> Engine:
    """Install the engine on ``app`` and ``sio`` (built as :class:`Server` and attached)."""
    if not isinstance(sio, Server):
        raise TypeError("service.engine.install() needs a service.engine.Server")
    driver = choose_driver(settings.websocket_driver)
    if driver == "fast":
        sio.eio.use_fast_websockets(settings.websocket_compression)
    guard = install_guard(app, sio, settings, metrics)

    async def start(app: web.Application) -> None:
        start_manager(sio)  # after the cleanup contexts (Redis checks) have started

    app.on_startup.append(start)
    log.debug("websocket driver", extra={"event": "engine_driver", "driver": driver})
    return Engine(driver, guard)
