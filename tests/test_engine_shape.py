"""The library shape the engine relies on, and its fallback.

``service/engine/`` reaches into python-engineio, python-socketio, aiohttp and asyncio
(names, signatures, behaviours). Every such assumption is asserted here, so an upgrade that
moves or renames one fails this file loudly, naming what moved, instead of the fast path
breaking quietly. When a library pin changes: run this file, adapt ``service/engine/``,
then update the pins in ``service/engine/versions.py`` (see docs/upgrading.md).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import inspect
import logging
import re
import tomllib
from typing import Any

import aiohttp
import engineio
import pytest
import socketio
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer, make_mocked_request
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as eio_aiohttp
from engineio.async_socket import AsyncSocket
from socketio import base_manager

from service import keys
from service.engine import Server, versions
from service.engine.fanout import LocalManager
from service.engine.queue import BoundedSendQueue
from service.engine.server import EngineIOServer
from service.engine.transport import WriteThroughQueue
from service.engine.wsconn import WebSocketConnection

from .helpers import ROOT, connect, running_server, token
from .rawclient import open_raw

UPSTREAM_SOURCES = {
    # the fast driver's serve()/probe() follow this read loop and upgrade sequence: when it
    # changes, port the change to service/engine/transport.py, then update the hash
    "_websocket_handler": "27f120df4d717a24",
    # start_background_task() turns this task into a timer
    "schedule_ping": "fe316639159cd70d",
    "_send_ping": "67db82a704ea49d0",
    # the driver is looked up in the driver table and given the socket's bound handler
    "_upgrade_websocket": "820b83efe96adb98",
}


def _digest(func: Any) -> str:
    return hashlib.sha256(inspect.getsource(func).encode()).hexdigest()[:16]


def _params(func: Any) -> list[str]:
    return list(inspect.signature(func).parameters)


# -- versions -------------------------------------------------------------------------------


def test_engine_versions_match_the_pins_and_the_installed_libraries() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins: dict[str, str] = {}
    for requirement in project["project"]["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^;\s]+)", requirement)
        if match:
            pins[match[1].lower()] = match[2]
    for name, version in versions.WRITTEN_FOR.items():
        assert pins.get(name) == version, f"pyproject pins {name} {pins.get(name)}"
    assert versions.unknown_versions() == {}, "installed libraries differ from the engine's"


# -- python-engineio ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "digest"), sorted(UPSTREAM_SOURCES.items()))
def test_engineio_socket_code_the_fast_driver_follows_is_unchanged(name: str, digest: str) -> None:
    assert _digest(getattr(AsyncSocket, name)) == digest, (
        f"python-engineio changed AsyncSocket.{name}: compare it with service/engine/"
        "transport.py and service/engine/server.py, then update UPSTREAM_SOURCES"
    )


def test_engineio_server_hooks() -> None:
    server = engineio.AsyncServer(async_mode="aiohttp")
    assert _params(engineio.AsyncServer.create_queue) == ["self", "args", "kwargs"]
    assert _params(engineio.AsyncServer.generate_id) == ["self"]
    assert _params(engineio.AsyncServer.handle_request) == ["self", "args", "kwargs"]
    assert _params(engineio.AsyncServer.start_background_task)[:2] == ["self", "target"]
    assert _params(engineio.AsyncServer.send_packet) == ["self", "sid", "pkt"]
    assert isinstance(server.sockets, dict) and isinstance(server.handlers, dict)
    assert server._async["websocket"] is eio_aiohttp.WebSocket
    assert server._async["translate_request"] is eio_aiohttp.translate_request
    for reason in ("SERVER_DISCONNECT", "TRANSPORT_ERROR", "TRANSPORT_CLOSE", "PING_TIMEOUT"):
        assert hasattr(server.reason, reason)
    # _handle_connect names the session (generate_id) before it creates its queue
    source = inspect.getsource(engineio.AsyncServer._handle_connect)
    assert source.index("self.generate_id()") < source.index("AsyncSocket(self, sid)")


def test_engineio_websocket_driver_shape() -> None:
    assert _params(eio_aiohttp.WebSocket.__init__) == ["self", "handler", "server"]
    for method in ("__call__", "close", "send", "wait"):
        assert inspect.iscoroutinefunction(getattr(eio_aiohttp.WebSocket, method)), method
    assert "self._sock = WebSocketResponse(" in inspect.getsource(eio_aiohttp.WebSocket.__call__)
    request = make_mocked_request("GET", "/socket.io/")
    assert eio_aiohttp.translate_request(request)["aiohttp.request"] is request


async def test_engineio_socket_shape_and_timer_pings() -> None:
    """AsyncSocket's attributes, and schedule_ping handing ``_send_ping`` to the server's
    start_background_task (which the fast driver turns into a timer: no task)."""
    server = EngineIOServer(async_mode="aiohttp", ping_interval=0.01)
    server.use_fast_websockets(compress=False)
    sock = AsyncSocket(server, "sid")
    for name in ("queue", "last_ping", "connected", "upgrading", "upgraded", "closing", "closed"):
        assert hasattr(sock, name), name
    assert isinstance(sock.queue, WriteThroughQueue)
    assert _params(AsyncSocket.close) == ["self", "wait", "abort", "reason"]
    assert _params(AsyncSocket.receive) == ["self", "pkt"]
    tasks = len(asyncio.all_tasks())
    sock.schedule_ping()
    assert len(asyncio.all_tasks()) == tasks, "schedule_ping started a task"
    await asyncio.sleep(0.05)
    assert sock.queue.get_nowait().packet_type == eio_packet.PING


# -- python-socketio ------------------------------------------------------------------------


def test_socketio_server_hooks() -> None:
    sio = Server(async_mode="aiohttp", max_http_buffer_size=1000)
    assert isinstance(sio.eio, EngineIOServer), "socketio ignored _engineio_server_class"
    assert issubclass(sio.packet_class, socketio.packet.Packet)
    assert sio.eio.handlers["message"] == sio._handle_eio_message
    assert sio.manager_initialized is False
    assert callable(sio.manager.initialize)
    assert _params(socketio.AsyncManager.get_participants) == ["self", "namespace", "room"]
    emit = _params(socketio.AsyncManager.emit)
    assert emit[:7] == ["self", "event", "data", "namespace", "room", "skip_sid", "callback"]
    # engine/recovery.py adds the pid to CONNECT answers by wrapping this coroutine
    assert inspect.iscoroutinefunction(socketio.AsyncServer._send_packet)
    assert _params(socketio.AsyncServer._send_packet) == ["self", "eio_sid", "pkt"]
    assert "packet.CONNECT" in inspect.getsource(socketio.AsyncServer._handle_connect)


def test_aiohttp_request_handler_shape_for_the_header_timeout() -> None:
    """engine/headers.py wraps each connection's request parser from the server's
    ``connection_made`` and reads the handler's request bookkeeping."""
    from aiohttp.web_protocol import RequestHandler

    assert _params(web.Server.connection_made) == ["self", "handler", "transport"]
    source = inspect.getsource(RequestHandler)
    for name in ("_parser", "_request_count", "_current_request", "_messages"):
        assert f"self.{name}" in source, f"aiohttp's RequestHandler no longer has {name}"
    assert "self._parser.feed_data(data)" in source


