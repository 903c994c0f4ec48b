"""One load process: its share of receivers (and maybe the senders), driven phase by phase.

The coordinator calls the same async methods on a :class:`Worker` in its own event loop
(one process) or, through :class:`RemoteWorker`, on workers in child processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .rawws import RawConnection
from .stats import Reservoir, cpu_seconds
from .wire import Connection, HandshakeError, Sink, message_text

NOTIFY_SEP = b"\n"


@dataclass
class Plan:
    """What one worker does; built by the coordinator, picklable."""

    index: int
    receivers: list[tuple[str, int, str, str]]
    """(url, room or -1, token, transport) per receiver."""
    senders: list[tuple[int, str, int, str]] = field(default_factory=list)
    """(sender id, url, room, token) per sender (only worker 0 has senders)."""
    expected: dict[int, int] = field(default_factory=dict)
    """Room -> this worker's receivers in it."""
    procs_in_room: dict[int, int] = field(default_factory=dict)
    """Room -> how many workers have receivers in it (for the senders' owner)."""
    room_prefix: str = "bench"
    message_bytes: int = 90
    in_flight: int = 8
    rate: float = 0.0
    sample_every: int = 10
    connect_concurrency: int = 64
    path: str = "/socket.io/"
    message_timeout: float = 5.0
    acks: bool = True
    reservoir: int = 200_000
    lean: bool = True
    """Websockets on the raw-frame client (:mod:`.rawws`) instead of aiohttp's."""


class SenderLoop:
    """A sender: closed loop (K messages in flight) or open loop (fixed rate)."""

    def __init__(self, worker: Worker, conn: Connection, sender_id: int, room: int) -> None:
        self.worker = worker
        self.conn = conn
        self.id = sender_id
        self.room = room
        self.room_name = json.dumps(f"{worker.plan.room_prefix}-{room}")
        self.parts = worker.plan.procs_in_room.get(room, 0)
        self.pending: dict[bytes, list[int]] = {}
        self.seq = 0
        self.sent = 0
        self.timeouts = 0
        self.wake = asyncio.Event()
        conn.on_ack = self.on_ack

    def on_ack(self, data: bytes) -> None:
        if b'"ok":false' in data:
            code = "ack_error"
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                code = json.loads(data[data.index(b"[") :])[0]["error"]["code"]
            self.worker.errors[f"send_{code}"] += 1

    async def send_one(self) -> None:
        plan = self.worker.plan
        self.seq += 1
        text, sent_ns = message_text(self.room, self.id, self.seq, plan.message_bytes)
        if self.parts:
            key = text[2 : text.index("~", 2)].encode()
            self.pending[key] = [self.parts, sent_ns]
        ack = ""
        if plan.acks:
            ack = str(self.conn.next_ack)
            self.conn.next_ack += 1
        packet = f'2{ack}["message:send",{{"roomId":{self.room_name},"message":"{text}"}}]'
        await self.conn.send(packet)
        self.sent += 1

    def part_done(self, key: bytes) -> None:
        entry = self.pending.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] <= 0:
            del self.pending[key]
            if self.worker.recording:
                self.worker.complete_ms.add((time.time_ns() - entry[1]) / 1e6)
            self.wake.set()

    def expire(self, now_ns: int) -> None:
        limit = int(self.worker.plan.message_timeout * 1e9)
        old = [k for k, (_, sent) in self.pending.items() if now_ns - sent > limit]
        for key in old:
            del self.pending[key]
            self.timeouts += 1
        if old:
            self.wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        plan = self.worker.plan
        loop = asyncio.get_running_loop()
        try:
            if plan.rate > 0:
                start = loop.time()
                while not stop.is_set():
                    due = int((loop.time() - start) * plan.rate) + 1
                    while self.sent < due:
                        await self.send_one()
                    await asyncio.sleep(max(0.0, start + self.sent / plan.rate - loop.time()))
                return
            window = max(1, plan.in_flight)
            while not stop.is_set():
                while len(self.pending) < window and not stop.is_set():
                    await self.send_one()
                    if not self.parts:
                        await asyncio.sleep(0)
                if self.parts:
                    self.wake.clear()
                    await self.wake.wait()
        except (ConnectionError, aiohttp.ClientError, HandshakeError) as exc:
            self.worker.errors[f"send_failed_{type(exc).__name__}"] += 1


