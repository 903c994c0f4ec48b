"""Engine.IO v4 / Socket.IO v5 spoken directly over aiohttp: cheap frames, no client library.

Every frame a receiver gets is counted; a bench message is recognised by a byte search for
its marker (``"~b<room>:<sender>:<seq>:<sent_ns>~``) without decoding JSON. Only receivers
flagged ``timed`` parse their frames fully and record latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import WSMsgType

MARK = b'"~b'
RECORD_SEP = b"\x1e"
CLOSED_TYPES = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})


class HandshakeError(Exception):
    """The server refused or broke the Engine.IO/Socket.IO handshake; ``code`` says why."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code


def endpoint(url: str, transport: str, path: str = "/socket.io/") -> str:
    """The Engine.IO URL of ``transport`` for a base ``http(s)://host:port`` URL."""
    base = url.rstrip("/")
    if transport == "websocket":
        base = "ws" + base[4:] if base.startswith("http") else base
    return f"{base}{path}?EIO=4&transport={transport}"


def message_text(room: int, sender: int, seq: int, size: int) -> tuple[str, int]:
    """A bench message of about ``size`` bytes carrying its identity and send time (ns)."""
    sent = time.time_ns()
    head = f"~b{room}:{sender}:{seq}:{sent}~"
    return head + "x" * max(0, size - len(head)), sent


def refusal_code(frame: bytes) -> str:
    """The ``data.code`` of a Socket.IO CONNECT_ERROR frame (``44{...}``), or ``refused``."""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        body = json.loads(frame[2:])
        data = body.get("data") if isinstance(body, dict) else None
        if isinstance(data, dict) and isinstance(data.get("code"), str):
            return data["code"]
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            return body["message"][:40]
    return "refused"


class Sink:
    """One process's receive-side bookkeeping, shared by all its receivers.

    ``remaining[key]`` counts down from the number of this process's receivers in the
    message's room; reaching zero means every local receiver has it (``on_complete``).
    """

    def __init__(self, expected: dict[int, int], record: Callable[[float], None]) -> None:
        self.expected = expected
        self.remaining: dict[bytes, int] = {}
        self.delivered = 0
        self.other = 0
        self.recording = False
        self.record = record
        self.errors: Counter[str] = Counter()
        self.on_complete: Callable[[bytes], None] | None = None

    def frame(self, data: bytes, timed: bool) -> None:
        """Account one Socket.IO EVENT frame (``42...``) received by a receiver."""
        i = data.find(MARK)
        if i < 0:
            self.other += 1
            return
        j = data.find(b"~", i + 3)
        key = data[i + 3 : j]
        self.delivered += 1
        left = self.remaining.get(key)
        if left is None:
            left = self.expected.get(int(key[: key.index(b":")]), 0)
        left -= 1
        self.remaining[key] = left
        if left == 0 and self.on_complete is not None:
            self.on_complete(key)
        if timed:
            self.timed_frame(data, key)

    def timed_frame(self, data: bytes, key: bytes) -> None:
        """Full parse and latency of a sampled frame."""
        now = time.time_ns()
        try:
            event, payload = json.loads(data[2:])[:2]  # then the recovery offset
            ok = event == "message:received" and isinstance(payload.get("message"), str)
        except (ValueError, TypeError, AttributeError):
            ok = False
        if not ok:
            self.errors["malformed_frame"] += 1
            return
        if self.recording:
            self.record((now - int(key[key.rindex(b":") + 1 :])) / 1e6)

    def by_room(self) -> dict[int, tuple[int, int]]:
        """``room -> (deliveries received, duplicates)`` for every message seen."""
        out: dict[int, list[int]] = {}
        for key, left in self.remaining.items():
            room = int(key[: key.index(b":")])
            expected = self.expected.get(room, 0)
            slot = out.setdefault(room, [0, 0])
            slot[0] += expected - left
            slot[1] += max(0, -left)
        return {room: (v[0], v[1]) for room, v in out.items()}


