"""An asyncio client for the service that survives restarts, drains and failovers.

Why not python-socketio's ``AsyncClient`` alone: its reconnection neither refreshes the
token, nor rejoins rooms, nor recovers what was sent while it was away, nor moves to another
URL when an instance drains. :class:`ChatClient` wraps one ``AsyncClient`` per connection and
adds all of that, so a caller sees every room message once and in order across reconnects::

    async with ChatClient(["http://a:3000", "http://b:3000"], token=get_token) as chat:
        chat.on("message:received", print)
        await chat.join("lobby")
        await chat.send("lobby", "hello")

Delivery rule: the ``history`` in a join ack belongs to the caller; ``message:received``
handlers then get every later message of the room exactly once, in id order, including the
ones recovered (``missed``) after a reconnect. Handlers run one at a time, in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict, cast

import aiohttp
import socketio

from .. import protocol as p
from ..protocol import parse_id

log = logging.getLogger(__name__)

__all__ = [
    "CLOSED",
    "CONNECTED",
    "DISCONNECTED",
    "RECOVERED",
    "AckTimeout",
    "Backoff",
    "ChatClient",
    "ChatError",
    "ClientClosed",
    "ConnectFailed",
    "Disconnected",
    "EventRefused",
    "Forbidden",
    "HandshakeRefused",
    "InvalidPayload",
    "NotInRoom",
    "RateLimited",
    "ServerError",
    "TooLarge",
    "TooManyRooms",
    "Unauthorized",
    "UnknownEvent",
]

TokenSource = str | Callable[[], str | Awaitable[str]]
"""A fixed token, or a callable (sync or async) asked for a fresh one before each connect."""

Handler = Callable[[Any], Awaitable[None] | None]

# Client-side events, delivered to ``on()`` handlers like the server's events.
CONNECTED = "client:connected"
"""``{url, reconnect}``: a connection is up and every room is rejoined."""
DISCONNECTED = "client:disconnected"
"""``{url, reason}``: the connection dropped; the client is reconnecting."""
RECOVERED = "client:recovered"
"""``{roomId, recovered, missed}`` after a rejoin; ``recovered: false`` means a gap was lost."""
CLOSED = "client:closed"
"""``{code, message}`` once the client stops for good (``close()`` or giving up)."""

REJOIN_MARGIN_MS = 5000
SEEN_IDS_PER_ROOM = 4096
"""Enough ids to dedupe a reconnect's overlap between live and recovered messages."""


# -- errors -------------------------------------------------------------------------------


