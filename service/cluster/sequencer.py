"""Stored room messages reach this instance's members in stream order, once each, gaps filled.

A stored message comes to an instance two ways: from its own sender (after the store+publish
script answered) and through pub/sub (published by that same script, on any instance). Pub/sub
loses what is published while a subscriber is disconnected (a Redis restart, a Sentinel
failover) and may hand over a remote message after a later local one. So per room this
instance serves, the sequencer remembers the last id it delivered and

* drops what is not newer (already delivered: the echo of a local send, a gap fill);
* when a message names a previous entry newer than that, reads the missing entries from the
  stream first and delivers them in order (a gap: published while this instance was not
  listening, or still in flight);
* after the listener resubscribes, and every :data:`SWEEP_SECONDS`, compares each room's
  newest stream id with what it delivered and delivers the rest, so a gap is closed even when
  nobody sends again;
* when a gap cannot be read (Redis refused the read), holds the message that revealed it
  (it is stored: the next sweep, in :data:`RETRY_SECONDS`, delivers it after the gap) rather
  than deliver it and skip the gap for good.

Clients keep their sockets: the missing messages arrive as ordinary ``message:received``
events. Messages acked ``stored: false`` were delivered to this instance's members under a
local id; one whose script was already on its way to a Redis that froze may still be stored
when that Redis resumes: the outbox registers such messages (:meth:`Sequencer.delivered_unstored`)
and their stored copy is not delivered here a second time (other instances, which never had
it, deliver it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..expiring import prune
from ..protocol import MESSAGE_RECEIVED, parse_id, room_channel
from ..stores.history import HistoryUnavailable, Message

log = logging.getLogger(__name__)

SWEEP_SECONDS = 5.0
"""How often every served room is compared with its stream (one pipelined read)."""
FILL_LIMIT = 1000
"""At most this many missing messages are delivered per gap (older ones: ``since`` recovery)."""
RETRY_SECONDS = 0.5
"""After a gap could not be read from the stream, how soon a sweep tries again."""
UNSTORED_KEEP_SECONDS = 900.0
MAX_UNSTORED = 10_000
"""How long, and how many, messages delivered as ``stored: false`` are remembered."""

Deliver = Callable[[str, Message], Awaitable[object]]


class StreamReader(Protocol):
    async def latest(self, room_ids: list[str]) -> dict[str, str]: ...

    async def between(
        self, room_id: str, after: str, before: str | None = None, limit: int = FILL_LIMIT
    ) -> list[Message]: ...


class Sequencer:
    """Per served room: the last delivered id, a lock, and the gap filling described above."""

    def __init__(self, reader: StreamReader, deliver: Deliver) -> None:
        self._reader = reader
        self._deliver = deliver
        self._last: dict[str, tuple[int, int]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._unstored: OrderedDict[tuple[Any, ...], tuple[float, None]] = OrderedDict()
        self._retry: asyncio.TimerHandle | None = None
        self._sweeps: set[asyncio.Task[int]] = set()
        self.filled = 0  # messages delivered by gap filling (tests and logs)

    def delivered_unstored(self, room_id: str, message: Message) -> None:
        """``message`` went to this instance's members as ``stored: false``; if it is stored
        after all, do not deliver it here again."""
        now = time.monotonic()
        self._unstored[_identity(room_id, message)] = (now + UNSTORED_KEEP_SECONDS, None)
        prune(self._unstored, now, MAX_UNSTORED)

    async def _deliver_new(self, room_id: str, message: Message) -> None:
        if self._unstored and self._unstored.pop(_identity(room_id, message), None):
            return  # its members have it already, under the id of its local delivery
        await self._deliver(room_id, message)

    def serving(self, room_id: str) -> None:
        """A first local member joined: deliver from the next message on."""
        self._locks.setdefault(room_id, asyncio.Lock())

    async def start(self, room_id: str) -> None:
        """Start from the room's newest stored id (read once, when the first local member's
        subscription is confirmed): what is older is in that member's join history."""
        if room_id not in self._locks or room_id in self._last:
            return
        try:
            newest = await self._reader.latest([room_id])
        except HistoryUnavailable:
            return  # the first message delivered sets it
        if room_id in self._locks and room_id not in self._last:
            self._last[room_id] = parse_id(newest[room_id]) if room_id in newest else (0, 0)

    def forget(self, room_id: str) -> None:
        """The last local member left: a later member starts from its own join."""
        self._last.pop(room_id, None)
        self._locks.pop(room_id, None)

    async def arrived(self, room_id: str, message: Message, prev: str = "") -> None:
        """Deliver ``message`` (stored with id ``message["id"]``) unless already delivered,
        after any missing messages between the last delivered one and ``prev``."""
        lock = self._locks.get(room_id)
        if lock is None:
            return  # no local member (any more)
        try:
            key = parse_id(message.get("id"))
        except ValueError:
            return
        async with lock:
            last = self._last.get(room_id)
            if last is not None and key <= last:
                return
            if last is not None and prev and _newer(prev, last):
                if not await self._fill(room_id, last, before=message["id"]):
                    # the gap could not be read: delivering this one would skip it for good;
                    # it is stored too, so the retry delivers it after the gap, in order
                    self._retry_soon()
                    return
                last = self._last.get(room_id)
                if last is not None and key <= last:
                    return
            await self._deliver_new(room_id, message)
            if room_id in self._locks:
                self._last[room_id] = key

    async def sweep(self) -> int:
        """Close every gap between what was delivered and each room's stream; return how many
        messages that delivered."""
        rooms = list(self._last)
        if not rooms:
            return 0
        try:
            newest = await self._reader.latest(rooms)
        except HistoryUnavailable:
            return 0
        before = self.filled
        for room_id, newest_id in newest.items():
            last = self._last.get(room_id)
            lock = self._locks.get(room_id)
            if last is None or lock is None or not _newer(newest_id, last):
                continue
            async with lock:
                last = self._last.get(room_id)
                if last is not None and not await self._fill(room_id, last, before=None):
                    self._retry_soon()
        return self.filled - before

    def sweep_soon(self) -> None:
        """Run :meth:`sweep` in the background (after a resubscribe, every few seconds, and
        to retry a gap that could not be read)."""
        task = asyncio.ensure_future(self.sweep())
        self._sweeps.add(task)
        task.add_done_callback(self._sweeps.discard)
        task.add_done_callback(_log_failure)

    def _retry_soon(self) -> None:
        """A sweep in :data:`RETRY_SECONDS` (one pending at a time)."""
        if self._retry is None:
            self._retry = asyncio.get_running_loop().call_later(RETRY_SECONDS, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self.sweep_soon()

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        for task in list(self._sweeps):
            task.cancel()

    async def _fill(self, room_id: str, last: tuple[int, int], before: str | None) -> bool:
        """Deliver the stored messages after ``last`` (and before ``before``); False when
        the stream could not be read (nothing delivered)."""
        try:
            missed = await self._reader.between(room_id, f"{last[0]}-{last[1]}", before)
        except HistoryUnavailable as exc:
            log.warning("gap not filled", extra={"event": "gap_unfilled", "error": str(exc)})
            return False
        for message in missed:
            await self._deliver_new(room_id, message)
            self._last[room_id] = parse_id(message["id"])
            self.filled += 1
        if missed:
            log.info(
                "delivered messages missed on pub/sub",
                extra={"event": "gap_filled", "count": len(missed)},
            )
        return True


def _log_failure(task: asyncio.Task[int]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("gap sweep failed", exc_info=task.exception(), extra={"event": "gap_unfilled"})


def _identity(room_id: str, message: Message) -> tuple[Any, ...]:
    """What a message is, whatever id it was delivered under: who sent what, when, where."""
    return (room_id, message.get("userId"), message.get("timestamp"), message.get("message"))


def _newer(message_id: str, than: tuple[int, int]) -> bool:
    try:
        return parse_id(message_id) > than
    except ValueError:
        return False


def deliver_to_room(emit: Callable[..., Awaitable[object]]) -> Deliver:
    """Deliver through a namespace's ``emit`` to this instance's members only
    (``ignore_queue``: the store script already published it to the other instances), so a
    stored message reaches sockets exactly like any other emit of that namespace."""

    async def deliver(room_id: str, message: Message) -> None:
        await emit(MESSAGE_RECEIVED, message, room=room_channel(room_id), ignore_queue=True)

    return deliver
