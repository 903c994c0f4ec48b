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
* **Bounded send buffering**: each Engine.IO socket's outgoing queue (the engine's
  ``create_queue``, :mod:`.queue`) never blocks the sender and holds at most
  ``SEND_BUFFER_BYTES``; a client that lets it overflow is disconnected and its TCP
  connection aborted, so one slow consumer costs bounded memory and never delays a
  broadcast to the others.
* **Stalled websockets**: a websocket whose Engine.IO socket is closed (python-engineio's
  ping-timeout check, eviction) but whose TCP connection lingers (a writer stuck on a peer
  that stopped reading) is aborted: stock python-engineio waits for that writer forever.
* **Malformed Socket.IO packets**: the offending client is disconnected (as socket.io's
  reference server does on a parse error) and counted, instead of one ERROR traceback per
  frame in the logs; binary attachments (the protocol uses none) are bounded in number and
  bytes by the engine's packet class (:mod:`.packet`).
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

from ..config import Settings
from ..metrics import Metrics
from ..tokenbucket import TokenBuckets
from .queue import BoundedSendQueue
from .server import Server

log = logging.getLogger(__name__)

SESSION_SLACK = 100
"""Engine.IO sessions allowed above MAX_CONNECTIONS: handshakes in flight, refusals."""
STALLED_GRACE_SECONDS = 2.0
"""How long a closed socket's TCP connection may linger before it is aborted."""
MAX_TRACKED_ADDRESSES = 100_000
"""Handshake buckets kept; beyond it the least recently used are dropped."""


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
            if hop_ip.is_loopback and not address.is_loopback:
                # only a proxy on this host can have a loopback client: from anywhere else
                # it is a spoof (it would unlock the loopback exemptions)
                break
            address = hop_ip
            if not _trusted(hop_ip, trusted):
                break
    if address is None:
        return peer or "unknown"
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def environ_client_address(environ: Mapping[str, Any], trusted: tuple[Any, ...]) -> str:
    """:func:`client_address` of the request behind a python-socketio ``environ`` (the
    engine's Engine.IO server writes the peer's address as ``REMOTE_ADDR``)."""
    forwarded = environ.get("HTTP_X_FORWARDED_FOR")
    return client_address(environ.get("REMOTE_ADDR"), [forwarded] if forwarded else [], trusted)


def _loopback(key: str) -> bool:
    """A client on this host (tests, benchmarks, a sidecar without X-Forwarded-For)."""
    address = _ip(key)
    return address is not None and address.is_loopback


class HandshakeLimiter(TokenBuckets):
    """Token buckets per address: ``burst`` capacity refilled at ``rate`` per second."""

    def __init__(self, rate: float, burst: int) -> None:
        super().__init__(capacity=burst, rate=rate, max_keys=MAX_TRACKED_ADDRESSES)


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
    sio: socketio.AsyncServer, settings: Settings, metrics: Metrics, path: str
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


# -- the guard itself ---------------------------------------------------------------------------


class Guard:
    def __init__(self, sio: Server, settings: Settings, metrics: Metrics) -> None:
        self.sio = sio
        self.settings = settings
        self.metrics = metrics
        self._closed_since: dict[str, float] = {}
        self._first_seen: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._queue_owners: dict[int, Any] | None = None
        eio = sio.eio
        eio.send_buffer_bytes = settings.send_buffer_bytes
        eio.on_overflow = self._overflow
        # python-socketio's Engine.IO message handler, wrapped: a packet it cannot handle
        # disconnects its client
        self._on_message = eio.handlers["message"]
        eio.on("message", self._guarded_message)
        # python-socketio's Engine.IO disconnect handler, wrapped: a closed session leaves
        # python-engineio's table at once
        self._on_disconnect = eio.handlers["disconnect"]
        self.on_session_closed: list[Callable[[str], None]] = []
        """Called with the id of every Engine.IO session that ended."""
        eio.on("disconnect", self._disconnected)
        self.metrics.engineio_sessions.set_function(lambda: len(eio.sockets))

    @property
    def websockets(self) -> dict[str, Any]:
        """Engine.IO sid -> the TCP transport of the websocket serving it."""
        return self.sio.eio.websockets

    # queues

    def _overflow(self, queue: BoundedSendQueue) -> None:
        sock = self._owner(queue)
        if sock is not None:
            self._spawn(self.evict(sock, "slow_consumer"))
            return
        queue.discard()

    def _owner(self, queue: BoundedSendQueue) -> Any:
        """The socket whose queue this is. A broadcast may overflow many queues in one go:
        the queue -> socket index is built once for the current turn of the event loop, so M
        overflows among N sockets cost O(N + M), not O(N * M)."""
        owners = self._queue_owners
        if owners is None:
            sockets = self.sio.eio.sockets.values()
            owners = self._queue_owners = {id(sock.queue): sock for sock in sockets}
            asyncio.get_running_loop().call_soon(self._forget_owners)
        sock = owners.get(id(queue))
        if sock is not None and sock.queue is queue:
            return sock
        # a socket created since the index was built
        return next((s for s in self.sio.eio.sockets.values() if s.queue is queue), None)

    def _forget_owners(self) -> None:
        self._queue_owners = None

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
        tcp = self.sio.eio.websockets.get(sock.sid)
        if tcp is not None and not tcp.is_closing():
            tcp.abort()

    # incoming packets

    async def _guarded_message(self, eio_sid: str, data: Any) -> None:
        try:
            await self._on_message(eio_sid, data)
        except Exception:
            await self._protocol_error(eio_sid)

    async def _protocol_error(self, eio_sid: str) -> None:
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
        # websockets whose Engine.IO session is closed (python-engineio's ping-timeout
        # check, an eviction) but whose TCP connection lingers
        for eio_sid, tcp in list(eio.websockets.items()):
            sock = sockets.get(eio_sid)
            if tcp.is_closing() or (sock is not None and not sock.closed):
                self._closed_since.pop(eio_sid, None)
                continue
            since = self._closed_since.setdefault(eio_sid, now)
            if now - since > STALLED_GRACE_SECONDS:
                self.metrics.clients_evicted.labels(reason="stalled").inc()
                tcp.abort()
        for eio_sid in [s for s in self._closed_since if s not in eio.websockets]:
            del self._closed_since[eio_sid]

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
    sio: Server,
    settings: Settings,
    metrics: Metrics,
    path: str = "/socket.io",
) -> Guard:
    """Install every protection on ``app``/``sio``; call once, after ``sio.attach(app)``."""
    guard = Guard(sio, settings, metrics)
    app.middlewares.append(handshake_middleware(sio, settings, guard.metrics, path))

    async def sweeper(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(guard.run())
        yield
        task.cancel()

    app.cleanup_ctx.append(sweeper)
    return guard


__all__ = [
    "Guard",
    "HandshakeLimiter",
    "client_address",
    "environ_client_address",
    "install_guard",
]
