"""A socket does not outlive its token: at ``exp`` + ``JWT_LEEWAY_SECONDS`` it is told why
(``auth:expired``) and disconnected.

The handshake is the only time a token is checked, so without this a socket opened with a
token about to expire (or revoked by letting it expire) keeps sending and reading for as
long as its transport lives. One timer per socket, cancelled when it disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .protocol import AUTH_EXPIRED

log = logging.getLogger(__name__)

__all__ = ["AUTH_EXPIRED", "EXPIRED_PAYLOAD", "ExpiryTimers"]

EXPIRED_PAYLOAD = {
    "code": "token_expired",
    "message": "the token expired: reconnect with a fresh one",
}
DISCONNECT_SECONDS = 1.0
"""How long telling the client may take before it is disconnected anyway."""


class ExpiryTimers:
    """Disconnects each socket when its token expires.

    ``emit(sid)`` tells the client, ``disconnect(sid)`` ends the socket; both are the
    namespace's. ``expired`` holds the sids being disconnected for this reason, so the
    disconnect handler can label them.
    """

    def __init__(
        self,
        leeway_seconds: float,
        emit: Callable[[str], Awaitable[Any]],
        disconnect: Callable[[str], Awaitable[Any]],
    ) -> None:
        self.leeway = leeway_seconds
        self._emit = emit
        self._disconnect = disconnect
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.expired: set[str] = set()

    def start(self, sid: str, expires_at: float) -> None:
        """Arm the timer of ``sid`` for a token that expires at ``expires_at`` (epoch s)."""
        delay = max(0.0, expires_at + self.leeway - time.time())
        loop = asyncio.get_running_loop()
        self._timers[sid] = loop.call_later(delay, self._fire, sid)

    def cancel(self, sid: str) -> bool:
        """Forget ``sid``; True when it is being disconnected because its token expired."""
        timer = self._timers.pop(sid, None)
        if timer is not None:
            timer.cancel()
        if sid in self.expired:
            self.expired.discard(sid)
            return True
        return False

    def __len__(self) -> int:
        return len(self._timers)

    def _fire(self, sid: str) -> None:
        if self._timers.pop(sid, None) is None:
            return
        self.expired.add(sid)
        task = asyncio.ensure_future(self._expire(sid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _expire(self, sid: str) -> None:
        log.info("token expired", extra={"event": "token_expired"})
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._emit(sid), DISCONNECT_SECONDS)
            # a client that stopped reading would hold disconnect() on its send queue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._disconnect(sid), DISCONNECT_SECONDS)
        except Exception:
            log.warning("expiry: disconnect failed", exc_info=True, extra={"event": "expiry_error"})
