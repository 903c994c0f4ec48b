"""The ``/`` namespace: thin handlers that validate, call the stores, emit and ack.

Every client event goes through :meth:`ChatNamespace.trigger_event`, which applies the rate
limit, times the handler, turns errors into ``{ok: false, error}`` acks and keeps metric
labels bounded. A malformed event never raises out of here and never reaches other clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import socketio

from . import protocol as p
from .auth import AuthError, TokenVerifier, token_from_handshake
from .config import Settings
from .engine.recovery import transport_ended
from .expiry import EXPIRED_PAYLOAD, ExpiryTimers
from .lingering import Lingering
from .metrics import Metrics, event_label
from .recovery import RECOVERABLE_REASONS, START, Recovery, id_key, new_pid, resume_request
from .recovery import with_offset as recovery_args
from .rooms import RoomAccess
from .stores import Stores
from .stores.history import HistoryUnavailable
from .stores.ratelimit import RateLimited

log = logging.getLogger(__name__)

Ack = dict[str, Any]


NO_CLAIMS: Mapping[str, Any] = MappingProxyType({})
"""Shared by every session whose claims room access never reads."""


@dataclass(slots=True)
class Session:
    """What the server knows about one connected socket (slots: one per connection)."""

    user_id: str
    rooms: set[str] = field(default_factory=set)
    claims: Mapping[str, Any] = field(default_factory=lambda: NO_CLAIMS, repr=False)
    pid: str | None = None
    """The private session id of connection state recovery (``None`` when it is off)."""
    upto: dict[str, str] = field(default_factory=dict)
    """Per room, the newest message id the client had when it joined (for recovery)."""
    kept: bool = False
    """Its recovery session was saved while it was still connected (a drain began)."""


class MessagePoster(Protocol):
    """Cluster mode's ``message:send``: store, publish and deliver in one step
    (:class:`service.cluster.outbox.Outbox`); raises ``HistoryUnavailable`` to fall back,
    and ``RateLimited`` when it takes the sender's token itself (``charges_rate_limit``)."""

    @property
    def charges_rate_limit(self) -> bool: ...

    async def post(self, room_id: str, message: dict[str, Any]) -> Ack: ...


@dataclass
class Gate:
    """Whether new handshakes are welcome; the lifecycle flips ``draining``."""

    draining: bool = False


def now_ms() -> int:
    return int(time.time() * 1000)


def rate_limited(wait: float) -> p.EventError:
    return p.EventError("rate_limited", "too many events", retryAfterMs=math.ceil(wait * 1000))


