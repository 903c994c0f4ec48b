"""Room messages in cluster mode: stored and published in one step, held through short outages.

``{ok: true}`` on ``message:send`` means the message is in the room's stream and was published
to every instance (one script, one round trip: :meth:`RedisHistory.post`), and this
instance's members got it. When Redis does not answer (restart, Sentinel failover, a frozen
process), messages are kept here, in the order they came, for up to
``REDIS_OUTAGE_BUFFER_SECONDS`` counted from the start of the outage; their acks wait. As soon as
Redis answers again they are stored and published in that order. Past the window, or when the
buffer is full, :meth:`Outbox.post` raises :class:`HistoryUnavailable` and the caller falls back
to local-only delivery (``stored: false``). A Redis that answers but refuses writes
(``maxmemory``) raises :class:`HistoryFull` at once: waiting would not help.

A try that failed may still have run (a timed-out script runs when a frozen Redis resumes), so
every retry carries the first try's nonce and the script returns the stored entry instead of
storing it twice. Retries start only after a PING answered, i.e. after Redis processed
whatever was already in its sockets.

The window is also kept below ``PING_TIMEOUT - REDIS_TIMEOUT_SECONDS - 1``: while a client's
ack is held, its next packets (pongs included) wait behind it.

``REDIS_WAIT_REPLICAS=N``: the script is followed by ``WAIT N`` on the same connection in the
same round trip; an ack whose wait timed out says ``replicated: false``.

With a ``limiter`` (not on Redis Cluster, where the user's bucket and the room live in different
slots) the script also takes the sender's rate-limit token, so a message costs one round trip;
a message that does not reach the script takes its token from the local bucket instead (the
limiter's own fallback while Redis is down), so an outage never lifts the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..config import Settings
from ..protocol import room_channel
from ..stores.history import HistoryFull, HistoryUnavailable, Message, RedisHistory
from ..stores.ratelimit import Charge, RateLimited, RedisRateLimiter
from .manager import RedisManager

log = logging.getLogger(__name__)

MAX_BUFFERED_MESSAGES = 10_000
MAX_BUFFERED_BYTES = 16 * 1024 * 1024
"""The buffer's bound in memory; past it, messages fall back to local-only at once."""
RETRY_SECONDS = 0.05
DEDUPE_MARGIN_MS = 5_000
"""A first try is looked for from this long before it was sent (clock skew with Redis)."""

Ack = dict[str, Any]


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(eq=False)
class _Pending:
    room_id: str
    message: Message
    nonce: str
    size: int
    tried_at_ms: int | None
    """When an earlier try was sent (it may have been stored): retries look for it."""
    done: asyncio.Future[Ack] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    abandoned: bool = False


