"""Local fan-out: hand one encoded packet to every local socket of a room.

python-socketio's ``AsyncManager.emit`` creates one asyncio task per recipient; here a
broadcast encodes its packet once and hands it to each recipient with python-engineio's
``send_packet``; with the fast websocket driver, a text packet's websocket frame is built
once and written straight to each idle websocket receiver instead
(:func:`service.engine.transport.write_direct`). Recipients
are counted once per broadcast (no per-recipient metric call).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet

from ..metrics import Metrics
from ..protocol import MESSAGE_RECEIVED, PRIVATE_RECEIVED
from .transport import text_frame, write_direct

log = logging.getLogger(__name__)

TIMED_EVENTS = frozenset({MESSAGE_RECEIVED, PRIVATE_RECEIVED})


class FanoutMixin:
    """Delivery to this instance's sockets, shared by the local and the Redis manager."""

    metrics: Metrics | None = None
    server: Any
    rooms: dict[str, Any]

    async def deliver(
        self,
        event: str,
        data: Any,
        namespace: str,
        room: Any,
        skip_sid: Any,
        scope: str,
    ) -> int:
        """Send ``event`` to the local members of ``room``; return how many got it."""
        if namespace not in self.rooms:
            return 0
        args = list(data) if isinstance(data, tuple) else [] if data is None else [data]
        skip = set(skip_sid) if isinstance(skip_sid, list) else {skip_sid}
        encoded = self.server.packet_class(
            packet.EVENT, namespace=namespace, data=[event, *args]
        ).encode()
        frames = [
            eio_packet.Packet(eio_packet.MESSAGE, p)
            for p in (encoded if isinstance(encoded, list) else [encoded])
        ]
        # text packets (no binary attachments): one websocket frame for every receiver
        wire = text_frame(("4" + encoded).encode()) if isinstance(encoded, str) else None
        eio = self.server.eio
        sockets = eio.sockets
        sent = 0
        for sid, eio_sid in self.get_participants(namespace, room):  # type: ignore[attr-defined]
            if sid in skip:
                continue
            socket = sockets.get(eio_sid)
            if socket is None or socket.closed:
                continue
            sent += 1
            if wire is not None and write_direct(socket, wire):
                continue
            for frame in frames:
                try:
                    await eio.send_packet(eio_sid, frame)
                except Exception:  # a socket closing mid-broadcast must not stop the rest
                    log.debug("send to a closing socket failed", exc_info=True)
        self._observe(event, data, scope, sent)
        return sent

    def _observe(self, event: str, data: Any, scope: str, sent: int) -> None:
        metrics = self.metrics
        if metrics is None or not sent:
            return
        metrics.messages_sent.labels(event=event).inc(sent)
        if isinstance(data, tuple) and data:
            data = data[0]  # the payload; a room message's recovery offset follows it
        if event in TIMED_EVENTS and isinstance(data, dict):
            created = data.get("timestamp")
            if isinstance(created, int | float):
                lag = max(0.0, time.time() - created / 1000)
                metrics.delivery_latency.labels(scope=scope).observe(lag)


class RoomIndexMixin:
    """Each socket's rooms, so that a disconnect leaves them directly.

    python-socketio's ``basic_disconnect`` copies the namespace's room map and tests every
    room for the socket. Every socket has two rooms of its own (its sid and ``user:<id>``),
    so closing N connections cost O(N^2): ~0.9 ms of CPU per disconnect with 2,000 sockets,
    growing with the instance (a drain or a network blip closes them all at once). The index
    costs one small tuple per socket; this is ``basic_disconnect`` with the scan replaced by
    it (``tests/test_engine_shape.py`` pins the upstream code it follows).
    """

    rooms: dict[Any, Any]
    callbacks: dict[Any, Any]
    pending_connect: dict[Any, Any]
    pending_disconnect: dict[Any, Any]

    def _socket_rooms(self) -> dict[Any, dict[Any, tuple[Any, ...]]]:
        index: dict[Any, dict[Any, tuple[Any, ...]]] | None = self.__dict__.get("_room_index")
        if index is None:
            index = self.__dict__["_room_index"] = {}
        return index

    def basic_enter_room(self, sid: Any, namespace: Any, room: Any, eio_sid: Any = None) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid)  # type: ignore[misc]
        by_sid = self._socket_rooms().setdefault(namespace, {})
        current = by_sid.get(sid, ())
        if room not in current:
            by_sid[sid] = (*current, room)

    def basic_leave_room(self, sid: Any, namespace: Any, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        index = self._socket_rooms()
        by_sid = index.get(namespace)
        current = by_sid.get(sid) if by_sid is not None else None
        if by_sid is None or not current or room not in current:
            return
        rest = tuple(r for r in current if r != room)
        if rest:
            by_sid[sid] = rest
            return
        del by_sid[sid]
        if not by_sid:
            del index[namespace]

    def basic_disconnect(self, sid: Any, namespace: Any, **kwargs: Any) -> None:
        if namespace not in self.rooms:
            return
        by_sid = self._socket_rooms().get(namespace, {})
        for room in by_sid.get(sid, ()):
            self.basic_leave_room(sid, namespace, room)
        if sid in self.callbacks:
            del self.callbacks[sid]
        if namespace in self.pending_connect and sid in self.pending_connect[namespace]:
            self.pending_connect[namespace].remove(sid)
            if len(self.pending_connect[namespace]) == 0:
                del self.pending_connect[namespace]
        if namespace in self.pending_disconnect and sid in self.pending_disconnect[namespace]:
            self.pending_disconnect[namespace].remove(sid)
            if len(self.pending_disconnect[namespace]) == 0:
                del self.pending_disconnect[namespace]


class LocalManager(RoomIndexMixin, FanoutMixin, socketio.AsyncManager):
    """The embedded mode's manager: every room lives in this process."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        super().__init__()
        self.metrics = metrics

    async def wait_subscribed(self, room: str, wait_seconds: float = 1.0) -> bool:
        """Every room is local here: nothing to wait for (see ``RedisManager``)."""
        return True

    async def emit(  # type: ignore[override]
        self,
        event: str,
        data: Any,
        namespace: str,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        if callback is not None:
            await super().emit(event, data, namespace, room, skip_sid, callback, to, **kwargs)
            return
        await self.deliver(event, data, namespace, to or room, skip_sid, scope="local")
