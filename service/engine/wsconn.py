"""A websocket served on its own asyncio protocol once its handshake is done.

aiohttp serves a websocket inside the request that opened it: for the whole life of the
connection it keeps the request task and its coroutine frames (the route, the middlewares,
python-engineio's ``handle_request``), the parsed request head, the HTTP protocol object,
the ``WebSocketResponse`` with its reader queue and writer: ~10 KiB per idle connection,
more than everything Engine.IO and Socket.IO keep for it.

:func:`take_over` hands the TCP transport of a websocket handshake that aiohttp's own
checks accepted to a :class:`WebSocketConnection` instead (asyncio's public
``Transport.set_protocol``), and tells aiohttp's protocol the connection is gone for it
(with its transport detached first, so it closes nothing): its request task then ends and
everything above is freed. The 101 answer (:func:`switching_protocols`) goes out in one
write with the Engine.IO OPEN packet. Frames are parsed by aiohttp's own websocket parser
(masking, fragments, UTF-8, size limit, close codes), handed on as they complete; frames out
are written straight to the transport, with asyncio's flow control.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp import WSCloseCode, WSMsgType
from aiohttp._websocket.reader import WebSocketDataQueue
from aiohttp.http import WebSocketError, WebSocketReader

log = logging.getLogger(__name__)

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PONG = 0x1, 0x2, 0x8, 0xA

SENDABLE_CLOSE_CODES = frozenset((*range(1000, 1004), *range(1007, 1015), *range(3000, 5000)))
"""Close codes an endpoint may put on the wire (RFC 6455, 7.4): a client's close frame is
answered with its own code when it is one of these, else with 1000 (a frame without a code
reaches us as 0; 1005, 1006 and 1015 are never sent)."""


def frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One unmasked, final websocket frame (server to client)."""
    n = len(payload)
    head = 0x80 | opcode
    if n < 126:
        return bytes((head, n)) + payload
    if n < 1 << 16:
        return bytes((head, 126)) + n.to_bytes(2, "big") + payload
    return bytes((head, 127)) + n.to_bytes(8, "big") + payload


class Peer(Protocol):
    """What the connection reports to (the websocket driver)."""

    def received(self, data: str | bytes) -> None: ...

    def ended(self) -> None: ...


class _Inbox(WebSocketDataQueue):
    """Where aiohttp's parser puts each complete message: handed to the connection at once,
    never buffered (so the parser's own backpressure never triggers)."""

    __slots__ = ("conn",)

    def __init__(self, conn: WebSocketConnection, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(conn, 1 << 16, loop=loop)  # type: ignore[arg-type]
        self.conn = conn

    def feed_data(self, data: Any, size: int) -> None:
        self.conn.message(data)

    def feed_eof(self) -> None:
        pass

    def set_exception(self, exc: BaseException, exc_cause: Any = None) -> None:
        self.conn.failed(exc)


class WebSocketConnection(asyncio.Protocol):
    """The protocol of one websocket after its handshake."""

    __slots__ = ("closed", "drained", "peer", "reader", "transport", "write_paused")

    def __init__(self, peer: Peer, transport: asyncio.Transport, max_msg_size: int) -> None:
        self.peer = peer
        self.transport = transport
        self.reader = WebSocketReader(
            _Inbox(self, asyncio.get_running_loop()), max_msg_size, False, True
        )
        self.closed = False  # a close frame was sent, or the connection is lost
        self.write_paused = False
        self.drained: asyncio.Future[None] | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed_data(data)
        except Exception as exc:  # the parser reports through failed(); this is a bug guard
            self.failed(exc)

    def eof_received(self) -> bool:
        return False  # the peer half-closed: close our side too

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.resume_writing()
        self.peer.ended()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter, self.drained = self.drained, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- frames in ----------------------------------------------------------------------------

    def message(self, msg: Any) -> None:
        kind = msg.type
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            if not self.closed:
                self.peer.received(msg.data)
        elif kind is WSMsgType.PING:
            self.write(frame(bytes(msg.data), OP_PONG))
        elif kind is WSMsgType.CLOSE:
            self.close(msg.data if msg.data in SENDABLE_CLOSE_CODES else WSCloseCode.OK)

    def failed(self, exc: BaseException) -> None:
        """A frame aiohttp's parser refused (too big, bad UTF-8, protocol error)."""
        code = exc.code if isinstance(exc, WebSocketError) else WSCloseCode.PROTOCOL_ERROR
        log.debug("websocket closed on a bad frame: %s", exc)
        self.close(code)

    # -- frames out ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed and not self.transport.is_closing():
            self.transport.write(data)

    async def send(self, data: str | bytes) -> None:
        """One data frame, then wait while the peer's buffer is full (flow control)."""
        if self.closed or self.transport.is_closing():
            raise ConnectionResetError("websocket closed")
        if isinstance(data, str):
            self.transport.write(frame(data.encode()))
        else:
            self.transport.write(frame(data, OP_BINARY))
        if self.write_paused:
            if self.drained is None:
                self.drained = asyncio.get_running_loop().create_future()
            await self.drained

    def close(self, code: int = WSCloseCode.OK) -> None:
        """Send a close frame and close the connection once what is written has left."""
        if self.closed:
            return
        self.write(frame(int(code).to_bytes(2, "big"), OP_CLOSE))
        self.closed = True
        self.transport.close()


def switching_protocols(headers: Mapping[str, str]) -> bytes:
    """The 101 answer to a websocket handshake, with the headers aiohttp's handshake check
    computed (``Upgrade``, ``Connection``, ``Sec-WebSocket-Accept``)."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"HTTP/1.1 101 Switching Protocols\r\n{lines}\r\n".encode()


def can_take_over(request: Any) -> bool:
    """The request's connection can be handed over after the handshake: its transport can
    change protocol, and no byte followed the handshake (a client must wait for the 101
    before it sends frames; one that did not stays with aiohttp)."""
    handler = request.protocol
    transport = request.transport
    return (
        transport is not None
        and hasattr(transport, "set_protocol")
        and hasattr(handler, "connection_lost")
        and not getattr(handler, "_message_tail", b"x")
    )


def take_over(request: Any, peer: Peer, max_msg_size: int) -> WebSocketConnection | None:
    """Hand the connection of ``request`` (a valid websocket handshake, not answered yet:
    the caller writes the 101) to a new :class:`WebSocketConnection`. None: the connection
    stays with aiohttp."""
    handler = request.protocol
    transport = request.transport
    if transport is None or transport.is_closing():
        return None
    conn = WebSocketConnection(peer, transport, max_msg_size)
    transport.set_protocol(conn)
    handler.transport = None  # aiohttp closes nothing ...
    handler.connection_lost(None)  # ... and forgets the connection: its request task ends
    if not transport.is_reading():
        transport.resume_reading()  # aiohttp may have paused it for its own buffers
    return conn


__all__ = ["WebSocketConnection", "can_take_over", "frame", "switching_protocols", "take_over"]
