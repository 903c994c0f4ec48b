"""Engine.IO websocket transport, through the driver table python-engineio looks up per server.

python-engineio's websocket handler keeps, for every connection, a writer task parked on the
socket's queue (inside a ``wait_for``), a second task per read (also inside a ``wait_for``)
and a ping task sleeping between pings: ~6 KiB of tasks, futures and timers per idle
connection. The driver here serves the same protocol with none of them:

* reads run in the connection's own request task (``receive(timeout)``, one timer);
* a packet sent to an idle websocket is written at once, in order, as one frame; packets
  that find earlier ones still unwritten (a slow reader, a binary packet, compression) go
  through the socket's queue, drained by a writer task that exists only while the queue is
  not empty (aiohttp's flow control applies there, and the queue's own bounds with it);
* pings are timer callbacks instead of sleeping tasks (:func:`install_timer_pings`), and a
  client that leaves a ping unanswered for ``ping_timeout`` has its connection aborted by a
  timer too (stock: a ``wait_for`` around every read);
* the socket's queue keeps its class and bounds but holds its items and waiters in lists
  (:func:`slim_queue`): an empty ``collections.deque`` costs ~700 bytes, four per queue.

Upgrades from long-polling follow python-engineio's probe sequence unchanged.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

from aiohttp.web import WebSocketResponse
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as eio_aiohttp
from engineio.async_socket import AsyncSocket

log = logging.getLogger(__name__)

MAX_DIRECT_BUFFER = 4 * 1024 * 1024
"""Above this many bytes waiting in a socket's kernel-side buffer, packets go through the
socket's queue again (its writer then applies aiohttp's flow control, the queue its bounds)."""


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final websocket TEXT frame (server to client): the same bytes for every
    receiver, so a broadcast builds it once."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 1 << 16:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


def direct_transport(socket: Any) -> Any:
    """The asyncio transport of an Engine.IO socket when a frame may be written straight to
    it now, else None.

    Safe only when nothing sent earlier is still on its way: the socket is on websocket
    without compression, not closing or upgrading, its queue is empty and no writer task
    is draining it.
    """
    ws = getattr(socket, "direct_ws", None)
    if ws is None or socket.closing or socket.upgrading or not socket.upgraded:
        return None
    return ws.idle_transport()


class ListDeque(list[Any]):
    """A list standing in for a ``collections.deque`` inside asyncio's Queue and Event: the
    operations they use (append, popleft, remove, clear, len, iteration) and ~56 bytes when
    empty instead of a deque's ~700 (it allocates a 64-slot block up front)."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


def slim_queue(queue: Any) -> None:
    """Swap an ``asyncio.Queue``'s deques (items, getters, putters, join waiters) for lists."""
    if not isinstance(queue, asyncio.Queue):
        return
    for name in ("_getters", "_putters", "_queue"):
        items = getattr(queue, name, None)
        if type(items) is collections.deque:
            setattr(queue, name, ListDeque(items))
    finished = getattr(queue, "_finished", None)
    waiters = getattr(finished, "_waiters", None)
    if type(waiters) is collections.deque:
        finished._waiters = ListDeque(waiters)  # type: ignore[union-attr]


def _slim_request_handler(request: Any) -> None:
    """aiohttp's per-connection handler keeps a deque of parsed HTTP requests, empty for good
    once the connection is a websocket: a list instead (same operations)."""
    protocol = getattr(request, "protocol", None)
    messages = getattr(protocol, "_messages", None)
    if type(messages) is collections.deque and not messages:
        protocol._messages = ListDeque()  # type: ignore[union-attr]


_queue_classes: dict[type, type] = {}


def _write_through(base: type) -> type:
    """A subclass of the socket's queue class whose ``put_nowait`` writes a packet straight
    to its websocket when nothing is queued or being written, and starts the writer
    otherwise. Bounds and accounting of ``base`` (e.g. the guard's) apply to what is queued."""
    cls = _queue_classes.get(base)
    if cls is None:

        class WriteThroughQueue(base):  # type: ignore[misc, valid-type]
            websocket: Any = None

            def put_nowait(self, item: Any) -> None:
                ws = self.websocket
                if ws is not None and item is not None and ws.write_now(self, item):
                    return
                super().put_nowait(item)
                if ws is not None:
                    ws.kick()

        WriteThroughQueue.__name__ = f"WriteThrough{base.__name__}"
        _queue_classes[base] = cls = WriteThroughQueue
    return cls