def test_socketio_basic_disconnect_the_room_index_follows_is_unchanged() -> None:
    # RoomIndexMixin.basic_disconnect is this code with the scan of every room replaced by
    # the socket's own rooms: when it changes, port the change to service/engine/fanout.py
    assert _digest(base_manager.BaseManager.basic_disconnect) == "2933b50bc4b2ea7b"


class _NotToBeScanned(dict):
    """A room a disconnect must not look at (it is not the socket's)."""

    def __contains__(self, key: object) -> bool:
        raise AssertionError("a disconnect scanned a room the socket is not in")


def test_a_disconnect_leaves_the_sockets_own_rooms_without_scanning_the_others() -> None:
    """Closing N connections must not cost O(N) each: python-socketio's disconnect tested
    every room of the namespace; the manager now leaves the socket's own rooms only."""
    manager = LocalManager()
    for sid, user in (("s1", "a"), ("s2", "b")):
        for room in (None, sid, f"user:{user}", "lobby"):
            manager.basic_enter_room(sid, "/", room, eio_sid=f"e-{sid}")
    manager.basic_leave_room("s1", "/", "lobby")
    manager.basic_enter_room("s1", "/", "extra")
    manager.rooms["/"]["someone-elses"] = _NotToBeScanned(x="e-x")
    manager.callbacks["s1"] = {1: print}
    manager.basic_disconnect("s1", "/")
    rooms = manager.rooms["/"]
    assert not any("s1" in room for name, room in rooms.items() if name != "someone-elses")
    assert {"s1", "user:a", "extra"}.isdisjoint(rooms) and "s1" not in manager.callbacks
    assert dict(rooms["lobby"]) == {"s2": "e-s2"} and dict(rooms[None]) == {"s2": "e-s2"}
    manager.basic_close_room("lobby", "/")
    del rooms["someone-elses"]
    manager.basic_disconnect("s2", "/")
    assert "/" not in manager.rooms  # the last socket gone: nothing left behind


