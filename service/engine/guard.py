"""Protections against hostile or broken clients, installed around python-socketio.

* **Handshake rate limit per client address** (aiohttp middleware): new Engine.IO sessions
  (requests to the Socket.IO path without a ``sid``) cost one token of a per-address bucket
  (``HANDSHAKE_RATE_PER_ADDRESS`` per second, burst ``HANDSHAKE_BURST_PER_ADDRESS``); an
  empty bucket gets HTTP 429 ``{"code": "rate_limited"}`` before any session is allocated.
  Behind a proxy in ``TRUSTED_PROXIES`` the client is the right-most untrusted
  ``X-Forwarded-For`` hop. IPv6 clients are keyed by their /64. A client that resolves to a
  loopback address (a process on the same host: tests, benchmarks) is not limited.
* **Engine.IO session cap**: sessions that never finish the Socket.IO handshake do not count
  toward ``MAX_CONNECTIONS``, so new Engine.IO handshakes get HTTP 503
  ``{"code": "overloaded"}`` above ``MAX_CONNECTIONS`` plus a small slack, and a session
  that has not connected to a namespace within ``CONNECT_TIMEOUT_SECONDS`` is closed
  (socket.io's ``connectTimeout``; python-socketio has none).
* **Bounded send buffering**: each Engine.IO socket's outgoing queue (python-engineio's
  ``create_queue`` hook) never blocks the sender and holds at most ``SEND_BUFFER_BYTES``;
  a client that lets it overflow is disconnected and its TCP connection aborted, so one
  slow consumer costs bounded memory and never delays a broadcast to the others.
* **Stalled websockets**: a websocket whose Engine.IO socket is closed (ping timeout,
  eviction) but whose writer is stuck on a peer that stopped reading is aborted: stock
  python-engineio waits for that writer forever.
* **Malformed Socket.IO packets**: the offending client is disconnected (as socket.io's
  reference server does on a parse error) and counted, instead of one ERROR traceback per
  frame in the logs; binary attachments (the protocol uses none) are bounded in number and
  bytes, since python-socketio buffers up to 10^10 declared attachments without limit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import socketio
from aiohttp import web
from engineio import packet as eio_packet
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..config import Settings

log = logging.getLogger(__name__)

MAX_ATTACHMENTS = 10
"""Binary attachments one Socket.IO packet may declare (the protocol itself sends none)."""
PACKET_OVERHEAD_BYTES = 64
"""What one queued packet costs at least, whatever its payload."""
SESSION_SLACK = 100
"""Engine.IO sessions allowed above MAX_CONNECTIONS: handshakes in flight, refusals."""
STALLED_GRACE_SECONDS = 2.0
"""How long a closed socket's TCP connection may linger before it is aborted."""
MAX_TRACKED_ADDRESSES = 100_000
"""Handshake buckets kept; beyond it the oldest are dropped (a full bucket costs nothing)."""


class GuardMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.handshakes_refused = Counter(
            "socketio_handshakes_refused_total",
            "Engine.IO handshakes refused before a session was allocated",
            ["reason"],
            registry=registry,
        )
        self.clients_evicted = Counter(
            "socketio_clients_evicted_total",
            "Connections closed by the server's protections",
            ["reason"],
            registry=registry,
        )
        self.engineio_sessions = Gauge(
            "socketio_engineio_sessions",
            "Engine.IO sessions held, connected to a namespace or not",
            registry=registry,
        )
        self.at_capacity = Gauge(
            "socketio_at_capacity",
            "1 while new handshakes are refused as overloaded (Engine.IO or Socket.IO)",
            registry=registry,
        )
        for reason in ("rate_limited", "overloaded"):
            self.handshakes_refused.labels(reason=reason)
        for reason in ("slow_consumer", "protocol_error", "connect_timeout", "stalled"):
            self.clients_evicted.labels(reason=reason)