class Connection:
    """One Socket.IO client over websocket or long-polling, with a cheap read loop."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        token: str,
        transport: str = "websocket",
        path: str = "/socket.io/",
    ) -> None:
        self.session = session
        self.url = url
        self.token = token
        self.transport = transport
        self.path = path
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.sid = ""
        self.task: asyncio.Task[None] | None = None
        self.acks: dict[int, asyncio.Future[bytes]] = {}
        self.next_ack = 1
        self.closed = False
        self.room = -1
        self.on_event: Callable[[bytes], None] = lambda data: None
        self.on_ack: Callable[[bytes], None] = lambda data: None
        self.on_close: Callable[[str], None] = lambda reason: None

    # -- handshake --------------------------------------------------------------------------

    async def connect(self, limit: float = 10.0) -> None:
        """Open the transport and the ``/`` namespace with ``auth: {token}``."""
        auth = "40" + json.dumps({"token": self.token})
        async with asyncio.timeout(limit):
            if self.transport == "websocket":
                await self._connect_ws(auth)
            else:
                await self._connect_polling(auth)

    async def _connect_ws(self, auth: str) -> None:
        try:
            ws = await self.session.ws_connect(
                endpoint(self.url, "websocket", self.path),
                decode_text=False,
                autoping=True,
                max_msg_size=0,
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise HandshakeError(f"http_{exc.status}") from None
        except aiohttp.ClientError as exc:
            raise HandshakeError("connect_failed", type(exc).__name__) from None
        self.ws = ws
        opened = await ws.receive()
        if opened.type is not WSMsgType.TEXT or not opened.data.startswith(b"0"):
            await ws.close()
            raise HandshakeError("bad_open", repr(opened.data)[:60])
        await ws.send_str(auth)
        while True:
            reply = await ws.receive()
            if reply.type is not WSMsgType.TEXT:
                raise HandshakeError("closed_during_handshake")
            data = reply.data
            if data.startswith(b"40"):
                self.sid = json.loads(data[2:]).get("sid", "")
                return
            if data.startswith(b"44"):
                await ws.close()
                raise HandshakeError(refusal_code(data))
            if data == b"2":
                await ws.send_str("3")

    async def _connect_polling(self, auth: str) -> None:
        base = endpoint(self.url, "polling", self.path)
        try:
            async with self.session.get(base) as resp:
                if resp.status != 200:
                    raise HandshakeError(f"http_{resp.status}")
                body = await resp.read()
        except aiohttp.ClientError as exc:
            raise HandshakeError("connect_failed", type(exc).__name__) from None
        if not body.startswith(b"0"):
            raise HandshakeError("bad_open", repr(body)[:60])
        self.eio_sid = json.loads(body[1:])["sid"]
        self.poll_url = f"{base}&sid={self.eio_sid}"
        await self._post(auth)
        while True:
            for data in await self._poll():
                if data.startswith(b"40"):
                    self.sid = json.loads(data[2:]).get("sid", "")
                    return
                if data.startswith(b"44"):
                    raise HandshakeError(refusal_code(data))
                if data == b"2":
                    await self._post("3")

    async def _post(self, text: str) -> None:
        async with self.session.post(self.poll_url, data=text.encode()) as resp:
            await resp.read()
            if resp.status != 200:
                raise HandshakeError(f"http_{resp.status}")

    async def _poll(self) -> list[bytes]:
        async with self.session.get(self.poll_url) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise HandshakeError(f"http_{resp.status}")
        return body.split(RECORD_SEP)

    # -- sending ----------------------------------------------------------------------------

    async def send(self, text: str) -> None:
        """Send one Engine.IO MESSAGE frame (``text`` is the Socket.IO packet)."""
        if self.ws is not None:
            await self.ws.send_str("4" + text)
        else:
            await self._post("4" + text)

    async def call(self, event: str, data: Any, limit: float = 10.0) -> Any:
        """Emit ``event`` with an ack id and wait for the ack's first argument."""
        ack_id = self.next_ack
        self.next_ack += 1
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.acks[ack_id] = future
        await self.send(f"2{ack_id}" + json.dumps([event, data]))
        try:
            async with asyncio.timeout(limit):
                raw = await future
        finally:
            self.acks.pop(ack_id, None)
        args = json.loads(raw[raw.index(b"[") :])
        return args[0] if args else None

    # -- reading ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the read loop (pings, acks, events)."""
        self.task = asyncio.create_task(self._read_ws() if self.ws else self._read_polling())

    def _dispatch(self, data: bytes) -> None:
        """Route one Engine.IO MESSAGE frame (``4`` + a Socket.IO packet)."""
        if data.startswith(b"42"):
            self.on_event(data)
        elif data.startswith(b"43"):
            end = data.find(b"[")
            future = self.acks.get(int(data[2:end])) if end > 2 else None
            if future is not None and not future.done():
                future.set_result(data)
            else:
                self.on_ack(data)
        elif data.startswith(b"41"):
            self._closed("server_disconnect")

    async def _read_ws(self) -> None:
        ws = self.ws
        assert ws is not None
        receive = ws.receive
        dispatch = self._dispatch
        on_event = self.on_event
        text = WSMsgType.TEXT
        reason = "transport_close"
        try:
            while True:
                msg = await receive()
                if msg.type is text:
                    data = msg.data
                    if data.startswith(b"42"):  # the hot path: an event
                        on_event(data)
                    elif data == b"2":
                        await ws.send_str("3")
                    else:
                        dispatch(data)
                elif msg.type in CLOSED_TYPES:
                    break
        except asyncio.CancelledError:
            reason = ""
            raise
        except Exception:
            reason = "transport_error"
        finally:
            if reason:
                self._closed(reason)

    async def _read_polling(self) -> None:
        reason = "transport_close"
        try:
            while not self.closed:
                for data in await self._poll():
                    if data == b"2":
                        await self._post("3")
                    elif data.startswith(b"4"):
                        self._dispatch(data)
                    elif data.startswith(b"1"):
                        return
        except asyncio.CancelledError:
            reason = ""
            raise
        except Exception:
            reason = "transport_error"
        finally:
            if reason:
                self._closed(reason)

    def _closed(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.on_close(reason)

    async def close(self) -> None:
        """Leave quietly: the read loop's end is not reported as a disconnect."""
        self.closed = True
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        with contextlib.suppress(Exception):
            if self.ws is not None:
                await self.ws.close()
            elif getattr(self, "poll_url", None):
                await self._post("1")