def test_socketio_packet_decode_reports_attachments() -> None:
    sio = Server(async_mode="aiohttp", max_http_buffer_size=1000)
    pkt = sio.packet_class(encoded_packet='52-["e",{"_placeholder":true,"num":0}]')
    assert pkt.attachment_count == 2
    assert pkt.add_attachment(b"x") is False
    with pytest.raises(ValueError):
        sio.packet_class(encoded_packet='511-["e"]')  # more than MAX_ATTACHMENTS
    with pytest.raises(ValueError):
        pkt.add_attachment(b"x" * 1000)  # past max_http_buffer_size


# -- aiohttp --------------------------------------------------------------------------------


async def test_aiohttp_send_frame_writes_before_it_suspends() -> None:
    """An uncompressed ``send_frame`` runs to completion in one step (what the direct
    write relies on); the request exposes its transport and its handler's request deque."""
    assert _params(web.WebSocketResponse.send_frame) == ["self", "message", "opcode", "compress"]
    seen: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        seen["transport"] = request.transport
        seen["messages"] = type(getattr(request.protocol, "_messages", None))
        coro = ws.send_frame(b"direct", WSMsgType.TEXT)
        try:
            coro.send(None)
        except StopIteration:
            seen["one_step"] = True
        else:
            coro.close()
            seen["one_step"] = False
        await ws.receive()
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    async with TestServer(app) as server:
        async with aiohttp.ClientSession() as http, http.ws_connect(server.make_url("/")) as ws:
            msg = await ws.receive(timeout=5)
            await ws.close()
    assert msg.type == WSMsgType.TEXT and msg.data == "direct"
    assert seen["one_step"] is True
    # ``closed`` turns true before the close frame is written: broadcasts write no data after it
    close = inspect.getsource(web.WebSocketResponse.close)
    assert close.index("self._set_closed()") < close.index("await self._writer.close(")
    assert isinstance(web.WebSocketResponse.closed, property)
    assert isinstance(seen["transport"], asyncio.Transport)
    assert seen["messages"] is collections.deque