class ChatNamespace(socketio.AsyncNamespace):
    def __init__(
        self,
        settings: Settings,
        stores: Stores,
        metrics: Metrics,
        gate: Gate,
        namespace: str = "/",
    ) -> None:
        super().__init__(namespace)
        self.settings = settings
        self.stores = stores
        self.metrics = metrics
        self.gate = gate
        self.verifier = TokenVerifier(settings)
        self.poster: MessagePoster | None = None  # set in cluster mode
        self.expiry = ExpiryTimers(
            settings.jwt_leeway_seconds,
            lambda sid: self.emit(p.AUTH_EXPIRED, EXPIRED_PAYLOAD, to=sid),
            self.disconnect,
        )
        self.access = RoomAccess(settings, metrics)
        self.recovery = Recovery(
            stores.sessions,
            stores.history,
            # without history there is nothing to recover from
            window_seconds=settings.connection_state_recovery_seconds
            if settings.history_size > 0
            else 0,
            max_rooms=settings.max_rooms_per_socket,
        )
        self.sessions: dict[str, Session] = {}
        self.lingering = Lingering()  # left with `41`, transport open: still counted
        self._user_sockets: Counter[str] = Counter()  # bounds rooms per user with the above
        self._unstored = 0
        self._unstored_base = secrets.randbelow(1 << 40)  # unlike any other instance's
        self._handlers: dict[str, Callable[[str, Session, Any], Awaitable[Ack]]] = {
            p.JOIN_ROOM: self.join,
            p.LEAVE_ROOM: self.leave,
            p.MESSAGE_SEND: self.send_message,
            p.MESSAGE_PRIVATE: self.send_private,
            p.TYPING_START: self.typing_start,
            p.TYPING_STOP: self.typing_stop,
            p.HISTORY_GET: self.get_history,
            p.PRESENCE_GET: self.get_presence,
        }

    # -- dispatch ---------------------------------------------------------------------------

    async def trigger_event(self, event: str, *args: Any) -> Any:
        # python-socketio runs connect/disconnect while the sid is pending: a connected sid
        # sending an event named like them is a client event (unknown_event), not a lifecycle
        if event in ("connect", "disconnect") and self._fully_connected(args[0]):
            return await self.handle_client_event(event, args[0], args[1:])
        if event == "connect":
            sid, environ, auth = (*args, None)[:3]
            return await self.on_connect(sid, environ, auth)
        if event == "disconnect":
            return await self.on_disconnect(args[0], args[1] if len(args) > 1 else "")
        return await self.handle_client_event(event, args[0], args[1:])

    async def handle_client_event(self, event: str, sid: str, args: tuple[Any, ...]) -> Ack:
        label = event_label(event) if isinstance(event, str) else "unknown"
        self.metrics.events_received.labels(event=label).inc()
        started = time.perf_counter()
        try:
            session = self.sessions.get(sid)
            if session is None:
                raise p.EventError("internal", "not connected")
            if event != p.MESSAGE_SEND or not self._send_pays_on_store():
                await self._take_token(session)
            handler = self._handlers.get(event)
            if handler is None:
                raise p.EventError("unknown_event", "unknown event")
            result = await handler(sid, session, args[0] if args else None)
            return {"ok": True, **result}
        except p.EventError as exc:
            self.metrics.event_errors.labels(event=label, code=exc.code).inc()
            return exc.ack()
        except Exception:
            log.exception("handler failed", extra={"event": label})
            self.metrics.event_errors.labels(event=label, code="internal").inc()
            return p.EventError("internal", "internal error").ack()
        finally:
            self.metrics.event_duration.labels(event=label).observe(time.perf_counter() - started)

    async def _take_token(self, session: Session) -> None:
        """Every client event costs one token of its user's bucket."""
        wait = await self.stores.limiter.acquire(session.user_id)
        if wait > 0:
            raise rate_limited(wait)

    def _send_pays_on_store(self) -> bool:
        """``message:send`` takes its token in the script that stores it (one round trip)."""
        return self.poster is not None and self.poster.charges_rate_limit

    @property
    def reply_budget(self) -> int:
        """Bytes of messages one reply may carry: half the socket's send buffer, so a
        reply with history never evicts its own client as a slow consumer."""
        return self.settings.send_buffer_bytes // 2

    def _fully_connected(self, sid: str) -> bool:
        return bool(self.server.manager.is_connected(sid, self.namespace))

    # -- connection -------------------------------------------------------------------------

    def _refuse(self, code: str, message: str) -> socketio.exceptions.ConnectionRefusedError:
        self.metrics.connect_errors.labels(code=code).inc()
        log.info("handshake refused", extra={"event": "connect_error", "code": code})
        return socketio.exceptions.ConnectionRefusedError(
            message, {"code": code, "message": message}
        )

    async def on_connect(self, sid: str, environ: Mapping[str, Any], auth: object) -> None:
        if self.gate.draining:
            raise self._refuse("draining", "server is shutting down, reconnect")
        self._release_slot(self.server.manager.eio_sid_from_sid(sid, self.namespace))
        if self.at_capacity():
            raise self._refuse("overloaded", "server at capacity, retry later")
        try:
            claims = self.verifier.verify(token_from_handshake(environ, auth))
        except AuthError as exc:
            raise self._refuse("unauthorized", str(exc)) from None
        if await self.stores.limiter.acquire(claims.user_id) > 0:
            raise self._refuse("rate_limited", "too many connection attempts")
        if self._user_sockets[claims.user_id] >= self.settings.max_sockets_per_user:
            raise self._refuse("overloaded", "too many connections for this user")
        kept_claims = claims.raw if self.access.reads_claims else NO_CLAIMS
        self.sessions[sid] = Session(claims.user_id, claims=kept_claims)
        self._user_sockets[claims.user_id] += 1
        self.expiry.start(sid, claims.expires_at)
        await self.enter_room(sid, p.user_channel(claims.user_id))
        if self.recovery.enabled:
            await self._start_session(sid, self.sessions[sid], auth)
        transport = self.server.transport(sid, self.namespace)
        self.metrics.connections.labels(transport=transport).inc()
        log.debug("connected", extra={"event": "connect", "user": claims.user_id})

    async def on_disconnect(self, sid: str, reason: str) -> None:
        session = self.sessions.pop(sid, None)
        if self.expiry.cancel(sid):
            reason = "token expired"
        self.metrics.disconnections.labels(reason=p.DISCONNECT_REASONS.get(reason, "other")).inc()
        if session is None:
            return
        ended = transport_ended(self.server, sid, self.namespace)
        if session.pid is not None and (
            reason in RECOVERABLE_REASONS or self.gate.draining or ended
        ):
            # the client comes back by itself (a drain closes transports): keep its session
            await self._keep(session, only_if_kept=session.kept)
        eio_sid = self.server.manager.eio_sid_from_sid(sid, self.namespace)
        if reason == self.server.reason.CLIENT_DISCONNECT and not ended and eio_sid is not None:
            # left with `41` and kept its transport: the slot is held until it closes
            self.lingering.left(eio_sid, session.user_id)
        else:
            self._user_left(session.user_id)
        for room_id in sorted(session.rooms):
            await self._left(sid, session, room_id)

    def _user_left(self, user_id: str) -> None:
        self._user_sockets[user_id] -= 1
        if not self._user_sockets[user_id]:
            del self._user_sockets[user_id]

    def _release_slot(self, eio_sid: str | None) -> None:
        user_id = self.lingering.release(eio_sid)
        if user_id is not None:
            self._user_left(user_id)

    def at_capacity(self) -> bool:
        """Every new connect would be refused ``overloaded`` (MAX_CONNECTIONS)."""
        return len(self.sessions) + len(self.lingering) >= self.settings.max_connections

    async def not_ready_reason(self) -> str | None:
        """A readiness check for the slots held by sockets that left with `41` (the
        health module counts connected sockets only)."""
        if len(self.sessions) < self.settings.max_connections and self.at_capacity():
            return "at_max_connections"
        return None

    def session_closed(self, eio_sid: str) -> None:
        """The Engine.IO session ended: a slot it still held (see Lingering) is free."""
        self._release_slot(eio_sid)

    # -- rooms ------------------------------------------------------------------------------

    async def join(self, sid: str, session: Session, payload: Any) -> Ack:
        request = p.join_request(payload)
        room_id = request.room_id
        new = room_id not in session.rooms
        if new and len(session.rooms) >= self.settings.max_rooms_per_socket:
            raise p.EventError(
                "too_many_rooms", f"at most {self.settings.max_rooms_per_socket} rooms per socket"
            )
        if new:
            await self.access.check(session.user_id, session.claims, room_id)
        if new:
            channel = p.room_channel(room_id)
            await self.enter_room(sid, channel)
            session.rooms.add(room_id)
            # joined means "you will get every message from now on", on every instance
            await self.server.manager.wait_subscribed(channel)
            await self.stores.presence.add(room_id, session.user_id, sid)
        history = self.stores.history
        limit = min(p.DEFAULT_HISTORY_LIMIT, self.settings.history_size)
        result: Ack = {"roomId": room_id, "history": []}
        try:
            result["history"] = await history.recent(room_id, limit)
            if request.since is not None:
                recovery = await history.since(room_id, request.since)
                result["missed"] = recovery.messages
                result["recovered"] = recovery.complete
        except HistoryUnavailable:
            # joined all the same; the client keeps its `since` and can ask again later
            if request.since is not None:
                result.update(missed=[], recovered=False)
        p.bound_reply(result, self.reply_budget)
        if new and self.recovery.enabled:
            known = [m["id"] for m in (*result["history"], *result.get("missed", []))]
            session.upto[room_id] = max(known, key=id_key, default=START)
        await self.emit(p.JOINED_ROOM, room_id, to=sid)
        if new:
            await self.emit(
                p.USER_JOINED,
                {"userId": session.user_id, "roomId": room_id, "timestamp": now_ms()},
                room=p.room_channel(room_id),
                skip_sid=sid,
            )
        return result

    async def leave(self, sid: str, session: Session, payload: Any) -> Ack:
        room_id = self._member_room(session, payload)
        await self._left(sid, session, room_id)
        return {"roomId": room_id}

    async def _left(self, sid: str, session: Session, room_id: str) -> None:
        session.rooms.discard(room_id)
        session.upto.pop(room_id, None)
        await self.leave_room(sid, p.room_channel(room_id))
        await self.stores.presence.remove(room_id, session.user_id, sid)
        await self.emit(
            p.USER_LEFT,
            {"userId": session.user_id, "roomId": room_id, "timestamp": now_ms()},
            room=p.room_channel(room_id),
        )

    def _member_room(self, session: Session, payload: Any) -> str:
        room_id = p.room_ref(payload)
        if room_id not in session.rooms:
            raise p.EventError("not_in_room", "join the room first")
        return room_id

    # -- messages ---------------------------------------------------------------------------

    async def send_message(self, sid: str, session: Session, payload: Any) -> Ack:
        try:
            request = p.room_message(payload, self.settings.max_message_bytes)
            if request.room_id not in session.rooms:
                raise p.EventError("not_in_room", "join the room first")
        except p.EventError:
            if self._send_pays_on_store():
                await self._take_token(session)  # a refused event costs a token too
            raise
        message = {
            "roomId": request.room_id,
            "userId": session.user_id,
            "message": request.message,
            "timestamp": now_ms(),
        }
        try:
            if self.poster is not None:
                try:
                    ack = await self.poster.post(request.room_id, message)
                except RateLimited as exc:
                    raise rate_limited(exc.wait) from None
                self.metrics.messages_stored.inc()
                return ack
            stored = await self.stores.history.append(request.room_id, message)
        except HistoryUnavailable:
            # Redis is down: keep local members talking, and say the message is not kept
            log.warning("history unavailable", extra={"event": "history_unavailable"})
            stored = {"id": self._unstored_id(), **message}
            await self.emit(p.MESSAGE_RECEIVED, stored, room=p.room_channel(request.room_id))
            return {"id": stored["id"], "stored": False}
        self.metrics.messages_stored.inc()
        await self.emit(p.MESSAGE_RECEIVED, stored, room=p.room_channel(request.room_id))
        return {"id": stored["id"]}

    def _unstored_id(self) -> str:
        """An id of the usual shape for a message that could not be stored."""
        self._unstored += 1
        return f"{now_ms()}-{self._unstored_base + self._unstored}"

    async def send_private(self, sid: str, session: Session, payload: Any) -> Ack:
        request = p.private_message(payload, self.settings.max_message_bytes)
        message_id = uuid.uuid4().hex
        await self.emit(
            p.PRIVATE_RECEIVED,
            {
                "id": message_id,
                "fromUserId": session.user_id,
                "message": request.message,
                "timestamp": now_ms(),
            },
            room=p.user_channel(request.target_user_id),
        )
        return {"id": message_id}

    async def typing_start(self, sid: str, session: Session, payload: Any) -> Ack:
        return await self._typing(p.TYPING_USER_START, sid, session, payload)

    async def typing_stop(self, sid: str, session: Session, payload: Any) -> Ack:
        return await self._typing(p.TYPING_USER_STOP, sid, session, payload)

    async def _typing(self, event: str, sid: str, session: Session, payload: Any) -> Ack:
        room_id = self._member_room(session, payload)
        await self.emit(
            event,
            {"userId": session.user_id, "roomId": room_id},
            room=p.room_channel(room_id),
            skip_sid=sid,
        )
        return {}

    # -- queries ----------------------------------------------------------------------------

    async def get_history(self, sid: str, session: Session, payload: Any) -> Ack:
        query = p.history_query(payload, max(1, self.settings.history_size))
        if query.room_id not in session.rooms:
            raise p.EventError("not_in_room", "join the room first")
        try:
            messages = await self.stores.history.recent(query.room_id, query.limit, query.before)
        except HistoryUnavailable:
            raise p.EventError("internal", "history is temporarily unavailable") from None
        return p.bound_reply({"roomId": query.room_id, "messages": messages}, self.reply_budget)

    async def get_presence(self, sid: str, session: Session, payload: Any) -> Ack:
        room_id = self._member_room(session, payload)
        return {"roomId": room_id, "users": await self.stores.presence.users(room_id)}

    # -- connection state recovery ----------------------------------------------------------

    async def emit(  # type: ignore[override]
        self,
        event: str,
        data: Any = None,
        to: Any = None,
        room: Any = None,
        skip_sid: Any = None,
        namespace: str | None = None,
        callback: Any = None,
        ignore_queue: bool = False,
    ) -> Any:
        """Every emit of this namespace; with recovery on, room messages carry their offset."""
        if self.recovery.enabled:
            data = recovery_args(event, data)
        return await super().emit(
            event,
            data,
            to=to,
            room=room,
            skip_sid=skip_sid,
            namespace=namespace,
            callback=callback,
            ignore_queue=ignore_queue,
        )

    async def _keep(self, session: Session, *, only_if_kept: bool = False) -> None:
        assert session.pid is not None
        rooms = {room_id: session.upto.get(room_id, START) for room_id in session.rooms}
        await self.recovery.persist(session.pid, session.user_id, rooms, only_if_kept=only_if_kept)

    async def keep_sessions(self, batch: int = 256) -> int:
        """Save every connected socket's recovery session now (a drain begins).

        Behind a load balancer a draining instance stops getting requests at once: a
        long-polling client's next poll lands on another instance, which does not know the
        Engine.IO session, and the client reconnects there before the drain reaches its
        socket. With its session saved beforehand it recovers all the same. When the drain
        later closes the socket, the record is refreshed only if nobody took it meanwhile.
        """
        if not self.recovery.enabled:
            return 0
        sessions = [s for s in list(self.sessions.values()) if s.pid is not None]
        for start in range(0, len(sessions), batch):
            chunk = sessions[start : start + batch]
            await asyncio.gather(*(self._keep(s) for s in chunk))
            for session in chunk:
                session.kept = True
        return len(sessions)

    def pid_for(self, sid: str) -> str | None:
        """The recovery pid the CONNECT answer carries for ``sid`` (None: recovery off)."""
        session = self.sessions.get(sid)
        return session.pid if session is not None else None

    async def _start_session(self, sid: str, session: Session, auth: object) -> None:
        """Recovery never fails a handshake: whatever goes wrong, a fresh session."""
        try:
            await self._recover_or_start(sid, session, auth)
        except Exception:
            log.exception("recovery failed", extra={"event": "recovery_error"})
            for channel in self.rooms(sid):
                if channel.startswith(p.room_channel("")):
                    await self.leave_room(sid, channel)
            for room_id in list(session.rooms):
                with contextlib.suppress(Exception):
                    await self.stores.presence.remove(room_id, session.user_id, sid)
            session.rooms.clear()
            session.upto.clear()
            session.pid = new_pid()

    async def _recover_or_start(self, sid: str, session: Session, auth: object) -> None:
        """Bring back the session a reconnecting client names, or start a new one.

        Runs inside the connect handler, so what it emits reaches the client before the
        CONNECT answer (the official client buffers it until connected, as with socket.io).
        """
        resume = resume_request(auth)
        if resume is None:
            session.pid = new_pid()
            return
        rooms = await self.recovery.take(resume, session.user_id)
        if rooms is None or not await self._may_rejoin(session, rooms):
            session.pid = new_pid()
            result = "unknown" if rooms is None else "incomplete"
            self.metrics.recoveries.labels(result=result).inc()
            return
        channels = [p.room_channel(room_id) for room_id in sorted(rooms)]
        for channel in channels:
            await self.enter_room(sid, channel)
        for channel in channels:
            await self.server.manager.wait_subscribed(channel)
        # rooms first, history next: nothing stored meanwhile falls between the two
        found = await self.recovery.missed(rooms, resume.offset)
        if found is None:
            for channel in channels:
                await self.leave_room(sid, channel)
            session.pid = new_pid()
            self.metrics.recoveries.labels(result="incomplete").inc()
            log.info("recovery: gap not kept", extra={"event": "recovery_failed"})
            return
        session.pid = resume.pid
        positions, missed = found
        for room_id in sorted(rooms):
            session.rooms.add(room_id)
            session.upto[room_id] = positions[room_id]
            await self.stores.presence.add(room_id, session.user_id, sid)
            await self.emit(
                p.USER_JOINED,
                {"userId": session.user_id, "roomId": room_id, "timestamp": now_ms()},
                room=p.room_channel(room_id),
                skip_sid=sid,
            )
        for message in missed:
            await self.emit(p.MESSAGE_RECEIVED, message, to=sid, ignore_queue=True)
        self.metrics.recoveries.labels(result="recovered").inc()
        log.debug(
            "recovered",
            extra={"event": "recovered", "rooms": len(rooms), "missed": len(missed)},
        )

    async def _may_rejoin(self, session: Session, rooms: Mapping[str, str]) -> bool:
        """Access is checked again: a room no longer allowed makes the recovery fail (the
        client then rejoins by itself and hears ``forbidden``)."""
        for room_id in rooms:
            if not await self.access.allowed(session.user_id, session.claims, room_id):
                return False
        return True
