"""The fast driver's websocket after its handshake: served on its own protocol, with the
same frame-level behaviour as aiohttp's (both drivers are run through the same checks)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import os
import weakref
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from service import keys
from service.engine.wsconn import WebSocketConnection

from .helpers import connect, running_server

DRIVERS = ["fast", "stock"]
WS_PATH = "/socket.io/?EIO=4&transport=websocket"


def masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """One client-to-server frame (masked, as RFC 6455 requires)."""
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    head = bytes(((0x80 if fin else 0) | opcode,))
    if n < 126:
        size = bytes((0x80 | n,))
    elif n < 1 << 16:
        size = bytes((0x80 | 126,)) + n.to_bytes(2, "big")
    else:
        size = bytes((0x80 | 127,)) + n.to_bytes(8, "big")
    return head + size + key + body


class RawSocket:
    """A websocket client on a bare TCP connection: frames exactly as the test writes them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.skipped: list[tuple[int, bytes]] = []  # frames text() read past

    async def frame(self, timeout: float = 5) -> tuple[int, bytes]:
        """The next frame from the server: (opcode, payload); (-1, b"") when it closed."""
        if self.skipped:
            return self.skipped.pop(0)
        try:
            head = await asyncio.wait_for(self.reader.readexactly(2), timeout)
            n = head[1] & 0x7F
            if n == 126:
                n = int.from_bytes(await self.reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await self.reader.readexactly(8), "big")
            return head[0] & 0x0F, await self.reader.readexactly(n)
        except asyncio.IncompleteReadError:
            return -1, b""

    async def text(self) -> str:
        """The next TEXT frame's text (Engine.IO pings answered); other frames before it
        are kept for frame()."""
        passed = []
        while True:
            opcode, payload = await self.frame()
            if (opcode, payload) == (0x1, b"2"):  # the server's Engine.IO ping
                self.send(masked(0x1, b"3"))
            elif opcode == 0x1:
                self.skipped[:0] = passed
                return payload.decode()
            assert opcode != -1, "the server closed the connection"
            passed.append((opcode, payload))

    async def closed_with(self) -> int:
        """The status code of the server's close frame (it must then end the connection)."""
        while True:
            opcode, payload = await self.frame()
            assert opcode != -1, "the connection ended without a close frame"
            if opcode == 0x8:
                assert (await self.frame())[0] == -1, "data after the close frame"
                return int.from_bytes(payload[:2], "big")

    def send(self, data: bytes) -> None:
        self.writer.write(data)