PONG_GRACE_SECONDS = 1.0
"""Beyond ``ping_timeout``, how long an unanswered ping may wait before the websocket is
aborted (python-engineio's own ping-timeout check usually closes the socket first)."""


def _ping_due(socket: AsyncSocket) -> None:
    if not socket.closing and not socket.closed:
        socket.last_ping = sent = time.time()
        socket.queue.put_nowait(eio_packet.Packet(eio_packet.PING))
        ws = getattr(socket, "direct_ws", None)
        if ws is not None:
            delay = socket.server.ping_timeout + PONG_GRACE_SECONDS
            asyncio.get_running_loop().call_later(delay, _pong_overdue, socket, sent)


def _pong_overdue(socket: AsyncSocket, sent: float) -> None:
    """No PONG since the ping sent at ``sent``: end the websocket, as stock's read timeout."""
    ws = getattr(socket, "direct_ws", None)
    if ws is not None and socket.last_ping == sent:
        ws.abort()


def _schedule_ping(self: AsyncSocket) -> None:
    """python-engineio's ``schedule_ping`` with a timer instead of a task sleeping
    ``ping_interval`` per socket; the ping itself is queued as before."""
    if self.last_ping:
        self.last_ping = None
        asyncio.get_running_loop().call_later(self.server.ping_interval, _ping_due, self)


def install_timer_pings() -> None:
    """Make every python-engineio asyncio socket schedule its pings with a timer."""
    AsyncSocket.schedule_ping = _schedule_ping  # type: ignore[method-assign]


def websocket_driver(compress: bool) -> type[eio_aiohttp.WebSocket]:
    """The websocket driver, with permessage-deflate on or off.

    Stock, every frame is deflated once per receiver when the client offers compression (as
    browsers and socket.io-client do): the largest CPU cost of a broadcast. Without
    compression, packets to an idle socket are written straight to its transport
    (:func:`direct_transport`, :meth:`WebSocket.write_now`).
    """
    install_timer_pings()

    class WebSocket(eio_aiohttp.WebSocket):
        transport: Any = None  # the TCP transport, for direct writes (no compression)
        tcp: Any = None
        writer: asyncio.Task[None] | None = None
        finished = False  # the writer met the end-of-stream marker and closed the websocket
        queue: Any = None

        async def __call__(self, environ: dict[str, Any]) -> WebSocketResponse:
            request = environ["aiohttp.request"]
            self._sock = WebSocketResponse(
                max_msg_size=self.server.max_http_buffer_size, compress=compress
            )
            await self._sock.prepare(request)
            self.environ = environ
            socket = getattr(self.handler, "__self__", None)
            if not isinstance(socket, AsyncSocket):
                await self.handler(self)
                return self._sock
            self.tcp = request.transport
            _slim_request_handler(request)
            if not compress:
                self.transport = request.transport
            try:
                await self.serve(socket)
            finally:
                self.transport = self.tcp = None
                socket.direct_ws = None
                queue = self.queue
                if queue is not None:
                    queue.websocket = None
            return self._sock

        # -- outgoing ---------------------------------------------------------------------

        def idle_transport(self) -> Any:
            """The transport when nothing is queued or being written and it is not backed up."""
            transport = self.transport
            if transport is None or self.writer is not None or self.finished:
                return None
            queue = self.queue
            if queue is None or queue._queue:
                return None
            if transport.is_closing() or transport.get_write_buffer_size() > MAX_DIRECT_BUFFER:
                return None
            return transport

        def write_now(self, queue: Any, pkt: Any) -> bool:
            """Write ``pkt`` now if that cannot reorder anything; False: queue it."""
            if pkt.binary or getattr(queue, "overflowed", False):
                return False
            transport = self.idle_transport()
            if transport is None:
                return False
            transport.write(text_frame(pkt.encode().encode()))
            return True

        def abort(self) -> None:
            tcp = self.tcp
            if tcp is not None and not tcp.is_closing():
                tcp.abort()

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

        # -- incoming ---------------------------------------------------------------------

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
            queue = socket.queue
            slim_queue(queue)
            queue.__class__ = _write_through(type(queue))
            queue.websocket = self
            self.queue = queue
            socket.direct_ws = self
            if not queue.empty():
                self.kick()  # the OPEN packet, or what was held during the upgrade
            limit = server.max_http_buffer_size
            ws = self._sock
            while True:
                try:
                    # no read timeout (a timer per read): a client that stops answering
                    # pings is aborted by _pong_overdue
                    msg = await ws.receive()
                except (Exception, asyncio.CancelledError):  # timeout, cancel, errors: as stock
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