def test_aiohttp_shape_for_the_websocket_take_over() -> None:
    """engine/wsconn.py: aiohttp's protocol forgets a connection whose transport it no longer
    has without closing anything, the handshake's trailing bytes are where it looks, and
    aiohttp's websocket parser hands each message to a queue subclass."""
    from aiohttp.web_protocol import RequestHandler

    assert "_message_tail" in RequestHandler.__slots__
    force_close = inspect.getsource(RequestHandler.force_close)
    assert "if self.transport is not None:" in force_close
    lost = inspect.getsource(RequestHandler.connection_lost)
    assert "self.force_close()" in lost and "self._manager.connection_lost(self, exc)" in lost
    # its handshake check: (response headers, protocol, compress, notakeover), or 400
    assert _params(web.WebSocketResponse._handshake) == ["self", "request"]
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    checked = web.WebSocketResponse(compress=False)._handshake(
        make_mocked_request("GET", "/", headers=headers)
    )
    assert dict(checked[0]) == {
        "Upgrade": "websocket",
        "Connection": "upgrade",
        "Sec-WebSocket-Accept": "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",  # RFC 6455's example
    }
    with pytest.raises(web.HTTPBadRequest):
        web.WebSocketResponse()._handshake(
            make_mocked_request("GET", "/", headers={**headers, "Sec-WebSocket-Version": "12"})
        )
    for name in ("set_protocol", "get_protocol", "is_reading", "resume_reading"):
        assert callable(getattr(asyncio.Transport, name)), name


async def test_aiohttp_websocket_parser_feeds_the_connection() -> None:
    """aiohttp's parser (C or Python) takes the connection's queue subclass and calls its
    ``feed_data`` override for each complete message, across reads."""

    class Peer:
        def __init__(self) -> None:
            self.got: list[Any] = []

        def received(self, data: str | bytes) -> None:
            self.got.append(data)

        def ended(self) -> None:
            pass

    class Transport(asyncio.Transport):
        def __init__(self) -> None:
            super().__init__()
            self.out = b""

        def write(self, data: Any) -> None:
            self.out += bytes(data)

        def is_closing(self) -> bool:
            return False

        def close(self) -> None:
            pass

    def masked(opcode: int, payload: bytes) -> bytes:
        key = b"\x01\x02\x03\x04"
        return (
            bytes((0x80 | opcode, 0x80 | len(payload)))
            + key
            + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        )

    peer, transport = Peer(), Transport()
    conn = WebSocketConnection(peer, transport, 100)
    data = masked(0x1, "4h\u00e9".encode()) + masked(0x2, b"\x00bin") + masked(0x9, b"p")
    conn.data_received(data[:3])
    conn.data_received(data[3:])
    assert peer.got == ["4h\u00e9", b"\x00bin"]
    assert transport.out == b"\x8a\x01p"  # the pong


# -- asyncio --------------------------------------------------------------------------------


async def test_asyncio_queue_shape() -> None:
    """``get``/``put`` end in ``get_nowait``/``put_nowait`` (the bounded queue's accounting)
    and the fast queue's deques are where it swaps them for lists."""
    plain = asyncio.Queue[Any]()
    for name in ("_getters", "_putters", "_queue"):
        assert type(getattr(plain, name)) is collections.deque, name
    assert type(plain._finished._waiters) is collections.deque  # type: ignore[attr-defined]
    queue = BoundedSendQueue(10_000, lambda q: None)
    await queue.put(eio_packet.Packet(eio_packet.MESSAGE, "a" * 100))
    assert queue.bytes > 100
    assert (await queue.get()).data == "a" * 100
    assert queue.bytes == 0


# -- the whole engine, both drivers -----------------------------------------------------------


@pytest.mark.parametrize("driver", ["fast", "stock"])
async def test_websocket_sessions_are_tracked_with_either_driver(clients, driver: str) -> None:
    async with running_server(websocket_driver=driver) as srv:
        assert srv.app[keys.WEBSOCKET_DRIVER] == driver
        eio = srv.app[keys.SIO].eio
        fast = driver == "fast"
        assert (eio._async["websocket"] is eio_aiohttp.WebSocket) is not fast
        # nothing is patched process-wide: other Engine.IO servers stay stock
        assert AsyncSocket.schedule_ping.__module__ == "engineio.async_socket"
        assert engineio.AsyncServer(async_mode="aiohttp")._async["websocket"] is (
            eio_aiohttp.WebSocket
        )
        for transports in (["websocket"], ["polling", "websocket"]):
            client = await connect(srv.url, "alice", transports=transports)
            clients.append(client)
            eio_sid = client.sio.eio.sid
            for _ in range(50):  # the polling client upgrades in the background
                if eio_sid in srv.app[keys.GUARD].websockets:
                    break
                await asyncio.sleep(0.05)
            assert eio_sid in srv.app[keys.GUARD].websockets
            queue = eio.sockets[eio_sid].queue
            assert isinstance(queue, WriteThroughQueue) is fast
            protocol = srv.app[keys.GUARD].websockets[eio_sid].get_protocol()
            assert isinstance(protocol, WebSocketConnection) is fast, transports
            assert (queue.websocket is not None) if fast else isinstance(queue, BoundedSendQueue)
            assert (await client.call("join:room", "shape"))["ok"]
            await client.close()
            for _ in range(50):
                if eio_sid not in srv.app[keys.GUARD].websockets:
                    break
                await asyncio.sleep(0.05)
            assert eio_sid not in srv.app[keys.GUARD].websockets