class ChatError(Exception):
    """Any failure, with the ``{code, message}`` of docs/protocol.md or a client-side code."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details


class EventRefused(ChatError):
    """The server answered an event with ``{ok: false, error}``."""


class InvalidPayload(EventRefused):
    pass


class NotInRoom(EventRefused):
    pass


class Forbidden(EventRefused):
    """``forbidden``: this token may not join the room (its ``rooms`` claim or the
    server's join hook says no); retrying with the same token will not help."""


class RateLimited(EventRefused):
    @property
    def retry_after_ms(self) -> int | None:
        value = self.details.get("retryAfterMs")
        return value if isinstance(value, int) else None


class TooLarge(EventRefused):
    pass


class TooManyRooms(EventRefused):
    pass


class UnknownEvent(EventRefused):
    pass


class ServerError(EventRefused):
    """``internal``: the server failed; retrying later may work."""


class HandshakeRefused(ChatError):
    """The server refused the connection (``connect_error``): overloaded, draining, ..."""


class Unauthorized(HandshakeRefused):
    """The token was refused; a fixed token will not get better by retrying."""


class ConnectFailed(ChatError):
    """No server answered (code ``connect_failed``)."""


class Disconnected(ChatError):
    """The connection dropped before the ack came (code ``disconnected``): the event may or
    may not have been applied."""


class AckTimeout(ChatError):
    """No ack within the timeout (code ``timeout``)."""


class ClientClosed(ChatError):
    """The client was closed or gave up (code ``closed``)."""


_EVENT_ERRORS: dict[str, type[EventRefused]] = {
    "invalid_payload": InvalidPayload,
    "not_in_room": NotInRoom,
    "forbidden": Forbidden,
    "rate_limited": RateLimited,
    "too_large": TooLarge,
    "too_many_rooms": TooManyRooms,
    "unknown_event": UnknownEvent,
    "internal": ServerError,
}


def error_from_ack(ack: object) -> EventRefused:
    """The typed error for an ``{ok: false, error: {code, message, ...}}`` ack."""
    error = ack.get("error") if isinstance(ack, dict) else None
    if not isinstance(error, dict):
        return ServerError("internal", f"malformed ack: {ack!r}")
    code = str(error.get("code", "internal"))
    extra = {k: v for k, v in error.items() if k not in ("code", "message")}
    return _EVENT_ERRORS.get(code, EventRefused)(code, str(error.get("message", "")), **extra)


def error_from_refusal(data: object) -> HandshakeRefused | None:
    """The typed error for a ``connect_error`` payload, or ``None`` if it is not a refusal."""
    if isinstance(data, dict) and isinstance(data.get("data"), dict):
        data = data["data"]
    if not isinstance(data, dict) or "code" not in data:
        return None
    code = str(data["code"])
    cls = Unauthorized if code == "unauthorized" else HandshakeRefused
    return cls(code, str(data.get("message", "")))


# -- acks ---------------------------------------------------------------------------------


class Message(TypedDict):
    id: str
    roomId: str
    userId: str
    message: str
    timestamp: int


class JoinAck(TypedDict):
    ok: bool
    roomId: str
    history: list[Message]
    missed: NotRequired[list[Message]]
    recovered: NotRequired[bool]
    more: NotRequired[bool]
    """Older history than fits one reply exists: page with ``history(before=...)``."""


class RoomAck(TypedDict):
    ok: bool
    roomId: NotRequired[str]


class SendAck(TypedDict):
    ok: bool
    id: str
    stored: NotRequired[bool]


class HistoryAck(TypedDict):
    ok: bool
    roomId: str
    messages: list[Message]
    more: NotRequired[bool]
    """Cut to fit one reply: ask again with ``before`` = the first message's id."""


class PresenceAck(TypedDict):
    ok: bool
    roomId: str
    users: list[str]


# -- back-off -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off with jitter, so clients of a dead instance don't reconnect in step.

    Attempt ``n`` waits ``min(maximum, initial * multiplier**n)`` reduced by a random part of
    up to ``jitter`` of it.
    """

    initial: float = 0.5
    maximum: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        base = min(self.maximum, self.initial * self.multiplier ** max(0, attempt))
        return base * (1.0 - self.jitter * (rng or random).random())


# -- state --------------------------------------------------------------------------------


def _id_key(message: object) -> tuple[int, int, int]:
    """Sort key by message id; unparsable ids keep their arrival order, after the rest."""
    try:
        ms, seq = parse_id(cast(dict[str, Any], message).get("id"))
    except (ValueError, AttributeError):
        return (1, 0, 0)
    return (0, ms, seq)


@dataclass
class _Room:
    """What the client remembers of a joined room: enough to recover and to dedupe."""

    room_id: str
    last_id: str | None = None
    seen: OrderedDict[str, None] = field(default_factory=OrderedDict)
    pending: list[Any] | None = None
    """Live messages held back while a (re)join is in flight, to merge with ``missed``."""

    def resume_from(self) -> str:
        """Where a rejoin starts: a little before the newest id seen.

        Live delivery follows arrival, not id order: a message stored through another
        instance can still be in flight when a later local one arrives and the connection
        drops. Starting ``REJOIN_MARGIN_MS`` earlier recovers it; ``seen`` drops the repeats.
        """
        if self.last_id is None:
            return "0-0"
        ms, _ = parse_id(self.last_id)
        return f"{max(0, ms - REJOIN_MARGIN_MS)}-0"

    def mark(self, message_id: object) -> bool:
        """Remember ``message_id``; ``False`` if it was seen already."""
        if not isinstance(message_id, str):
            return True
        if message_id in self.seen:
            return False
        self.seen[message_id] = None
        if len(self.seen) > SEEN_IDS_PER_ROOM:
            self.seen.popitem(last=False)
        try:
            if self.last_id is None or parse_id(message_id) > parse_id(self.last_id):
                self.last_id = message_id
        except ValueError:
            pass
        return True


@dataclass
class _Connection:
    """One python-socketio connection; ``lost`` is set once it drops."""

    sio: socketio.AsyncClient
    url: str
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""


_STOP = object()


class ChatClient:
    """A reconnecting client for one user; see the module docstring.

    :param urls: one URL or several; on failure or drain the next one is tried.
    :param token: a JWT, or a callable returning one, called before each (re)connect.
    :param http_session: an ``aiohttp.ClientSession`` to use (and not close), e.g. with a
        cookie jar for a sticky load balancer. Without one the client makes its own with
        ``CookieJar(unsafe=True)``, which keeps affinity cookies even for IP addresses.
    :param transports: ``("websocket",)`` by default; ``("polling", "websocket")`` to
        start with long-polling and upgrade.
    :param max_attempts: give up after this many failed rounds over the URLs (``None``:
        never).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        token: TokenSource,
        *,
        http_session: aiohttp.ClientSession | None = None,
        transports: Sequence[str] = ("websocket",),
        backoff: Backoff | None = None,
        ack_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        max_attempts: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("at least one URL is needed")
        self._token_source = token
        self._http_session = http_session
        self._own_session: aiohttp.ClientSession | None = None
        self.transports = list(transports)
        self.backoff = backoff or Backoff()
        self.ack_timeout = ack_timeout
        self.connect_timeout = connect_timeout
        self.max_attempts = max_attempts
        self._rng = rng or random.Random()
        self._url_index = 0
        self._handlers: dict[str, list[Handler]] = {}
        self._rooms: dict[str, _Room] = {}
        self._private_seen: OrderedDict[str, None] = OrderedDict()
        self._conn: _Connection | None = None
        self._ready = asyncio.Event()
        self._closed = asyncio.Event()
        self._closing = False
        self._failure: ChatError | None = None
        self._shutdown_notice = False
        self._queue: asyncio.Queue[tuple[str, Any] | object] = asyncio.Queue()
        self._dispatcher: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self.reconnects = 0
        """How many times the client reconnected (for tests and dashboards)."""

    # -- public state ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Connected and every room rejoined: calls go through now."""
        return self._ready.is_set()

    @property
    def url(self) -> str | None:
        """The URL of the current connection."""
        return self._conn.url if self._conn else None

    @property
    def rooms(self) -> list[str]:
        return list(self._rooms)

    def last_id(self, room_id: str) -> str | None:
        """The newest message id seen in ``room_id``: where a rejoin resumes."""
        room = self._rooms.get(room_id)
        return room.last_id if room else None

    def on(self, event: str, handler: Handler | None = None) -> Any:
        """Call ``handler(data)`` for each ``event`` (usable as a decorator).

        ``event`` is a server event (``message:received``, ``user:joined``, ...), a client
        event (:data:`CONNECTED`, :data:`DISCONNECTED`, :data:`RECOVERED`, :data:`CLOSED`),
        or ``"*"`` for all of them as ``handler((event, data))``.
        """

        def register(fn: Handler) -> Handler:
            self._handlers.setdefault(event, []).append(fn)
            return fn

        return register(handler) if handler is not None else register

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> ChatClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self, *, retry: bool = False) -> None:
        """Connect, then stay connected in the background until :meth:`close`.

        Without ``retry`` one round over the URLs is tried and its last error raised
        (:class:`Unauthorized`, :class:`HandshakeRefused` or :class:`ConnectFailed`); with
        ``retry`` the back-off applies as for reconnects. An unauthorized token always
        raises at once.
        """
        if self._supervisor is not None:
            raise RuntimeError("connect() was called already")
        if self._http_session is None:
            self._own_session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self._dispatcher = asyncio.create_task(self._dispatch_loop())
        try:
            await self._establish(reconnect=False, rounds=None if retry else 1)
        except BaseException:
            await self._teardown()
            raise
        self._supervisor = asyncio.create_task(self._supervise())

    async def close(self) -> None:
        """Disconnect and stop; handlers get the events received so far, then :data:`CLOSED`."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        if self._supervisor is not None and self._supervisor is not asyncio.current_task():
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self._teardown()

    async def wait_closed(self) -> None:
        """Return when the client stops; raise the error if it gave up on reconnecting."""
        await self._closed.wait()
        if self._failure is not None:
            raise self._failure

    async def _teardown(self) -> None:
        self._closing = True
        self._ready.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            await _hang_up(conn.sio)
        failure = self._failure
        self._emit(
            CLOSED,
            {"code": failure.code, "message": failure.message}
            if failure
            else {"code": "closed", "message": "closed by the client"},
        )
        if self._dispatcher is not None:
            self._queue.put_nowait(_STOP)
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._dispatcher), 2.0)
            self._dispatcher.cancel()
        if self._own_session is not None:
            await self._own_session.close()
            self._own_session = None
        self._closed.set()

    async def _supervise(self) -> None:
        """Wait for the connection to drop, then reconnect; forever or until giving up."""
        try:
            while not self._closing:
                conn = self._conn
                if conn is None:
                    return
                await conn.lost.wait()
                if self._closing:
                    return
                self._ready.clear()
                if self._shutdown_notice:
                    # the instance drains: don't knock on its door again first
                    self._url_index = (self._url_index + 1) % len(self.urls)
                    self._shutdown_notice = False
                await asyncio.sleep(self.backoff.delay(0, self._rng))
                await self._establish(reconnect=True, rounds=self.max_attempts)
        except ChatError as exc:
            self._failure = exc
            log.warning("chat client gives up: %s", exc)
            await self._teardown()

    async def _establish(self, *, reconnect: bool, rounds: int | None) -> None:
        """Connect and rejoin, over the URLs in turn, with back-off between rounds."""
        attempt = 0
        while True:
            last: ChatError | None = None
            for _ in range(len(self.urls)):
                if self._closing:
                    raise ClientClosed("closed", "the client was closed")
                url = self.urls[self._url_index]
                await self._drop_current()
                try:
                    await self._open(url)
                    await self._rejoin()
                except Unauthorized as exc:
                    if not reconnect or not callable(self._token_source):
                        raise
                    last = exc
                except ChatError as exc:
                    last = exc
                else:
                    if reconnect:
                        self.reconnects += 1
                    self._ready.set()
                    self._emit(CONNECTED, {"url": url, "reconnect": reconnect})
                    return
                log.info("connect to %s failed: %s", url, last)
                self._url_index = (self._url_index + 1) % len(self.urls)
            attempt += 1
            if rounds is not None and attempt >= rounds:
                assert last is not None
                raise last
            await asyncio.sleep(self.backoff.delay(attempt, self._rng))

    async def _token(self) -> str:
        source = self._token_source
        if not callable(source):
            return source
        value = source()
        if inspect.isawaitable(value):
            value = await value
        return cast(str, value)

    async def _open(self, url: str) -> None:
        token = await self._token()
        sio = socketio.AsyncClient(
            reconnection=False, http_session=self._http_session or self._own_session
        )
        conn = _Connection(sio, url)
        refusals: list[Any] = []
        sio.on("connect_error", refusals.append)
        self._wire(conn)
        try:
            await sio.connect(
                url,
                auth={"token": token},
                transports=self.transports,
                wait_timeout=self.connect_timeout,
            )
        except (socketio.exceptions.ConnectionError, ValueError, OSError) as exc:
            await _hang_up(sio)
            for data in reversed(refusals):
                refused = error_from_refusal(data)
                if refused is not None:
                    raise refused from None
            raise ConnectFailed("connect_failed", f"{url}: {exc}") from None
        self._conn = conn

    async def _drop_current(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.lost.set()
            await _hang_up(conn.sio)

    def _wire(self, conn: _Connection) -> None:
        """Route one connection's events; ignore them once it is no longer current."""
        sio = conn.sio

        def current() -> bool:
            return self._conn is conn

        def on_disconnect(reason: object = "") -> None:
            conn.reason = str(reason)
            if current() and not conn.lost.is_set():
                conn.lost.set()
                self._ready.clear()
                self._emit(DISCONNECTED, {"url": conn.url, "reason": conn.reason})

        def on_message(data: Any = None, *_offset: Any) -> None:
            # the server appends the message id (the Socket.IO recovery offset): not needed
            # here, rooms are rejoined by id
            if current():
                self._on_room_message(data)

        def on_private(data: Any = None, *_: Any) -> None:
            if not current():
                return
            message_id = data.get("id") if isinstance(data, dict) else None
            if isinstance(message_id, str):
                if message_id in self._private_seen:
                    return
                self._private_seen[message_id] = None
                if len(self._private_seen) > SEEN_IDS_PER_ROOM:
                    self._private_seen.popitem(last=False)
            self._emit(p.PRIVATE_RECEIVED, data)

        def on_shutdown(data: Any = None, *_: Any) -> None:
            if current():
                self._shutdown_notice = True
                self._emit(p.SERVER_SHUTDOWN, data)

        def on_other(event: str, *args: Any) -> None:
            if event == p.JOINED_ROOM:
                args = args[:1]  # a trailing null keeps the recovery offset of JS clients
            if current():
                self._emit(event, args[0] if len(args) == 1 else list(args))

        # plain functions: python-socketio runs each in order, before any later packet
        sio.on("disconnect", on_disconnect)
        sio.on(p.MESSAGE_RECEIVED, on_message)
        sio.on(p.PRIVATE_RECEIVED, on_private)
        sio.on(p.SERVER_SHUTDOWN, on_shutdown)
        sio.on("*", on_other)

    # -- rooms and recovery ----------------------------------------------------------------

    def _on_room_message(self, data: Any) -> None:
        room = self._rooms.get(data.get("roomId")) if isinstance(data, dict) else None
        if room is None:
            self._emit(p.MESSAGE_RECEIVED, data)
        elif room.pending is not None:
            room.pending.append(data)
        elif room.mark(data.get("id")):
            self._emit(p.MESSAGE_RECEIVED, data)

    def _absorb(self, room: _Room, ack: dict[str, Any]) -> None:
        """Deliver ``missed`` and held-back live messages once, in id order; note history."""
        held, room.pending = room.pending or [], None
        fresh = [m for m in ack.get("missed") or [] if isinstance(m, dict)]
        fresh += [m for m in held if isinstance(m, dict)]
        history = [m for m in ack.get("history") or [] if isinstance(m, dict)]
        if "missed" not in ack:
            # a first join: history is the caller's (it is in the ack), not an event
            for message in history:
                room.mark(message.get("id"))
        for message in sorted(fresh, key=_id_key):
            if room.mark(message.get("id")):
                self._emit(p.MESSAGE_RECEIVED, message)
        for message in history:
            room.mark(message.get("id"))

    async def _rejoin(self) -> None:
        """Rejoin every room from its last seen id, on the fresh connection."""
        for room in list(self._rooms.values()):
            room.pending = []
            payload = {"roomId": room.room_id, "since": room.resume_from()}
            try:
                ack = await self._join_call(payload)
            except EventRefused as exc:
                room.pending = None
                log.warning("rejoin %s refused: %s", room.room_id, exc)
                self._rooms.pop(room.room_id, None)
                continue
            except BaseException:
                room.pending = None
                raise
            missed = ack.get("missed") or []
            self._absorb(room, ack)
            self._emit(
                RECOVERED,
                {
                    "roomId": room.room_id,
                    "recovered": bool(ack.get("recovered", True)),
                    "missed": len(missed),
                },
            )

    # -- calls ----------------------------------------------------------------------------

    async def _wait_ready(self) -> _Connection:
        if self._closing:
            raise ClientClosed("closed", "the client is closed")
        if self._supervisor is None:
            raise ClientClosed("closed", "connect() first")
        if not self._ready.is_set():
            ready = asyncio.create_task(self._ready.wait())
            closed = asyncio.create_task(self._closed.wait())
            done, _ = await asyncio.wait(
                {ready, closed}, timeout=self.ack_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            ready.cancel()
            closed.cancel()
            if closed in done or self._closing:
                raise ClientClosed("closed", "the client is closed")
            if ready not in done:
                raise Disconnected("disconnected", "not connected, still reconnecting")
        assert self._conn is not None
        return self._conn

    async def _call(self, event: str, data: Any, *, wait_ready: bool = True) -> Any:
        """Emit ``event`` and return its ack; raise a :class:`ChatError` for anything else."""
        if wait_ready:
            conn = await self._wait_ready()
        elif self._conn is None:
            raise Disconnected("disconnected", "not connected")
        else:
            conn = self._conn
        call = asyncio.create_task(conn.sio.call(event, data, timeout=self.ack_timeout))
        lost = asyncio.create_task(conn.lost.wait())
        try:
            done, _ = await asyncio.wait({call, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if call not in done:
            call.cancel()
            raise Disconnected("disconnected", f"connection lost before the {event} ack")
        try:
            ack = call.result()
        except socketio.exceptions.TimeoutError:
            raise AckTimeout("timeout", f"no {event} ack within {self.ack_timeout}s") from None
        except (socketio.exceptions.BadNamespaceError, socketio.exceptions.DisconnectedError):
            raise Disconnected("disconnected", f"not connected for {event}") from None
        if not isinstance(ack, dict) or ack.get("ok") is not True:
            raise error_from_ack(ack)
        return ack

    async def join(self, room_id: str, since: str | None = None) -> JoinAck:
        """Join ``room_id``; with ``since``, ``missed`` messages are also delivered as events.

        The room is rejoined automatically after every reconnect.
        """
        await self._wait_ready()
        room = self._rooms.get(room_id)
        fresh = room is None
        if room is None:
            room = self._rooms[room_id] = _Room(room_id)
        room.pending = []
        payload: Any = room_id if since is None else {"roomId": room_id, "since": since}
        try:
            ack = await self._join_call(payload)
        except BaseException:
            room.pending = None
            if fresh:
                self._rooms.pop(room_id, None)
            raise
        self._absorb(room, ack)
        return cast(JoinAck, ack)

    async def _join_call(self, payload: Any) -> dict[str, Any]:
        """``join:room``, repeated from the last missed id while the server says more
        missed messages did not fit its reply (``missedMore``); one merged ack."""
        ack = await self._call(p.JOIN_ROOM, payload, wait_ready=False)
        missed = [m for m in ack.get("missed") or [] if isinstance(m, dict)]
        more = ack.pop("missedMore", False)
        while more and missed and isinstance(missed[-1].get("id"), str):
            again = {"roomId": ack.get("roomId"), "since": missed[-1]["id"]}
            page = await self._call(p.JOIN_ROOM, again, wait_ready=False)
            missed += [m for m in page.get("missed") or [] if isinstance(m, dict)]
            more = page.get("missedMore", False)
        if "missed" in ack:
            ack["missed"] = missed
        return cast(dict[str, Any], ack)

    async def leave(self, room_id: str) -> RoomAck:
        """Leave ``room_id`` and stop rejoining it."""
        try:
            ack = await self._call(p.LEAVE_ROOM, room_id)
        except NotInRoom:
            self._rooms.pop(room_id, None)
            raise
        self._rooms.pop(room_id, None)
        return cast(RoomAck, ack)

    async def send(self, room_id: str, message: str) -> SendAck:
        """Send ``message`` to a joined room; returns ``{ok, id}``."""
        payload = {"roomId": room_id, "message": message}
        return cast(SendAck, await self._call(p.MESSAGE_SEND, payload))

    async def private(self, target_user_id: str, message: str) -> SendAck:
        """Send ``message`` to every connection of ``target_user_id``."""
        payload = {"targetUserId": target_user_id, "message": message}
        return cast(SendAck, await self._call(p.MESSAGE_PRIVATE, payload))

    async def typing_start(self, room_id: str) -> RoomAck:
        return cast(RoomAck, await self._call(p.TYPING_START, room_id))

    async def typing_stop(self, room_id: str) -> RoomAck:
        return cast(RoomAck, await self._call(p.TYPING_STOP, room_id))

    async def history(
        self, room_id: str, *, before: str | None = None, limit: int | None = None
    ) -> HistoryAck:
        """The room's last messages (older than ``before``), oldest first."""
        payload: dict[str, Any] = {"roomId": room_id}
        if before is not None:
            payload["before"] = before
        if limit is not None:
            payload["limit"] = limit
        return cast(HistoryAck, await self._call(p.HISTORY_GET, payload))

    async def presence(self, room_id: str) -> PresenceAck:
        """The distinct users in the room, across all instances."""
        return cast(PresenceAck, await self._call(p.PRESENCE_GET, room_id))

    # -- handler dispatch -----------------------------------------------------------------

    def _emit(self, event: str, data: Any) -> None:
        if self._dispatcher is not None and not self._dispatcher.done():
            self._queue.put_nowait((event, data))

    async def _dispatch_loop(self) -> None:
        """Run handlers one at a time, in the order events arrived."""
        while True:
            item = await self._queue.get()
            if item is _STOP:
                return
            event, data = cast(tuple[str, Any], item)
            calls: list[tuple[Handler, Any]] = [(h, data) for h in self._handlers.get(event, [])]
            calls += [(h, (event, data)) for h in self._handlers.get("*", [])]
            for handler, arg in calls:
                try:
                    result = handler(arg)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("handler for %s failed", event)


async def _hang_up(sio: socketio.AsyncClient) -> None:
    """Disconnect without waiting for a pending long-poll (the engine.io client would wait
    up to ping interval + timeout for it)."""
    try:
        if sio.connected:
            for namespace in list(sio.namespaces):
                await sio.eio.send(
                    sio.packet_class(socketio.packet.DISCONNECT, namespace=namespace).encode()
                )
        await sio.eio.disconnect(abort=True)
    except Exception:  # an already broken transport is fine: we are leaving anyway
        log.debug("hang-up failed", exc_info=True)
