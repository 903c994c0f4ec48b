"""The fast websocket driver (``WEBSOCKET_DRIVER=fast``), plugged into python-engineio's
driver table.

python-engineio's websocket handler keeps, for every connection, a writer task parked on the
socket's queue (inside a ``wait_for``), a second task per read (also inside a ``wait_for``)
and a ping task sleeping between pings: ~6 KiB of tasks, futures and timers per idle
connection. The driver here serves the same protocol with none of them:

* once the handshake is answered, the connection leaves aiohttp for its own protocol
  (:mod:`.wsconn`): no request task, request or response object is kept; each complete
  message is handed to the socket as it arrives (a task only while one is being handled,
  eager on Python 3.12+). Without that (compression on, or bytes that arrived with the
  handshake) reads run in the connection's own request task (``receive()``, no timer);
* a packet sent to an idle websocket is written at once, in order, as one frame (through
  aiohttp's ``WebSocketResponse.send_frame`` when aiohttp serves it: uncompressed frames are
  written before its first suspension point, with aiohttp's own closing check); a broadcast
  builds its frame once and writes the same bytes to every idle receiver's transport
  (:func:`write_direct`: per receiver, ``send_frame`` cost ~3 us more: +15-18 % server CPU
  at 20k deliveries/s);
  packets that find earlier ones still unwritten (a slow reader, a binary packet,
  compression) go through the socket's queue, drained by a writer task that exists only
  while the queue is not empty (asyncio's flow control applies there, and the queue's
  bounds with it);
* pings are timer callbacks instead of sleeping tasks (:func:`ping_due`, scheduled by the
  engine's Engine.IO server);
* the socket's queue (:class:`WriteThroughQueue`, created so by the engine's Engine.IO
  server) holds its items and waiters in lists: an empty ``collections.deque`` costs ~700
  bytes, four per queue.

Ping timeouts are python-engineio's own check; a websocket whose session it closed while its
TCP connection lingers is aborted by the guard's sweep. Upgrades from long-polling follow
python-engineio's probe sequence (:meth:`probe`, or :meth:`probe_step` per packet once taken
over). Compared with python-engineio's ``AsyncSocket._websocket_handler`` (the shape test
pins the version this copy follows).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.web import WebSocketResponse
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as eio_aiohttp
from engineio.async_socket import AsyncSocket

from .queue import BoundedSendQueue
from .wsconn import (
    WebSocketConnection,
    can_take_over,
    frame,
    switching_protocols,
    take_over,
)

log = logging.getLogger(__name__)

MAX_BACKLOG = 64
"""Packets received while earlier ones are still being handled, above which a taken-over
websocket stops reading until they are (the frames' own backpressure)."""

MAX_DIRECT_BUFFER = 4 * 1024 * 1024
"""Above this many bytes waiting in a socket's kernel-side buffer, packets go through the
socket's queue again (its writer then applies aiohttp's flow control, the queue its bounds)."""


class ListDeque(list[Any]):
    """A list standing in for a ``collections.deque`` inside asyncio's Queue and Event: the
    operations they use (append, popleft, remove, clear, len, iteration) and ~56 bytes when
    empty instead of a deque's ~700 (it allocates a 64-slot block up front)."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


def slim_queue(queue: asyncio.Queue[Any]) -> None:
    """Swap an ``asyncio.Queue``'s deques (items, getters, putters, join waiters) for lists."""
    for name in ("_getters", "_putters", "_queue"):
        items = getattr(queue, name, None)
        if type(items) is collections.deque:
            setattr(queue, name, ListDeque(items))
    finished = getattr(queue, "_finished", None)
    waiters = getattr(finished, "_waiters", None)
    if type(waiters) is collections.deque:
        finished._waiters = ListDeque(waiters)  # type: ignore[union-attr]


class WriteThroughQueue(BoundedSendQueue):
    """The socket queue of the fast driver: ``put_nowait`` writes a packet straight to the
    socket's websocket when nothing is queued or being written, and starts the writer
    otherwise. The bounds of :class:`BoundedSendQueue` apply to what is queued."""

    websocket: Any = None  # the driver serving this socket, while it is on websocket

    def __init__(self, limit: int, on_overflow: Callable[[BoundedSendQueue], None]) -> None:
        super().__init__(limit, on_overflow)
        slim_queue(self)

    def put_nowait(self, item: Any) -> None:
        ws = self.websocket
        if ws is not None and item is not None and not self.overflowed and ws.write_now(item):
            return
        super().put_nowait(item)
        if ws is not None:
            ws.kick()


def _slim_request_handler(request: Any) -> None:
    """aiohttp's per-connection handler keeps a deque of parsed HTTP requests, empty for good
    once the connection is a websocket: a list instead (same operations)."""
    protocol = getattr(request, "protocol", None)
    messages = getattr(protocol, "_messages", None)
    if type(messages) is collections.deque and not messages:
        protocol._messages = ListDeque()  # type: ignore[union-attr]


def ping_due(socket: AsyncSocket) -> None:
    """Timer callback: send the next PING (python-engineio's ``_send_ping`` without a task
    sleeping ``ping_interval`` per socket)."""
    if not socket.closing and not socket.closed:
        socket.last_ping = time.time()
        socket.queue.put_nowait(eio_packet.Packet(eio_packet.PING))


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final websocket TEXT frame (server to client): the same bytes for every
    receiver, so a broadcast builds it once."""
    return frame(payload)


def write_direct(socket: Any, frame: bytes) -> bool:
    """Write a prebuilt TEXT frame (:func:`text_frame`) straight to ``socket``'s websocket
    if that cannot reorder anything; False: send the packet the ordinary way."""
    ws = getattr(socket.queue, "websocket", None)
    if ws is None or socket.closing or socket.upgrading:
        return False
    transport = ws.idle_transport()
    if transport is None:
        return False
    transport.write(frame)
    return True


_running: set[asyncio.Task[Any]] = set()


def _start(coro: Any) -> asyncio.Task[Any]:
    """A task for ``coro`` that runs at once up to its first suspension on Python 3.12+
    (most packets are handled without one), kept referenced until it ends."""
    loop = asyncio.get_running_loop()
    if sys.version_info >= (3, 12):
        task = asyncio.Task(coro, loop=loop, eager_start=True)
    else:
        task = loop.create_task(coro)
    if not task.done():
        _running.add(task)
        task.add_done_callback(_running.discard)
    return task


def websocket_driver(compress: bool) -> type[eio_aiohttp.WebSocket]:
    """The websocket driver, with permessage-deflate on or off.

    Stock, every frame is deflated once per receiver when the client offers compression (as
    browsers and socket.io-client do): the largest CPU cost of a broadcast. Without
    compression, packets to an idle socket are written at once (:func:`write_direct`).
    """

    class WebSocket(eio_aiohttp.WebSocket):
        transport: Any = None  # the TCP transport, to check it is idle before a direct write
        writer: asyncio.Task[None] | None = None
        finished = False  # the writer met the end-of-stream marker and closed the websocket
        queue: Any = None

        conn: WebSocketConnection | None = None  # the connection, once taken over
        socket: AsyncSocket | None = None
        probing = 0  # upgrade from long-polling, taken over: 1 waits for PING probe, 2 UPGRADE
        backlog: list[Any] | None = None  # packets waiting while one is being handled

        async def __call__(self, environ: dict[str, Any]) -> web.StreamResponse:
            request = environ["aiohttp.request"]
            socket = getattr(self.handler, "__self__", None)
            ours = isinstance(socket, AsyncSocket) and isinstance(socket.queue, WriteThroughQueue)
            self._sock = WebSocketResponse(
                max_msg_size=self.server.max_http_buffer_size, compress=compress
            )
            if not ours:
                await self._sock.prepare(request)
                self.environ = environ
                await self.handler(self)  # not a socket the engine created: stock handling
                return self._sock
            assert isinstance(socket, AsyncSocket)
            # aiohttp's handshake checks (HTTPBadRequest: a 400); taken over, the 101 is
            # written below, with the OPEN packet, in one write
            headers = self._sock._handshake(request)[0]
            conn = None
            if not compress and can_take_over(request):
                conn = take_over(request, self, self.server.max_http_buffer_size)
            if conn is None:
                await self._sock.prepare(request)
            self.environ = environ
            if conn is not None:
                self.serve_taken_over(socket, conn, environ, switching_protocols(headers))
                return web.Response(status=101)  # aiohttp no longer has a connection
            _slim_request_handler(request)
            if not compress:
                self.transport = request.transport
            try:
                await self.serve(socket)
            finally:
                self.transport = None
                if self.queue is not None:
                    self.queue.websocket = None
            return self._sock

        # -- outgoing ---------------------------------------------------------------------

        def idle_transport(self) -> Any:
            """The transport when nothing is queued or being written, the websocket is not
            closing (aiohttp's public ``closed``: no data after a close frame) and the
            connection is not backed up; else None."""
            transport = self.transport
            if transport is None or self.writer is not None or self.finished:
                return None
            closed = self.conn.closed if self.conn is not None else self._sock.closed
            if not self.queue.empty() or closed or transport.is_closing():
                return None
            if transport.get_write_buffer_size() > MAX_DIRECT_BUFFER:
                return None
            return transport

        def write_text(self, data: bytes) -> bool:
            """One uncompressed TEXT frame, written before ``send_frame`` first suspends.

            If aiohttp then waits for the peer to drain its buffer, the wait is dropped: the
            frame is already in the transport, and the next packet finds it busy and goes
            through the queue, whose writer waits properly.
            """
            if self.conn is not None:
                self.conn.transport.write(frame(data))
                return True
            coro = self._sock.send_frame(data, WSMsgType.TEXT)
            try:
                coro.send(None)
            except StopIteration:
                return True
            except Exception:  # closing: let the writer find out and end
                return False
            coro.close()
            return True

        def write_now(self, pkt: Any) -> bool:
            """Write ``pkt`` now if that cannot reorder anything; False: queue it."""
            if pkt.binary or self.idle_transport() is None:
                return False
            return self.write_text(pkt.encode().encode())

        def kick(self) -> None:
            if self.writer is None and not self.finished:
                self.writer = asyncio.ensure_future(self.drain())

        async def drain(self) -> None:
            """Write queued packets in order; return when the queue is empty. The end marker
            (None) closes the websocket, as python-engineio's writer does."""
            queue = self.queue
            try:
                while True:
                    try:
                        pkt = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return  # idle: the next queued packet starts a new writer
                    queue.task_done()
                    if pkt is None:
                        break
                    try:
                        await self.send(pkt.encode())
                    except Exception:
                        break
                self.finished = True
                await self.close()
            finally:
                self.writer = None

        async def send(self, message: str | bytes) -> None:
            if self.conn is not None:
                await self.conn.send(message)
            else:
                await super().send(message)

        async def close(self) -> None:
            if self.conn is not None:
                self.conn.close()
            else:
                await super().close()

        # -- incoming, taken over (wsconn.WebSocketConnection calls these) ---------------

        def serve_taken_over(
            self,
            socket: AsyncSocket,
            conn: WebSocketConnection,
            environ: dict[str, Any],
            head: bytes,
        ) -> None:
            """Answer the handshake with ``head`` and serve ``socket`` on ``conn``, like
            :meth:`serve` without a task."""
            self.conn = conn
            self.socket = socket
            self._sock = None  # aiohttp's response, reader and writer: not used any more
            # the request (and its parsed head) is only kept by the environ now
            environ.pop("aiohttp.request", None)
            environ.pop("wsgi.input", None)
            if socket.connected:  # already connected on long-polling: this is an upgrade
                socket.upgrading = True  # hold packet sends during the upgrade
                self.probing = 1
                conn.transport.write(head)
                return
            socket.connected = True
            socket.upgraded = True
            queue = socket.queue
            if queue.qsize() == 1:  # the OPEN packet: sent with the 101, one write
                pkt = queue.get_nowait()
                queue.task_done()
                if pkt is not None and not pkt.binary:
                    head += frame(pkt.encode().encode())
                else:
                    queue.put_nowait(pkt)
            conn.transport.write(head)
            self.attach(socket, conn.transport)

        def attach(self, socket: AsyncSocket, transport: Any) -> None:
            """Serve ``socket``'s packets on this websocket from now on."""
            if not compress:
                self.transport = transport
            queue = socket.queue
            queue.websocket = self
            self.queue = queue
            if not queue.empty():
                self.kick()  # the OPEN packet, or what was held during the upgrade

        def received(self, data: str | bytes) -> None:
            """A complete message from the client: an Engine.IO packet, handled in order."""
            try:
                pkt = eio_packet.Packet(encoded_packet=data)
            except Exception:
                log.debug("undecodable Engine.IO packet", exc_info=True)
                self.close_now()
                return
            if self.probing:
                self.probe_step(pkt)
                return
            backlog = self.backlog
            if backlog is not None:
                backlog.append(pkt)
                conn = self.conn
                if len(backlog) >= MAX_BACKLOG and conn is not None:
                    conn.transport.pause_reading()
                return
            self.backlog = []
            _start(self.deliver(pkt))

        async def deliver(self, pkt: Any) -> None:
            """Hand ``pkt`` and those received meanwhile to the socket, one at a time."""
            socket = self.socket
            assert socket is not None
            backlog = self.backlog
            assert backlog is not None
            try:
                while True:
                    try:
                        await socket.receive(pkt)
                    except eio_exceptions.UnknownPacketError:
                        pass
                    except eio_exceptions.SocketIsClosedError:
                        self.close_now()
                        return
                    except Exception:
                        socket.server.logger.exception("Unknown receive error")
                    if not backlog:
                        return
                    pkt = backlog.pop(0)
            finally:
                self.backlog = None
                conn = self.conn
                if conn is not None and not conn.closed and not conn.transport.is_reading():
                    conn.transport.resume_reading()

        def probe_step(self, pkt: Any) -> None:
            """The upgrade handshake (PING probe / PONG probe / UPGRADE), as :meth:`probe`."""
            socket = self.socket
            conn = self.conn
            assert socket is not None and conn is not None
            if self.probing == 1 and pkt.packet_type == eio_packet.PING and pkt.data == "probe":
                conn.write(frame(b"3probe"))  # PONG probe
                socket.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))  # end the poll
                self.probing = 2
                return
            self.probing = 0
            socket.upgrading = False
            if pkt.packet_type == eio_packet.UPGRADE:
                socket.upgraded = True
                self.attach(socket, conn.transport)
                return
            socket.upgraded = False
            socket.server.logger.info("%s: Failed websocket upgrade", socket.sid)
            conn.close()

        def close_now(self) -> None:
            """End the websocket: the writer sends what is queued, then closes it."""
            queue = self.queue
            if queue is not None and queue.websocket is self:
                queue.put_nowait(None)
            elif self.conn is not None:
                self.conn.close()

        def ended(self) -> None:
            """The connection is closed: end its Engine.IO session (unless it was a probe
            that failed: the long-poll goes on)."""
            socket = self.socket
            conn = self.conn
            assert socket is not None and conn is not None
            self.transport = None
            if self.probing:
                self.probing = 0
                socket.upgrading = False
            websockets = getattr(socket.server, "websockets", None)
            if websockets is not None and websockets.get(socket.sid) is conn.transport:
                del websockets[socket.sid]
            queue = self.queue
            if queue is None or queue.websocket is not self:
                return
            queue.websocket = None
            reason = socket.server.reason.TRANSPORT_CLOSE
            _start(socket.close(wait=False, abort=True, reason=reason))

        # -- incoming, on aiohttp --------------------------------------------------------

        async def serve(self, socket: AsyncSocket) -> None:
            """python-engineio's ``_websocket_handler`` without its tasks."""
            server = socket.server
            if socket.connected:
                # already connected on long-polling: this is an upgrade
                if not await self.probe(socket):
                    return
            else:
                socket.connected = True
                socket.upgraded = True
            self.attach(socket, self.transport)
            queue = socket.queue
            limit = server.max_http_buffer_size
            ws = self._sock
            while True:
                try:
                    # no read timeout (a timer per read): python-engineio's ping-timeout
                    # check closes the session, the guard's sweep then aborts the connection
                    msg = await ws.receive()
                except (Exception, asyncio.CancelledError):  # cancel, errors: as stock
                    break
                data = msg.data
                if not isinstance(data, str | bytes) or len(data) > limit:
                    break
                try:
                    pkt = eio_packet.Packet(encoded_packet=data)
                except Exception:
                    log.debug("undecodable Engine.IO packet", exc_info=True)
                    break
                try:
                    await socket.receive(pkt)
                except eio_exceptions.UnknownPacketError:
                    pass
                except eio_exceptions.SocketIsClosedError:
                    break
                except Exception:
                    server.logger.exception("Unknown receive error")
            await queue.put(None)  # the writer closes the websocket after what is queued
            writer = self.writer
            if writer is not None:
                await writer
            elif not self.finished:
                await self.close()
            await socket.close(wait=False, abort=True, reason=server.reason.TRANSPORT_CLOSE)

        async def probe(self, socket: AsyncSocket) -> bool:
            """The upgrade handshake: PING probe / PONG probe / UPGRADE (python-engineio's)."""
            socket.upgrading = True  # hold packet sends during the upgrade
            try:
                pkt = eio_packet.Packet(encoded_packet=await self.wait())
            except Exception:
                socket.upgrading = False
                return False
            if pkt.packet_type != eio_packet.PING or pkt.data != "probe":
                socket.server.logger.info("%s: Failed websocket upgrade, no PING", socket.sid)
                socket.upgrading = False
                return False
            await self.send(eio_packet.Packet(eio_packet.PONG, data="probe").encode())
            await socket.queue.put(eio_packet.Packet(eio_packet.NOOP))  # end the poll
            try:
                pkt = eio_packet.Packet(encoded_packet=await self.wait())
            except Exception:
                socket.upgrading = False
                return False
            if pkt.packet_type != eio_packet.UPGRADE:
                socket.upgraded = False
                socket.upgrading = False
                socket.server.logger.info("%s: Failed websocket upgrade", socket.sid)
                return False
            socket.upgraded = True
            socket.upgrading = False
            return True

    return WebSocket