class Worker:
    """The receivers and senders of one process, and their counters."""

    def __init__(self, plan: Plan, notify: list[socket.socket] | None = None) -> None:
        self.plan = plan
        self.notify = notify or []
        self.errors: Counter[str] = Counter()
        self.latency = Reservoir(plan.reservoir)
        self.complete_ms = Reservoir(plan.reservoir)
        self.sink = Sink(dict(plan.expected), self.latency.add)
        self.receivers: list[Connection] = []
        self.senders: list[SenderLoop] = []
        self.session: aiohttp.ClientSession | None = None
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.recording = False
        self.disconnects: Counter[str] = Counter()
        self.max_lag = 0.0
        self._lag_task: asyncio.Task[None] | None = None
        self._outbox: list[bytes] = []
        self._inbox = b""
        if plan.senders:
            self.sink.on_complete = self._local_complete
        elif self.notify:
            self.sink.on_complete = self._remote_complete

    # -- completions ------------------------------------------------------------------------

    def _local_complete(self, key: bytes) -> None:
        sender = self._sender_of(key)
        if sender is not None:
            sender.part_done(key)

    def _sender_of(self, key: bytes) -> SenderLoop | None:
        try:
            sender_id = int(key.split(b":", 2)[1])
        except (ValueError, IndexError):
            return None
        for sender in self.senders:
            if sender.id == sender_id:
                return sender
        return None

    def _remote_complete(self, key: bytes) -> None:
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(key)

    def _flush(self) -> None:
        data = NOTIFY_SEP.join(self._outbox) + NOTIFY_SEP
        self._outbox.clear()
        with contextlib.suppress(OSError):
            self.notify[0].sendall(data)

    def _on_notice(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            return
        lines = (self._inbox + data).split(NOTIFY_SEP)
        self._inbox = lines.pop()
        for key in lines:
            self._local_complete(key)

    # -- phases -----------------------------------------------------------------------------

    async def connect(self) -> dict[str, Any]:
        """Open every receiver (timed: the connect rate) and then the senders."""
        loop = asyncio.get_running_loop()
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
        )
        self._lag_task = asyncio.create_task(self._watch_lag())
        if self.plan.senders:
            for sock in self.notify:
                sock.setblocking(False)
                loop.add_reader(sock.fileno(), self._on_notice, sock)
        semaphore = asyncio.Semaphore(max(1, self.plan.connect_concurrency))
        handshakes = Reservoir(self.plan.reservoir)
        cpu0, started = cpu_seconds(), time.perf_counter()

        async def open_one(spec: tuple[str, int, str, str], index: int) -> None:
            url, _room, token, transport = spec
            assert self.session is not None
            conn = self._connection(url, token, transport)
            async with semaphore:
                t0 = time.perf_counter()
                try:
                    await conn.connect()
                except (HandshakeError, TimeoutError, aiohttp.ClientError, OSError) as exc:
                    code = exc.code if isinstance(exc, HandshakeError) else type(exc).__name__
                    self.errors[f"connect_{code}"] += 1
                    return
                handshakes.add((time.perf_counter() - t0) * 1000)
            timed = self.plan.sample_every > 0 and index % self.plan.sample_every == 0
            frame = self.sink.frame
            conn.on_event = (lambda data: frame(data, True)) if timed else self._untimed(frame)
            conn.on_close = self._disconnected
            conn.room = _room
            conn.start()
            self.receivers.append(conn)

        await asyncio.gather(*(open_one(s, i) for i, s in enumerate(self.plan.receivers)))
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds() - cpu0
        for sender_id, url, room, token in self.plan.senders:
            conn = self._connection(url, token, "websocket")
            try:
                await conn.connect()
            except (HandshakeError, TimeoutError, aiohttp.ClientError, OSError) as exc:
                code = exc.code if isinstance(exc, HandshakeError) else type(exc).__name__
                self.errors[f"sender_connect_{code}"] += 1
                continue
            sender = SenderLoop(self, conn, sender_id, room)
            conn.on_close = self._disconnected
            conn.start()
            self.senders.append(sender)
        return {
            "connected": len(self.receivers),
            "attempted": len(self.plan.receivers),
            "elapsed": elapsed,
            "cpu": cpu,
            "handshake_ms": handshakes.values,
        }

    def _connection(self, url: str, token: str, transport: str) -> Connection:
        if transport == "websocket" and self.plan.lean:
            return RawConnection(url, token, self.plan.path)
        assert self.session is not None
        return Connection(self.session, url, token, transport, self.plan.path)

    @staticmethod
    def _untimed(frame: Any) -> Any:
        def on_event(data: bytes) -> None:
            frame(data, False)

        return on_event

    def _disconnected(self, reason: str) -> None:
        self.disconnects[reason] += 1

    async def join(self) -> dict[str, Any]:
        """Join every receiver and sender to its room (acked joins, bounded concurrency)."""
        semaphore = asyncio.Semaphore(max(1, self.plan.connect_concurrency))
        members: Counter[int] = Counter()

        async def join_one(conn: Connection, room: int, receiver: bool) -> None:
            async with semaphore:
                try:
                    ack = await conn.call("join:room", f"{self.plan.room_prefix}-{room}")
                except (TimeoutError, ConnectionError, aiohttp.ClientError, HandshakeError):
                    self.errors["join_timeout"] += 1
                    return
            if isinstance(ack, dict) and ack.get("ok") is False:
                self.errors[f"join_{ack.get('error', {}).get('code', 'refused')}"] += 1
                return
            if receiver:
                members[room] += 1

        todo = [(c, c.room, True) for c in self.receivers if c.room >= 0]
        todo += [(s.conn, s.room, False) for s in self.senders]
        await asyncio.gather(*(join_one(*item) for item in todo))
        self.sink.expected = dict(members)
        return {"members": dict(members), "attempted": len(todo) - len(self.senders)}

    async def set_parts(self, procs_in_room: dict[int, int]) -> None:
        """Tell the senders how many processes must confirm each message."""
        self.plan.procs_in_room = procs_in_room
        for sender in self.senders:
            sender.parts = procs_in_room.get(sender.room, 0)

    async def settle(self, quiet: float = 0.5, limit: float = 30.0) -> float:
        """Wait until no frame arrived for ``quiet`` seconds (join announcements done)."""
        started = time.perf_counter()
        last = -1
        while time.perf_counter() - started < limit:
            now = self.sink.delivered + self.sink.other
            if now == last:
                break
            last = now
            await asyncio.sleep(quiet)
        return time.perf_counter() - started

    async def start_sending(self) -> None:
        self.stop.clear()
        self.tasks = [asyncio.create_task(s.run(self.stop)) for s in self.senders]
        if self.senders:
            self.tasks.append(asyncio.create_task(self._expire()))

    async def _expire(self) -> None:
        while not self.stop.is_set() or any(s.pending for s in self.senders):
            await asyncio.sleep(0.25)
            now = time.time_ns()
            for sender in self.senders:
                sender.expire(now)

    async def _watch_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + 0.1
            await asyncio.sleep(0.1)
            lag = loop.time() - expected
            if self.recording and lag > self.max_lag:
                self.max_lag = lag

    async def tick(self) -> dict[str, Any]:
        """Counters for the progress line and the window edges."""
        return {
            "delivered": self.sink.delivered,
            "other": self.sink.other,
            "sent": sum(s.sent for s in self.senders),
            "in_flight": sum(len(s.pending) for s in self.senders),
            "cpu": cpu_seconds(),
            "time": time.perf_counter(),
            "errors": sum(self.errors.values()) + sum(self.sink.errors.values()),
            "disconnects": sum(self.disconnects.values()),
            "connected": len(self.receivers),
        }

    async def record(self, on: bool) -> dict[str, Any]:
        """Open or close the measurement window; returns the counters at the edge."""
        if on:
            self.latency.clear()
            self.complete_ms.clear()
            self.max_lag = 0.0
        self.recording = on
        self.sink.recording = on
        return await self.tick()

    async def stop_sending(self, drain: float = 5.0) -> None:
        """Stop the senders, then wait (at most ``drain`` s) for the messages in flight."""
        self.stop.set()
        for sender in self.senders:
            sender.wake.set()
        deadline = time.perf_counter() + drain
        while any(s.pending for s in self.senders) and time.perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(BaseException):
                await task

    async def results(self) -> dict[str, Any]:
        """Everything the report needs from this process."""
        sent: dict[int, int] = Counter()
        for sender in self.senders:
            sent[sender.room] += sender.sent
        return {
            "by_room": self.sink.by_room(),
            "expected": self.sink.expected,
            "sent_by_room": dict(sent),
            "latency_ms": self.latency.values,
            "latency_max": self.latency.maximum,
            "latency_seen": self.latency.seen,
            "complete_ms": self.complete_ms.values,
            "complete_max": self.complete_ms.maximum,
            "errors": dict(self.errors + self.sink.errors),
            "timeouts": sum(s.timeouts for s in self.senders),
            "disconnects": dict(self.disconnects),
            "max_lag_ms": self.max_lag * 1000,
            "pid": os.getpid(),
        }

    async def close(self) -> None:
        conns = [*self.receivers, *(s.conn for s in self.senders)]
        for conn in conns:
            conn.closed = True
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
        if self._lag_task is not None:
            self._lag_task.cancel()
        if self.session is not None:
            await self.session.close()