class Outbox:
    """``post()`` for ``message:send`` in cluster mode (see the module docstring)."""

    def __init__(
        self,
        history: RedisHistory,
        manager: RedisManager,
        settings: Settings,
        limiter: RedisRateLimiter | None = None,
    ) -> None:
        self.history = history
        self.manager = manager
        self.limiter = None if manager.sharded else limiter
        # a held ack holds that client's next packets too (one client's events are handled
        # in order), its pongs included: the connection must not hit PING_TIMEOUT meanwhile
        self.window = min(
            settings.redis_outage_buffer_seconds,
            max(0.0, settings.ping_timeout - settings.redis_timeout_seconds - 1),
        )
        # WAIT counts the writes of the connection it is sent on: a cluster pipeline does not
        # promise one connection, so replicas are not awaited on Redis Cluster
        self.wait_replicas = 0 if manager.sharded else settings.redis_wait_replicas
        self.wait_timeout_ms = max(10, int(min(1.0, settings.redis_timeout_seconds / 2) * 1000))
        self.ping_timeout = min(1.0, settings.redis_timeout_seconds)
        self._queue: deque[_Pending] = deque()
        self._bytes = 0
        self._outage_since: float | None = None
        self._flusher: asyncio.Task[None] | None = None

    @property
    def charges_rate_limit(self) -> bool:
        """Whether :meth:`post` takes the sender's rate-limit token (the caller must not)."""
        return self.limiter is not None

    async def post(self, room_id: str, message: Message) -> Ack:
        """Store, publish and deliver locally; return the ack's fields (``id``, maybe
        ``replicated: false``). Raises :class:`HistoryUnavailable` when it cannot be stored
        in time (the caller delivers locally and acks ``stored: false``), and
        :class:`RateLimited` when the sender has no token left (nothing sent)."""
        nonce = self.history.nonce()
        tried_at: int | None = None
        began = time.monotonic()  # a failed try's time counts against the window
        if not self._queue and self.manager.available:
            tried_at = _now_ms()
            charge = self.limiter.charge(message["userId"]) if self.limiter else None
            try:
                return await self._store(room_id, message, nonce, None, charge)
            except HistoryFull:
                self._take_locally(message)
                raise
            except HistoryUnavailable as exc:
                log.warning(
                    "store failed, buffering", extra={"event": "redis_outage", "error": str(exc)}
                )
        self._take_locally(message)
        return await self._buffer(_Pending(room_id, message, nonce, 0, tried_at), began)

    def _take_locally(self, message: Message) -> None:
        """The token of a message the script did not run for, from the local bucket."""
        if self.limiter is not None:
            wait = self.limiter.fallback.take(message["userId"])
            if wait > 0:
                raise RateLimited(wait)

    async def _store(
        self,
        room_id: str,
        message: Message,
        nonce: str,
        tried_at_ms: int | None,
        charge: Charge | None = None,
    ) -> Ack:
        posted = await self.history.post(
            room_id,
            message,
            nonce=nonce,
            channel=self.manager.channel_for(room_channel(room_id)),
            sharded=self.manager.sharded,
            dedupe_from_ms=tried_at_ms - DEDUPE_MARGIN_MS if tried_at_ms is not None else None,
            wait_replicas=self.wait_replicas,
            wait_timeout_ms=self.wait_timeout_ms,
            charge=charge,
        )
        self._outage_since = None
        if self.manager.sequencer is not None:
            await self.manager.sequencer.arrived(room_id, posted.message, posted.prev)
        ack: Ack = {"id": posted.message["id"]}
        if self.wait_replicas and (posted.replicas or 0) < self.wait_replicas:
            ack["replicated"] = False
        return ack

    def _outage_start(self, now: float) -> float:
        """When the current outage began (a new one if Redis answered since the last)."""
        since, back = self._outage_since, self.manager.back_at
        if since is None or (back > since and not self._queue):
            self._outage_since = since = now
        return since

    async def _buffer(self, pending: _Pending, began: float) -> Ack:
        now = time.monotonic()
        deadline = self._outage_start(began) + self.window
        pending.size = len(pending.message.get("message", "")) + 256
        if (
            now >= deadline
            or len(self._queue) >= MAX_BUFFERED_MESSAGES
            or self._bytes + pending.size > MAX_BUFFERED_BYTES
        ):
            self._given_up(pending)
            raise HistoryUnavailable("redis is down longer than REDIS_OUTAGE_BUFFER_SECONDS")
        self._queue.append(pending)
        self._bytes += pending.size
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        try:
            return await asyncio.wait_for(asyncio.shield(pending.done), deadline - now)
        except TimeoutError:
            if pending.done.done():
                return pending.done.result()
            pending.abandoned = True
            self._given_up(pending)
            raise HistoryUnavailable("not stored within REDIS_OUTAGE_BUFFER_SECONDS") from None

    def _given_up(self, pending: _Pending) -> None:
        """The caller delivers it locally as ``stored: false``; a try already sent to a frozen
        Redis may still store it later: the sequencer then skips it here."""
        if self.manager.sequencer is not None:
            self.manager.sequencer.delivered_unstored(pending.room_id, pending.message)

    def _pop(self) -> _Pending:
        pending = self._queue.popleft()
        self._bytes -= pending.size
        return pending

    async def _answers(self) -> bool:
        try:
            await asyncio.wait_for(self.manager.redis.ping(), self.ping_timeout)
        except Exception:
            return False
        return True

    async def _flush(self) -> None:
        """Store the buffered messages in order, once Redis answers a PING."""
        while self._queue:
            head = self._queue[0]
            if head.abandoned or head.done.done():
                self._pop()
                continue
            if not await self._answers():
                await asyncio.sleep(RETRY_SECONDS)
                continue
            if head.abandoned:
                continue
            tried_at = _now_ms()
            try:
                ack = await self._store(head.room_id, head.message, head.nonce, head.tried_at_ms)
            except HistoryFull as exc:
                self._pop()
                if not head.done.done() and not head.abandoned:
                    head.done.set_exception(exc)
                continue
            except HistoryUnavailable:
                if head.tried_at_ms is None:
                    head.tried_at_ms = tried_at
                await asyncio.sleep(RETRY_SECONDS)
                continue
            self._pop()
            if not head.done.done():
                head.done.set_result(ack)
        log.info("outage buffer flushed", extra={"event": "redis_outage_flushed"})

    async def close(self) -> None:
        """Fail what is still waiting (shutdown)."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(BaseException):
                await self._flusher
        while self._queue:
            pending = self._pop()
            if not pending.done.done() and not pending.abandoned:
                pending.done.set_exception(HistoryUnavailable("shutting down"))
