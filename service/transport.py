"""Engine.IO transport tweaks, through the driver table python-engineio looks up per server."""

from __future__ import annotations

from typing import Any

from aiohttp.web import WebSocketResponse
from engineio.async_drivers import aiohttp as eio_aiohttp


def websocket_driver(compress: bool) -> type[eio_aiohttp.WebSocket]:
    """python-engineio's aiohttp WebSocket with permessage-deflate on or off.

    Stock, every frame is deflated once per receiver when the client offers compression (as
    browsers and socket.io-client do): the largest CPU cost of a broadcast.
    """

    class WebSocket(eio_aiohttp.WebSocket):
        async def __call__(self, environ: dict[str, Any]) -> WebSocketResponse:
            request = environ["aiohttp.request"]
            self._sock = WebSocketResponse(
                max_msg_size=self.server.max_http_buffer_size, compress=compress
            )
            await self._sock.prepare(request)
            self.environ = environ
            await self.handler(self)
            return self._sock

    return WebSocket