PLACEHOLDER = '{"_placeholder":true,"num":0}'
BAD_BINARY_PACKETS = {
    "11 attachments declared": (f'4511-["presence:get",{PLACEHOLDER}]',),
    # 3 x 8000 bytes: each frame fits max_http_buffer_size (18432 here), the packet does not
    "attachments past the size limit": (
        '453-["presence:get",[' + ",".join([PLACEHOLDER] * 3) + "]]",
        *(b"x" * 8000 for _ in range(3)),
    ),
}


@pytest.mark.parametrize("driver", ["fast", "stock"])
@pytest.mark.parametrize("attack", sorted(BAD_BINARY_PACKETS))
async def test_unbounded_binary_attachments_disconnect_the_sender(attack: str, driver: str) -> None:
    """The engine's packet class bounds attachments (python-socketio would buffer them
    without limit); the guard disconnects the sender, counted as a protocol error."""
    async with running_server(websocket_driver=driver, max_message_bytes=1024) as srv:
        registry = srv.app[keys.METRICS].registry
        labels = {"reason": "protocol_error"}
        async with aiohttp.ClientSession() as http:
            raw = await open_raw(srv.url, "websocket", http)
            await raw.connect({"token": token("mallory")})
            before = registry.get_sample_value("socketio_clients_evicted_total", labels)
            await raw.send(*BAD_BINARY_PACKETS[attack])
            await raw.drain(3)
            assert raw.closed, "the sender is still connected"
            after = registry.get_sample_value("socketio_clients_evicted_total", labels)
            assert after == (before or 0) + 1
            await raw.close()
            honest = await open_raw(srv.url, "websocket", http)  # the server still serves
            await honest.connect({"token": token("alice")})
            assert (await honest.call("join:room", "r"))["ok"]
            await honest.close()


async def test_unknown_library_version_falls_back_to_stock(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, clients
) -> None:
    monkeypatch.setitem(versions.WRITTEN_FOR, "python-engineio", "0.0.0")
    with caplog.at_level(logging.WARNING, logger="service.engine"):
        async with running_server(websocket_driver="fast") as srv:
            assert srv.app[keys.WEBSOCKET_DRIVER] == "stock"
            eio = srv.app[keys.SIO].eio
            assert eio._async["websocket"] is eio_aiohttp.WebSocket
            assert eio.queue_class is BoundedSendQueue and not eio.timer_pings
            alice = await connect(srv.url, "alice")
            bob = await connect(srv.url, "bob")
            clients.extend([alice, bob])
            for client in (alice, bob):
                assert (await client.call("join:room", "r"))["ok"]
            assert (await alice.call("message:send", {"roomId": "r", "message": "hi"}))["ok"]
            got = await bob.wait_for("message:received")
            assert got["message"] == "hi"
            assert type(eio.sockets[bob.sio.eio.sid].queue) is BoundedSendQueue
    warnings = [r for r in caplog.records if "fast path was written for" in r.getMessage()]
    assert len(warnings) == 1
    assert f"python-engineio {versions.installed('python-engineio')}" in warnings[0].getMessage()