# -- processes ------------------------------------------------------------------------------


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _process_main(conn: Any, plan: Plan, notify: list[socket.socket], fast_loop: bool) -> None:
    """A child process: run commands from the coordinator until ``close``."""

    async def serve() -> None:
        worker = Worker(plan, notify)
        loop = asyncio.get_running_loop()
        while True:
            ready = loop.create_future()
            loop.add_reader(conn.fileno(), lambda f=ready: f.done() or f.set_result(None))
            await ready
            loop.remove_reader(conn.fileno())
            name, args = conn.recv()
            try:
                value = await getattr(worker, name)(*args)
                conn.send(("ok", value))
            except Exception as exc:
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
            if name == "close":
                return

    with asyncio.Runner(loop_factory=_new_loop if fast_loop else None) as runner:
        runner.run(serve())


class LocalWorker:
    """A worker in the coordinator's own event loop."""

    def __init__(self, plan: Plan) -> None:
        self.worker = Worker(plan)

    async def call(self, name: str, *args: Any) -> Any:
        return await getattr(self.worker, name)(*args)

    def join_process(self) -> None:
        """Nothing to wait for."""


class RemoteWorker:
    """A worker in a child process, called through a pipe."""

    def __init__(self, plan: Plan, notify: list[socket.socket], fast_loop: bool) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_process_main, args=(child, plan, notify, fast_loop), daemon=True
        )
        self.proc.start()
        child.close()
        self.lock = asyncio.Lock()

    async def call(self, name: str, *args: Any) -> Any:
        async with self.lock:
            loop = asyncio.get_running_loop()
            self.conn.send((name, args))
            ready = loop.create_future()
            loop.add_reader(self.conn.fileno(), lambda: ready.done() or ready.set_result(None))
            try:
                await ready
            finally:
                loop.remove_reader(self.conn.fileno())
            status, value = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"load worker failed in {name}: {value}")
        return value

    def join_process(self) -> None:
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
