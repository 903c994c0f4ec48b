"""python-socketio's and python-engineio's server classes, extended through their hooks.

* :class:`EngineIOServer` (``engineio.AsyncServer``): ``create_queue`` returns the bounded
  send queue; ``handle_request`` keeps the one map from Engine.IO session to the TCP
  transport of the websocket serving it (the guard aborts stalled connections through it);
  with the fast driver, ``start_background_task`` turns python-engineio's ping task into a
  timer and the driver table names the fast websocket driver.
* :class:`Server` (``socketio.AsyncServer``): builds its Engine.IO server from the class
  above (python-socketio's own ``_engineio_server_class`` hook) and decodes packets with
  bounded attachments (``serializer=``).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import engineio
import socketio
from aiohttp import hdrs, web
from engineio.async_drivers import aiohttp as eio_aiohttp
from engineio.async_socket import AsyncSocket

from .packet import bounded_packet_class
from .queue import BoundedSendQueue
from .transport import WriteThroughQueue, ping_due, websocket_driver
from .wsconn import WebSocketConnection

log = logging.getLogger(__name__)

DEFAULT_SEND_BUFFER_BYTES = 1024 * 1024


@dataclass
class _NewWebsocket:
    transport: Any
    sid: str | None = None


_new_websocket: contextvars.ContextVar[_NewWebsocket | None] = contextvars.ContextVar(
    "new_websocket", default=None
)


class EngineIOServer(engineio.AsyncServer):
    """python-engineio's server with bounded queues and a session -> websocket map."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.send_buffer_bytes = DEFAULT_SEND_BUFFER_BYTES
        self.on_overflow: Callable[[BoundedSendQueue], None] = _discard
        self.queue_class: type[BoundedSendQueue] = BoundedSendQueue
        self.timer_pings = False
        self.websockets: dict[str, asyncio.BaseTransport] = {}
        """Engine.IO sid -> the TCP transport of the websocket serving it (both drivers)."""
        self._async = {**self._async, "translate_request": _translate_request}

    def use_fast_websockets(self, compress: bool) -> None:
        """Serve websockets with the engine's driver (see :mod:`.transport`)."""
        self._async = {**self._async, "websocket": websocket_driver(compress)}
        self.queue_class = WriteThroughQueue
        self.timer_pings = True

    def create_queue(self, *args: Any, **kwargs: Any) -> asyncio.Queue[Any]:
        return self.queue_class(self.send_buffer_bytes, self.on_overflow)

    def generate_id(self) -> str:
        sid: str = super().generate_id()
        pending = _new_websocket.get()
        if pending is not None and pending.sid is None:
            pending.sid = sid  # the first id made in this request is the new session's
            self.websockets[sid] = pending.transport
        return sid

    async def handle_request(self, *args: Any, **kwargs: Any) -> Any:
        request = args[0] if args else None
        if (
            not isinstance(request, web.BaseRequest)
            or request.headers.get(hdrs.UPGRADE, "").lower() != "websocket"
            or request.transport is None
        ):
            return await super().handle_request(*args, **kwargs)
        transport = request.transport
        sid = request.query.get("sid")
        pending = None
        token = None
        if sid is None:
            pending = _NewWebsocket(transport)
            token = _new_websocket.set(pending)
        elif sid in self.sockets and sid not in self.websockets:
            self.websockets[sid] = transport  # an upgrade from long-polling
        else:
            sid = None  # unknown session or a second websocket for it: not ours to track
        refused = False
        try:
            response = await super().handle_request(*args, **kwargs)
        except web.HTTPException:
            refused = True  # aiohttp's handshake check refused it (a 400)
            raise
        finally:
            if token is not None:
                _new_websocket.reset(token)
                sid = pending.sid if pending is not None else None
            if (
                sid is not None
                and self.websockets.get(sid) is transport
                and not isinstance(transport.get_protocol(), WebSocketConnection)
            ):
                del self.websockets[sid]  # a taken-over websocket removes itself when it ends
            if refused and pending is not None:
                await self._end_session(sid)
        if isinstance(response, list) and pending is not None:
            # "Upgrade: websocket" without "Connection: upgrade": python-engineio served a
            # poll and answers its packets as the response (a 500)
            await self._end_session(sid)
            return web.Response(status=400, text="websocket handshake without Connection: upgrade")
        return response

    async def _end_session(self, sid: str | None) -> None:
        """End the session a refused websocket handshake opened (python-engineio keeps it
        until its ping timeout)."""
        sock = self.sockets.pop(sid, None) if sid is not None else None
        if sock is not None:
            await sock.close(wait=False, abort=True, reason=self.reason.TRANSPORT_ERROR)

    def start_background_task(self, target: Any, *args: Any, **kwargs: Any) -> Any:
        if self.timer_pings and getattr(target, "__func__", None) is AsyncSocket._send_ping:
            # AsyncSocket.schedule_ping: a timer instead of a task sleeping ping_interval
            loop = asyncio.get_running_loop()
            return loop.call_later(self.ping_interval, ping_due, target.__self__)
        return super().start_background_task(target, *args, **kwargs)


def _translate_request(request: web.BaseRequest) -> dict[str, Any]:
    """python-engineio's environ, with the peer's address as ``REMOTE_ADDR`` (its aiohttp
    driver writes 127.0.0.1): an environ whose request is gone still names its client."""
    environ: dict[str, Any] = eio_aiohttp.translate_request(request)
    environ["REMOTE_ADDR"] = request.remote or ""
    return environ


def _discard(queue: BoundedSendQueue) -> None:
    queue.discard()


class Server(socketio.AsyncServer):
    """``socketio.AsyncServer`` on :class:`EngineIOServer`, with bounded attachments."""

    eio: EngineIOServer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault(
            "serializer", bounded_packet_class(kwargs.get("max_http_buffer_size", 1_000_000))
        )
        super().__init__(*args, **kwargs)

    def _engineio_server_class(self) -> type[EngineIOServer]:
        return EngineIOServer


def start_manager(sio: socketio.AsyncServer) -> None:
    """Start the client manager now (a pub/sub listener), not on the first connection."""
    if not sio.manager_initialized:
        sio.manager_initialized = True
        sio.manager.initialize()


async def _close_transport(sock: Any, reason: str) -> None:
    await sock.close(wait=False, reason=reason)  # queues the Engine.IO close packet
    await sock.queue.put(None)  # then the websocket writer closes the connection itself


async def close_transports(sio: socketio.AsyncServer, grace: float) -> int:
    """Close every remaining Engine.IO connection, waiting at most ``grace`` seconds; return
    how many there were.

    python-engineio's ``disconnect()`` waits until each socket's queue is drained, which for
    a long-polling client that went away lasts until its ping timeout (45 s by default), and
    leaves a websocket open until the client closes it: both longer than a pod's grace
    period. Here the close packet is queued, the websocket is closed from our side, and a
    long-poll that nobody collects is dropped.
    """
    eio = sio.eio
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    sockets = list(eio.sockets.values())
    if sockets:
        reason = eio.reason.SERVER_DISCONNECT
        tasks = [asyncio.create_task(_close_transport(sock, reason)) for sock in sockets]
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
    # the writers send the close packets, then close (each removes itself from the map;
    # polled: nothing signals "map empty", and this runs once, at shutdown)
    while eio.websockets and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    for tcp in list(eio.websockets.values()):
        tcp.abort()  # a websocket whose client never read its close frame
    eio.websockets.clear()
    eio.sockets = {}
    return len(sockets)