# -- client addresses and the handshake limit ---------------------------------------------------


def parse_networks(values: tuple[str, ...]) -> tuple[ipaddress._BaseNetwork, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def _ip(value: str) -> ipaddress._BaseAddress | None:
    try:
        return ipaddress.ip_address(value.strip().strip("[]"))
    except ValueError:
        return None


def _trusted(address: ipaddress._BaseAddress | None, networks: tuple[Any, ...]) -> bool:
    return address is not None and any(address in net for net in networks)


def client_address(peer: str | None, forwarded: list[str], trusted: tuple[Any, ...]) -> str:
    """The address to rate-limit: the peer, or behind trusted proxies the right-most
    untrusted ``X-Forwarded-For`` hop. IPv6 addresses are reduced to their /64."""
    address = _ip(peer or "")
    if _trusted(address, trusted):
        hops = [hop.strip() for value in forwarded for hop in value.split(",") if hop.strip()]
        for hop in reversed(hops):
            hop_ip = _ip(hop)
            if hop_ip is None:
                break  # garbage: keep the last address a trusted proxy vouched for
            address = hop_ip
            if not _trusted(hop_ip, trusted):
                break
    if address is None:
        return peer or "unknown"
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def environ_client_address(environ: Mapping[str, Any], trusted: tuple[Any, ...]) -> str:
    """:func:`client_address` of the request behind a python-socketio ``environ``.

    python-engineio's aiohttp driver hard-codes ``REMOTE_ADDR`` to ``127.0.0.1``: the real
    peer is only on the aiohttp request it keeps in the environ.
    """
    request = environ.get("aiohttp.request")
    if request is None:
        return "unknown"
    return client_address(request.remote, request.headers.getall("X-Forwarded-For", []), trusted)


def _loopback(key: str) -> bool:
    """A client on this host (tests, benchmarks, a sidecar without X-Forwarded-For)."""
    address = _ip(key)
    return address is not None and address.is_loopback


class HandshakeLimiter:
    """Token buckets per address: ``burst`` capacity refilled at ``rate`` per second."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.capacity = float(max(1, burst))
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, now: float | None = None) -> float:
        """0 when allowed, else the seconds until the next handshake is."""
        now = time.monotonic() if now is None else now
        tokens, updated = self._buckets.pop(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - updated) * self.rate)
        if len(self._buckets) >= MAX_TRACKED_ADDRESSES:
            self._forget(now)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate
        self._buckets[key] = (tokens - 1, now)  # re-inserted last: dicts keep oldest first
        return 0.0

    def _forget(self, now: float) -> None:
        full_after = self.capacity / self.rate
        for key in [k for k, (_, t) in self._buckets.items() if now - t >= full_after]:
            del self._buckets[key]
        while len(self._buckets) >= MAX_TRACKED_ADDRESSES:
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)


def _refusal(status: int, code: str, message: str, retry_after: float = 0) -> web.Response:
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after else None
    return web.json_response({"code": code, "message": message}, status=status, headers=headers)


def names_live_session(sio: socketio.AsyncServer, query_string: str) -> bool:
    """True when the request belongs to an open Engine.IO session, read the way
    python-engineio reads it (``parse_qs`` drops empty values: ``sid=`` is a handshake).

    Anything else (no ``sid``, an empty one, one naming no live session) goes through the
    handshake limits: python-engineio either starts a session for it or refuses it.
    """
    values = urllib.parse.parse_qs(query_string).get("sid")
    if not values:
        return False
    sock = sio.eio.sockets.get(values[0])
    return sock is not None and not sock.closed


def forget_closed(sio: socketio.AsyncServer) -> None:
    """Drop closed sessions from python-engineio's table now: its service task reaches
    them only every ``ping_timeout`` seconds, and until then they count toward the
    session cap (so a flood's aftermath would refuse ordinary clients)."""
    sockets = sio.eio.sockets
    for eio_sid in [sid for sid, sock in sockets.items() if sock.closed]:
        sockets.pop(eio_sid, None)


def handshake_middleware(
    sio: socketio.AsyncServer, settings: Settings, metrics: GuardMetrics, path: str
) -> Any:
    limiter = (
        HandshakeLimiter(settings.handshake_rate_per_address, settings.handshake_burst_per_address)
        if settings.handshake_rate_per_address > 0
        else None
    )
    trusted = parse_networks(settings.trusted_proxies)
    session_cap = settings.max_connections + SESSION_SLACK  # Guard.session_cap

    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not request.path.startswith(path) or names_live_session(sio, request.query_string):
            return await handler(request)
        if request.method == "OPTIONS":
            return await handler(request)  # CORS preflight allocates nothing
        if len(sio.eio.sockets) >= session_cap:
            metrics.handshakes_refused.labels(reason="overloaded").inc()
            return _refusal(503, "overloaded", "server at capacity, retry later", 1)
        if limiter is not None:
            key = client_address(
                request.remote, request.headers.getall("X-Forwarded-For", []), trusted
            )
            wait = 0.0 if _loopback(key) else limiter.take(key)
            if wait > 0:
                metrics.handshakes_refused.labels(reason="rate_limited").inc()
                return _refusal(429, "rate_limited", "too many connection attempts", wait)
        return await handler(request)

    guard.limiter = limiter  # type: ignore[attr-defined]
    return guard


# -- bounded send queues ------------------------------------------------------------------------


def packet_cost(item: Any) -> int:
    data = getattr(item, "data", None)
    size = len(data) if isinstance(data, str | bytes | bytearray) else 0
    return size + PACKET_OVERHEAD_BYTES


class BoundedSendQueue(asyncio.Queue[Any]):
    """An Engine.IO socket's outgoing queue that never blocks the sender.

    ``put``/``put_nowait`` of a packet that would take the queued bytes past ``limit`` drop
    it and call ``on_overflow(self)`` once; ``None`` (python-engineio's "stop the writer")
    and the CLOSE packet always fit.
    """

    def __init__(self, limit: int, on_overflow: Callable[[BoundedSendQueue], None]) -> None:
        super().__init__()
        self.limit = limit
        self.bytes = 0
        self.overflowed = False
        self._on_overflow = on_overflow

    def put_nowait(self, item: Any) -> None:
        exempt = item is None or getattr(item, "packet_type", None) == eio_packet.CLOSE
        if not exempt:
            if self.overflowed:
                return
            if self.bytes + packet_cost(item) > self.limit:
                self.overflowed = True
                self._on_overflow(self)
                return
        super().put_nowait(item)

    def _put(self, item: Any) -> None:
        self.bytes += packet_cost(item) if item is not None else 0
        super()._put(item)  # type: ignore[misc]

    def _get(self) -> Any:
        item = super()._get()  # type: ignore[misc]
        if item is not None:
            self.bytes = max(0, self.bytes - packet_cost(item))
        return item

    def discard(self) -> None:
        """Drop every queued packet (the client is being thrown out)."""
        self._queue.clear()  # type: ignore[attr-defined]
        self.bytes = 0
        self._unfinished_tasks = 0  # type: ignore[attr-defined]
        self._finished.set()  # type: ignore[attr-defined]


# -- the guard itself ---------------------------------------------------------------------------


class Guard:
    def __init__(
        self, sio: socketio.AsyncServer, settings: Settings, registry: CollectorRegistry
    ) -> None:
        self.sio = sio
        self.settings = settings
        self.metrics = GuardMetrics(registry)
        self.websockets: dict[Any, Any] = {}  # Engine.IO socket -> its TCP transport
        self._closed_since: dict[Any, float] = {}
        self._first_seen: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        eio = sio.eio
        eio.create_queue = self._create_queue  # type: ignore[method-assign]
        eio._async = {**eio._async, "websocket": self._tracking_driver(eio._async["websocket"])}
        self._on_message = sio._handle_eio_message
        self._attachment_bytes: dict[str, int] = {}
        eio.on("message", self._guarded_message)
        self._on_disconnect = sio._handle_eio_disconnect
        self.on_session_closed: list[Callable[[str], None]] = []
        """Called with the id of every Engine.IO session that ended."""
        eio.on("disconnect", self._disconnected)
        self.metrics.engineio_sessions.set_function(lambda: len(eio.sockets))
        self.metrics.at_capacity.set_function(lambda: int(self.at_capacity()))

    # queues

    def _create_queue(self, *args: Any, **kwargs: Any) -> asyncio.Queue[Any]:
        return BoundedSendQueue(self.settings.send_buffer_bytes, self._overflow)

    def _overflow(self, queue: BoundedSendQueue) -> None:
        for sock in list(self.sio.eio.sockets.values()):
            if sock.queue is queue:
                self._spawn(self.evict(sock, "slow_consumer"))
                return
        queue.discard()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def evict(self, sock: Any, reason: str) -> None:
        """Disconnect an Engine.IO socket now: no close handshake, queued packets dropped."""
        if getattr(sock, "guard_evicted", False):
            return
        sock.guard_evicted = True
        self.metrics.clients_evicted.labels(reason=reason).inc()
        log.info("client evicted", extra={"event": "client_evicted", "reason": reason})
        queue = sock.queue
        if isinstance(queue, BoundedSendQueue):
            queue.discard()
        try:
            if not sock.closed:
                await sock.close(wait=False, abort=True, reason=self.sio.eio.reason.TRANSPORT_ERROR)
        except Exception:
            log.debug("evict: close failed", exc_info=True)
        queue.put_nowait(None)  # end a pending long-poll or the websocket writer
        tcp = self.websockets.get(sock)
        if tcp is not None and not tcp.is_closing():
            tcp.abort()

    # websockets

    def _tracking_driver(self, base: type[Any]) -> type[Any]:
        guard = self

        class TrackedWebSocket(base):  # type: ignore[misc, valid-type]
            async def __call__(self, environ: dict[str, Any]) -> Any:
                sock = getattr(self.handler, "__self__", None)
                request = environ.get("aiohttp.request")
                if sock is not None and request is not None and request.transport is not None:
                    guard.websockets[sock] = request.transport
                try:
                    return await super().__call__(environ)
                finally:
                    guard.websockets.pop(sock, None)
                    guard._closed_since.pop(sock, None)

        return TrackedWebSocket

    # incoming packets

    async def _guarded_message(self, eio_sid: str, data: Any) -> None:
        sio = self.sio
        if eio_sid in sio._binary_packet:
            size = self._attachment_bytes.get(eio_sid, 0) + len(data or b"")
            self._attachment_bytes[eio_sid] = size
            if size > sio.eio.max_http_buffer_size:
                await self._protocol_error(eio_sid)
                return
        else:
            self._attachment_bytes.pop(eio_sid, None)
            if isinstance(data, str) and data[:1] in ("5", "6"):
                head = data[1:].split("-", 1)[0]
                if head.isdigit() and int(head) > MAX_ATTACHMENTS:
                    await self._protocol_error(eio_sid)
                    return
        try:
            await self._on_message(eio_sid, data)
        except Exception:
            await self._protocol_error(eio_sid)
        else:
            if eio_sid not in sio._binary_packet:
                self._attachment_bytes.pop(eio_sid, None)

    async def _protocol_error(self, eio_sid: str) -> None:
        self.sio._binary_packet.pop(eio_sid, None)
        self._attachment_bytes.pop(eio_sid, None)
        sock = self.sio.eio.sockets.get(eio_sid)
        if sock is not None:
            await self.evict(sock, "protocol_error")

    # periodic checks

    def _namespace_connected(self, eio_sid: str) -> bool:
        manager = self.sio.manager
        return any(manager.sid_from_eio_sid(eio_sid, ns) for ns in list(manager.rooms))

    async def sweep(self) -> None:
        now = time.monotonic()
        eio = self.sio.eio
        sockets = eio.sockets
        timeout = self.settings.connect_timeout_seconds
        self.forget_closed()
        for eio_sid in [s for s in self._first_seen if s not in sockets]:
            del self._first_seen[eio_sid]
        for eio_sid, sock in list(sockets.items()):
            if eio_sid in self._first_seen:
                if self._first_seen[eio_sid] < 0:
                    if not self._namespace_connected(eio_sid):
                        # it left every namespace (a `41`) and kept its transport open:
                        # bounded from now on like a session that never connected
                        self._first_seen[eio_sid] = now
                    continue
                if self._namespace_connected(eio_sid):
                    self._first_seen[eio_sid] = -1.0
                elif now - self._first_seen[eio_sid] > timeout and not sock.closed:
                    await self.evict(sock, "connect_timeout")
            else:
                self._first_seen[eio_sid] = -1.0 if self._namespace_connected(eio_sid) else now
        # websockets whose engine socket is closed but whose TCP connection lingers, and
        # those whose peer stopped answering pings while nothing is sent to them
        wall = time.time()
        for sock, tcp in list(self.websockets.items()):
            if tcp.is_closing():
                continue
            if sock.closed:
                since = self._closed_since.setdefault(sock, now)
                if now - since > STALLED_GRACE_SECONDS:
                    self.metrics.clients_evicted.labels(reason="stalled").inc()
                    tcp.abort()
            elif sock.last_ping and wall - sock.last_ping > eio.ping_timeout + 1:
                await self.evict(sock, "stalled")

    def forget_closed(self) -> None:
        forget_closed(self.sio)

    async def _disconnected(self, eio_sid: str, reason: Any) -> None:
        """python-socketio's Engine.IO disconnect handler, then the closed session is
        dropped as soon as python-engineio marks it closed (right after this returns)."""
        try:
            await self._on_disconnect(eio_sid, reason)
        finally:
            asyncio.get_running_loop().call_soon(self._forget, eio_sid)

    def _forget(self, eio_sid: str) -> None:
        sock = self.sio.eio.sockets.get(eio_sid)
        if sock is not None and sock.closed:
            del self.sio.eio.sockets[eio_sid]
        for hook in self.on_session_closed:
            hook(eio_sid)

    @property
    def session_cap(self) -> int:
        """Engine.IO sessions above which new handshakes are refused as ``overloaded``."""
        return self.settings.max_connections + SESSION_SLACK

    def at_capacity(self) -> bool:
        return len(self.sio.eio.sockets) >= self.session_cap

    async def not_ready_reason(self) -> str | None:
        """A readiness check: an instance that refuses every handshake is not ready."""
        self.forget_closed()
        return "at_session_capacity" if self.at_capacity() else None

    async def run(self) -> None:
        interval = min(1.0, self.settings.connect_timeout_seconds / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception:
                log.warning("guard sweep failed", exc_info=True, extra={"event": "guard_error"})


def install_guard(
    app: web.Application,
    sio: socketio.AsyncServer,
    settings: Settings,
    registry: CollectorRegistry,
    path: str = "/socket.io",
) -> Guard:
    """Install every protection on ``app``/``sio``; call once, after ``sio.attach(app)``."""
    guard = Guard(sio, settings, registry)
    app.middlewares.append(handshake_middleware(sio, settings, guard.metrics, path))

    async def sweeper(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(guard.run())
        yield
        task.cancel()

    app.cleanup_ctx.append(sweeper)
    return guard


__all__ = [
    "BoundedSendQueue",
    "Guard",
    "HandshakeLimiter",
    "client_address",
    "environ_client_address",
    "install_guard",
]
