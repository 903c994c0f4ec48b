"""A lean websocket client for the load tool: raw frames on an asyncio Protocol.

aiohttp's client websocket costs a reader task wake-up, a ``WSMessage`` and a queue hop per
frame; on one core that saturates before a fast server does. Here the event loop's
``data_received`` parses every frame in the chunk it read and hands Engine.IO text straight
to the receiver's callback: no task, no queue, no message object. It speaks only what the
bench needs (RFC 6455 client side, no extensions): text frames in, masked text frames out,
pings answered, fragmented messages joined.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import ssl as ssl_module
from collections.abc import Callable
from urllib.parse import urlsplit

from .wire import Connection, HandshakeError, refusal_code

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def client_frame(payload: bytes, opcode: int = OP_TEXT, mask: bytes | None = None) -> bytes:
    """One final, masked client frame (RFC 6455 5.2/5.3)."""
    mask = os.urandom(4) if mask is None else mask
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    if n:
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        payload = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")
    return head + mask + payload


class FrameParser:
    """Server frames (unmasked) from a byte stream: ``feed`` returns complete messages.

    Text and binary messages go to ``on_message(payload)`` (fragments joined); control
    frames to ``on_control(opcode, payload)``. A masked server frame is a protocol error.
    """

    def __init__(
        self,
        on_message: Callable[[bytes], None],
        on_control: Callable[[int, bytes], None],
    ) -> None:
        self.on_message = on_message
        self.on_control = on_control
        self.buf = b""
        self.fragments: list[bytes] = []

    def feed(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
        n = len(data)
        i = 0
        on_message = self.on_message
        while n - i >= 2:
            b0 = data[i]
            ln = data[i + 1]
            if ln & 0x80:
                raise ValueError("masked server frame")
            if ln < 126:
                start = i + 2
            elif ln == 126:
                if n - i < 4:
                    break
                ln = int.from_bytes(data[i + 2 : i + 4], "big")
                start = i + 4
            else:
                if n - i < 10:
                    break
                ln = int.from_bytes(data[i + 2 : i + 10], "big")
                start = i + 10
            end = start + ln
            if end > n:
                break
            payload = data[start:end]
            i = end
            if b0 == 0x81:  # the hot path: a final text frame
                on_message(payload)
                continue
            opcode = b0 & 0x0F
            if opcode >= OP_CLOSE:
                self.on_control(opcode, payload)
            elif b0 & 0x80:
                if self.fragments:
                    self.fragments.append(payload)
                    payload = b"".join(self.fragments)
                    self.fragments.clear()
                on_message(payload)
            else:
                self.fragments.append(payload)
        self.buf = data[i:] if i < n else b""


class _Protocol(asyncio.Protocol):
    """The HTTP upgrade, then frames: everything runs in ``data_received``."""

    def __init__(self, owner: RawConnection) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.head = b""
        self.parser = FrameParser(owner._on_text, owner._on_control)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.upgraded.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 65536:
                    self.upgraded.set_exception(HandshakeError("bad_upgrade"))
                return
            status = self.head[: self.head.find(b"\r\n")].split(b" ", 2)
            code = status[1].decode(errors="replace") if len(status) > 1 else "?"
            if code != "101":
                self.upgraded.set_exception(HandshakeError(f"http_{code}"))
                return
            data = self.head[end + 4 :]
            self.head = b""
            self.upgraded.set_result(None)
            if not data:
                return
        try:
            self.parser.feed(data)
        except ValueError:
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(HandshakeError("connect_failed", "closed"))
        self.owner._lost()


class RawConnection(Connection):
    """A websocket :class:`~service.bench.wire.Connection` on :class:`_Protocol`.

    Before :meth:`start`, frames queue for the handshake; after it, ``42`` frames go straight
    to ``on_event``, Engine.IO pings are answered in place, the rest to the shared dispatch.
    """

    def __init__(self, url: str, token: str, path: str = "/socket.io/") -> None:
        super().__init__(None, url, token, "websocket", path)  # type: ignore[arg-type]
        self.proto: _Protocol | None = None
        self.started = False
        self.pending: list[bytes] = []
        self.waiter: asyncio.Future[None] | None = None

    async def connect(self, limit: float = 10.0) -> None:
        auth = "40" + json.dumps({"token": self.token})
        async with asyncio.timeout(limit):
            await self._open()
            opened = await self._next()
            if not opened.startswith(b"0"):
                self._abort()
                raise HandshakeError("bad_open", repr(opened)[:60])
            self._send_text(auth.encode())
            while True:
                data = await self._next()
                if data.startswith(b"40"):
                    self.sid = json.loads(data[2:]).get("sid", "")
                    return
                if data.startswith(b"44"):
                    self._abort()
                    raise HandshakeError(refusal_code(data))
                if data == b"2":
                    self._send_text(b"3")

    async def _open(self) -> None:
        parts = urlsplit(self.url)
        secure = parts.scheme in ("https", "wss")
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if secure else 80)
        loop = asyncio.get_running_loop()
        try:
            transport, proto = await loop.create_connection(
                lambda: _Protocol(self),
                host,
                port,
                ssl=ssl_module.create_default_context() if secure else None,
            )
        except OSError as exc:
            raise HandshakeError("connect_failed", type(exc).__name__) from None
        proto.transport = transport  # uvloop calls connection_made only later
        self.proto = proto
        key = base64.b64encode(os.urandom(16)).decode()
        target = f"{parts.path.rstrip('/')}{self.path}?EIO=4&transport=websocket"
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        transport.write(request.encode())
        await proto.upgraded

    async def _next(self) -> bytes:
        while not self.pending:
            if self.closed:
                raise HandshakeError("closed_during_handshake")
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        return self.pending.pop(0)

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # -- frames in --------------------------------------------------------------------------

    def _on_text(self, data: bytes) -> None:
        if not self.started:
            self.pending.append(data)
            self._wake()
        elif data[:2] == b"42":  # the hot path: an event
            self.on_event(data)
        elif data == b"2":
            self._send_text(b"3")
        elif data[:1] == b"4":
            self._dispatch(data)
        elif data[:1] == b"1":
            self._closed("server_close")

    def _on_control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            self._write(client_frame(payload, OP_PONG))
        elif opcode == OP_CLOSE:
            self._write(client_frame(payload[:2], OP_CLOSE))
            self._abort()

    def _lost(self) -> None:
        was_closed = self.closed
        self.closed = True
        self._wake()
        if self.started and not was_closed:
            self.on_close("transport_close")

    # -- frames out -------------------------------------------------------------------------

    def _write(self, frame: bytes) -> None:
        if self.proto is None or self.proto.transport is None:
            raise ConnectionError("not connected")
        if self.proto.transport.is_closing():
            raise ConnectionResetError("websocket closed")
        self.proto.transport.write(frame)

    def _send_text(self, payload: bytes) -> None:
        self._write(client_frame(payload))

    def _abort(self) -> None:
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.abort()

    async def send(self, text: str) -> None:
        """Send one Engine.IO MESSAGE frame (``text`` is the Socket.IO packet)."""
        self._send_text(("4" + text).encode())

    def start(self) -> None:
        """Deliver frames from now on (anything that came during the handshake first)."""
        self.started = True
        pending, self.pending = self.pending, []
        for data in pending:
            self._on_text(data)

    async def close(self) -> None:
        """Leave quietly (a close frame, then the socket): no disconnect is reported."""
        self.closed = True
        with contextlib.suppress(Exception):
            self._write(client_frame(b"\x03\xe8", OP_CLOSE))
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.close()