@contextlib.asynccontextmanager
async def raw_websocket(url: str, early: bytes = b"") -> AsyncIterator[RawSocket]:
    """Open the Engine.IO websocket by hand; ``early`` is written with the handshake request
    (frames a client must not send before the 101, for the pipelining test)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {WS_PATH} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        + early
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    sock = RawSocket(reader, writer)
    try:
        assert (await sock.text()).startswith("0{")  # Engine.IO OPEN
        yield sock
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def test_an_idle_websocket_keeps_no_request_task_or_response(clients) -> None:
    """After the handshake the fast driver's websocket is served on its own protocol:
    aiohttp no longer tracks the connection, its request (with the parsed head) is freed,
    and the session works as before, then ends cleanly."""
    async with running_server(websocket_driver="fast") as srv:
        sio = srv.app[keys.SIO]
        websockets = srv.app[keys.GUARD].websockets
        requests: list[weakref.ref[web.BaseRequest]] = []
        original = sio.eio._async["translate_request"]

        def translate(request: web.BaseRequest) -> dict:
            requests.append(weakref.ref(request))
            return original(request)

        sio.eio._async = {**sio.eio._async, "translate_request": translate}
        alice = await connect(srv.url, "alice", transports=["websocket"])
        bob = await connect(srv.url, "bob", transports=["websocket"])
        clients += [alice, bob]
        eio_sid = alice.sio.eio.sid
        tcp = websockets[eio_sid]
        assert isinstance(tcp.get_protocol(), WebSocketConnection)
        assert srv.runner.server is not None and srv.runner.server.connections == []
        gc.collect()
        assert requests and all(ref() is None for ref in requests), "a request is still alive"
        environ = sio.get_environ(alice.sio.get_sid())
        assert "aiohttp.request" not in environ
        assert environ["REMOTE_ADDR"] == "127.0.0.1"

        for client in (alice, bob):
            assert (await client.call("join:room", "lean"))["ok"]
        ack = await alice.call("message:send", {"roomId": "lean", "message": "hello"})
        assert ack["ok"]
        got = await bob.wait_for("message:received", lambda m: m["message"] == "hello")
        assert got["userId"] == "alice"

        await alice.sio.disconnect()
        for _ in range(100):
            if eio_sid not in websockets and eio_sid not in sio.eio.sockets:
                break
            await asyncio.sleep(0.02)
        assert eio_sid not in websockets and eio_sid not in sio.eio.sockets
        assert tcp.is_closing()


@pytest.mark.parametrize("driver", DRIVERS)
async def test_pings_and_fragments_are_answered(driver: str) -> None:
    async with running_server(websocket_driver=driver) as srv:
        async with raw_websocket(srv.url) as ws:
            ws.send(masked(0x9, b"are you there"))
            assert await ws.frame() == (0xA, b"are you there")
            # a Socket.IO CONNECT (no token) split over a TEXT frame and two continuations
            ws.send(masked(0x1, b"4", fin=False) + masked(0x0, b"0{", fin=False))
            ws.send(masked(0x9, b"between"))  # control frames may come between fragments
            ws.send(masked(0x0, b"}"))
            assert await ws.frame() == (0xA, b"between")
            assert (await ws.text()).startswith('44{"message":"missing token"')


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize(
    ("frame", "codes"),
    [
        (masked(0x8, (1000).to_bytes(2, "big") + b"bye"), (1000, 1000)),
        (masked(0x8, b""), (1000, 1000)),
        # the fast driver echoes the client's code (RFC 6455 5.5.1), aiohttp answers 1000
        (masked(0x8, (4001).to_bytes(2, "big")), (4001, 1000)),
        (masked(0x1, b"\xff\xfe not UTF-8"), (1007, 1007)),
        (masked(0x1, b"4" + b"x" * 40_000), (1009, 1009)),
        (masked(0x5, b"no such opcode"), (1002, 1002)),
    ],
    ids=["close", "close-no-code", "close-4001", "bad-utf8", "too-big", "bad-opcode"],
)
async def test_closing_frames_get_a_close_frame_with_their_code(
    driver: str, frame: bytes, codes: tuple[int, int]
) -> None:
    async with running_server(websocket_driver=driver, max_message_bytes=1024) as srv:
        sockets = srv.app[keys.SIO].eio.sockets
        async with raw_websocket(srv.url) as ws:
            assert len(sockets) == 1
            ws.send(frame)
            assert await ws.closed_with() == codes[DRIVERS.index(driver)]
        for _ in range(100):
            if not sockets:
                break
            await asyncio.sleep(0.02)
        assert not sockets, "the Engine.IO session outlived its websocket"


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize(
    "header", ["Sec-WebSocket-Version: 12", "Sec-WebSocket-Key: short", "Connection: close"]
)
async def test_a_bad_handshake_is_refused_and_leaves_no_session(driver: str, header: str) -> None:
    """A handshake aiohttp's checks refuse gets a 400 (python-engineio answers a websocket
    request without ``Connection: upgrade`` with a 500) and ends the Engine.IO session it
    opened."""
    async with running_server(websocket_driver=driver) as srv:
        parts = urlsplit(srv.url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        name = header.split(":")[0]
        lines = [
            f"GET {WS_PATH} HTTP/1.1",
            f"Host: {parts.netloc}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ]
        request = [line for line in lines if not line.startswith(name + ":")] + [header]
        writer.write(("\r\n".join(request) + "\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
        assert head.startswith(b"HTTP/1.1 400"), head
        assert not srv.app[keys.GUARD].websockets
        assert not srv.app[keys.SIO].eio.sockets


@pytest.mark.parametrize("driver", DRIVERS)
async def test_frames_sent_with_the_handshake_are_not_lost(driver: str) -> None:
    """A client that writes frames before the 101 arrives (RFC 6455 says it must wait)
    still gets them handled: such a connection stays with aiohttp."""
    async with running_server(websocket_driver=driver) as srv:
        async with raw_websocket(srv.url, early=masked(0x9, b"early")) as ws:
            assert await ws.frame() == (0xA, b"early")
            (tcp,) = srv.app[keys.GUARD].websockets.values()
            assert not isinstance(tcp.get_protocol(), WebSocketConnection)
            ws.send(masked(0x1, b"40"))
            assert (await ws.text()).startswith('44{"message":"missing token"')
