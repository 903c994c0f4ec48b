"""A raw Engine.IO v4 / Socket.IO v5 client over aiohttp, for sending frames no well-behaved
client library would: broken JSON, bogus packet types, invalid UTF-8, oversized frames.

Both transports share one interface: :meth:`RawClient.send` puts Engine.IO packets on the
wire as given (text, or bytes: a binary websocket message / a raw polling body), and
:meth:`RawClient.receive` returns what the server sent, answering pings on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp
from aiohttp import WSMsgType

SEP = "\x1e"
Frame = str | bytes


class Closed(Exception):
    """The server closed the connection (or refused the request)."""


class RawClient:
    transport = ""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url.rstrip("/")
        self.http = session
        self.sid = ""
        self.open_packet: dict[str, Any] = {}
        self.closed = False
        self.inbox: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._next_ack = 1

    # -- to implement per transport ------------------------------------------------------------

    async def open(self) -> RawClient:
        raise NotImplementedError

    async def send(self, *frames: Frame) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------

    def _opened(self, text: str) -> None:
        if not text.startswith("0"):
            raise Closed(f"expected an Engine.IO open packet, got {text[:80]!r}")
        self.open_packet = json.loads(text[1:])
        self.sid = self.open_packet["sid"]

    async def _deliver(self, frame: Frame) -> None:
        if frame == "2":
            with contextlib.suppress(Closed, aiohttp.ClientError):
                await self.send("3")
            return
        await self.inbox.put(frame)

    async def receive(self, timeout: float = 5) -> Frame:
        """The next packet from the server (pings are answered, not returned)."""
        frame = await asyncio.wait_for(self.inbox.get(), timeout)
        if frame is None:
            self.inbox.put_nowait(None)
            raise Closed("connection closed")
        return frame

    async def expect(self, prefix: str, timeout: float = 5) -> str:
        """Skip packets until one that starts with ``prefix``; return it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.receive(max(0.01, deadline - loop.time()))
            if isinstance(frame, str) and frame.startswith(prefix):
                return frame

    async def connect(self, auth: Any = None, namespace: str = "") -> dict[str, Any]:
        """Socket.IO CONNECT; returns ``{"sid": ...}`` or raises Closed with the refusal."""
        ns = f"{namespace}," if namespace else ""
        await self.send("40" + ns + (json.dumps(auth) if auth is not None else ""))
        reply = await self.expect("4")
        body = reply[2 + len(ns) :]
        if reply.startswith("40"):
            return json.loads(body)
        raise Closed(f"refused: {reply}")

    def next_ack_id(self) -> int:
        self._next_ack += 1
        return self._next_ack

    async def call(self, event: str, data: Any = None, timeout: float = 5) -> Any:
        """Emit with an ack id and wait for the ack's first argument."""
        ack = self.next_ack_id()
        args = [event] if data is None else [event, data]
        await self.send(f"42{ack}" + json.dumps(args))
        reply = await self.expect(f"43{ack}[", timeout)
        args = json.loads(reply[len(f"43{ack}") :])
        return args[0] if args else None

    async def drain(self, seconds: float) -> list[Frame]:
        """Everything received during ``seconds`` (stops early when closed)."""
        got: list[Frame] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        with contextlib.suppress(TimeoutError, Closed):
            while (left := deadline - loop.time()) > 0:
                got.append(await self.receive(left))
        return got


class RawWebSocket(RawClient):
    transport = "websocket"

    async def open(self) -> RawWebSocket:
        self.ws = await self.http.ws_connect(
            f"{self.url}/socket.io/?EIO=4&transport=websocket", max_msg_size=0, autoping=False
        )
        first = await self.ws.receive(timeout=5)
        if first.type != WSMsgType.TEXT:
            raise Closed(f"no open packet: {first.type}")
        self._opened(first.data)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await self._deliver(msg.data)
                else:
                    break
        finally:
            self.closed = True
            await self.inbox.put(None)

    async def send(self, *frames: Frame) -> None:
        if self.closed or self.ws.closed:
            raise Closed("websocket closed")
        for frame in frames:
            try:
                if isinstance(frame, bytes):
                    await self.ws.send_bytes(frame)
                else:
                    await self.ws.send_str(frame)
            except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
                raise Closed(str(exc)) from exc

    async def send_invalid_text(self, payload: bytes) -> None:
        """A TEXT frame whose bytes are not valid UTF-8 (no library would send one)."""
        await self.ws.send_frame(payload, WSMsgType.TEXT)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        if hasattr(self, "_reader"):
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader


class RawPolling(RawClient):
    transport = "polling"

    @property
    def endpoint(self) -> str:
        return f"{self.url}/socket.io/?EIO=4&transport=polling&sid={self.sid}"

    async def open(self) -> RawPolling:
        async with self.http.get(f"{self.url}/socket.io/?EIO=4&transport=polling") as resp:
            if resp.status != 200:
                raise Closed(f"handshake refused: {resp.status} {await resp.text()}")
            self._opened((await resp.text()).split(SEP)[0])
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            while not self.closed:
                async with self.http.get(self.endpoint) as resp:
                    if resp.status != 200:
                        break
                    body = await resp.read()
                for part in body.decode("utf-8", "replace").split(SEP):
                    if part == "1":
                        return
                    if part:
                        await self._deliver(part)
        except (TimeoutError, aiohttp.ClientError):
            pass
        finally:
            self.closed = True
            await self.inbox.put(None)

    async def post(self, body: bytes) -> int:
        """POST a raw body (any bytes); return the HTTP status."""
        try:
            async with self.http.post(
                self.endpoint, data=body, headers={"Content-Type": "text/plain;charset=UTF-8"}
            ) as resp:
                await resp.read()
                return resp.status
        except aiohttp.ClientError as exc:
            raise Closed(str(exc)) from exc

    async def send(self, *frames: Frame) -> None:
        if self.closed:
            raise Closed("session closed")
        for frame in frames:
            # a binary attachment travels base64-encoded ("b...") over polling
            if isinstance(frame, bytes):
                import base64

                body = ("b" + base64.b64encode(frame).decode()).encode()
            else:
                body = frame.encode("utf-8", "surrogatepass")
            status = await self.post(body)
            if status != 200:
                raise Closed(f"POST refused: {status}")

    async def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                await self.post(b"1")
        self.closed = True
        if hasattr(self, "_reader"):
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader


async def open_raw(url: str, transport: str, session: aiohttp.ClientSession) -> RawClient:
    cls = RawWebSocket if transport == "websocket" else RawPolling
    return await cls(url, session).open()
