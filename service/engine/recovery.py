"""The ``pid`` in python-socketio's CONNECT answer (Socket.IO v4.6 connection state recovery).

socket.io's server answers a namespace CONNECT with ``{sid, pid}``; the official client keeps
``pid`` and sends ``{pid, offset}`` in its next CONNECT, and sets ``socket.recovered`` when
the server answers with the same ``pid`` again. python-socketio builds that answer inside
``AsyncServer._handle_connect`` with ``{sid}`` only and has no hook for it, so the server's
``_send_packet`` is wrapped: a CONNECT answer for ``namespace`` gets the ``pid`` that
``pid_for(sid)`` names; every other packet passes untouched. The CONNECT answer is sent after
the connect handler returned, so the handler decides the pid.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import socketio
from socketio import packet

log = logging.getLogger(__name__)

_INSTALLED = "_service_connect_pid"


def install_connect_pid(
    sio: socketio.AsyncServer, namespace: str, pid_for: Callable[[str], str | None]
) -> bool:
    """Add ``pid`` to CONNECT answers of ``namespace``; idempotent.

    Returns False, and leaves python-socketio's stock behaviour, when the library no longer
    has the method this relies on (recovery is then simply never offered to clients).
    """
    if getattr(sio, _INSTALLED, False):
        return True
    original = getattr(sio, "_send_packet", None)
    if original is None or not inspect.iscoroutinefunction(original):
        log.warning(
            "python-socketio changed: connection state recovery is off",
            extra={"event": "recovery_unavailable"},
        )
        return False

    async def send_packet(eio_sid: str, pkt: Any) -> Any:
        if (
            pkt.packet_type == packet.CONNECT
            and (pkt.namespace or "/") == namespace
            and isinstance(pkt.data, dict)
            and isinstance(pkt.data.get("sid"), str)
        ):
            pid = pid_for(pkt.data["sid"])
            if pid is not None:
                pkt.data = {**pkt.data, "pid": pid}
        return await original(eio_sid, pkt)

    sio._send_packet = send_packet  # type: ignore[method-assign]
    setattr(sio, _INSTALLED, True)
    return True


def transport_ended(sio: socketio.AsyncServer, sid: str, namespace: str) -> bool:
    """True when ``sid`` leaves ``namespace`` because its Engine.IO connection is closing.

    python-engineio names a client's Engine.IO close packet ``client disconnect``, the same
    reason as a Socket.IO DISCONNECT (the client leaving on purpose); socket.io's server
    calls the former ``transport close``, after which the client comes back. The difference
    is visible only here: on a DISCONNECT packet the Engine.IO socket is still open.
    """
    eio_sid = sio.manager.eio_sid_from_sid(sid, namespace)
    sock = sio.eio.sockets.get(eio_sid) if eio_sid is not None else None
    return sock is None or bool(getattr(sock, "closing", False) or getattr(sock, "closed", False))
