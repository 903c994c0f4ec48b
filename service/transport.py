"""Engine.IO transport tweaks, through the driver table python-engineio looks up per server."""

from __future__ import annotations

from typing import Any

from aiohttp.web import WebSocketResponse
from engineio.async_drivers import aiohttp as eio_aiohttp

MAX_DIRECT_BUFFER = 4 * 1024 * 1024
"""Above this many bytes waiting in a socket's kernel-side buffer, broadcasts go through the
socket's queue again (python-engineio's writer then applies aiohttp's flow control)."""


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
    without compression, not closing, its queue is empty and its writer task is parked in
    ``queue.get()`` (a pending getter), so it holds no packet it has not written yet.
    """
    ws = getattr(socket, "direct_ws", None)
    if ws is None or socket.closing or socket.upgrading or not socket.upgraded:
        return None
    queue = socket.queue
    getters = queue._getters  # python-engineio's writer waiting in get(): it holds nothing
    if queue._queue or not getters or getters[0].done():
        return None
    transport = ws.transport
    if transport is None or transport.is_closing():
        return None
    if transport.get_write_buffer_size() > MAX_DIRECT_BUFFER:
        return None
    return transport


def websocket_driver(compress: bool) -> type[eio_aiohttp.WebSocket]:
    """python-engineio's aiohttp WebSocket with permessage-deflate on or off.

    Stock, every frame is deflated once per receiver when the client offers compression (as
    browsers and socket.io-client do): the largest CPU cost of a broadcast. Without
    compression the Engine.IO socket is also offered for direct writes (:func:`direct_transport`).
    """

    class WebSocket(eio_aiohttp.WebSocket):
        transport: Any = None

        async def __call__(self, environ: dict[str, Any]) -> WebSocketResponse:
            request = environ["aiohttp.request"]
            self._sock = WebSocketResponse(
                max_msg_size=self.server.max_http_buffer_size, compress=compress
            )
            await self._sock.prepare(request)
            self.environ = environ
            socket = getattr(self.handler, "__self__", None)
            if not compress and socket is not None:
                self.transport = request.transport
                socket.direct_ws = self
            try:
                await self.handler(self)
            finally:
                self.transport = None
                if socket is not None:
                    socket.direct_ws = None
            return self._sock

    return WebSocket
