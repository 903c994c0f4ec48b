"""The bounded outgoing queue of an Engine.IO socket, built on asyncio.Queue's public API."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from engineio import packet as eio_packet

PACKET_OVERHEAD_BYTES = 64
"""What one queued packet costs at least, whatever its payload."""


def packet_cost(item: Any) -> int:
    data = getattr(item, "data", None)
    size = len(data) if isinstance(data, str | bytes | bytearray) else 0
    return size + PACKET_OVERHEAD_BYTES


class BoundedSendQueue(asyncio.Queue[Any]):
    """An Engine.IO socket's outgoing queue that never blocks the sender.

    ``put``/``put_nowait`` of a packet that would take the queued bytes past ``limit`` drop
    it and call ``on_overflow(self)`` once; ``None`` (python-engineio's "stop the writer")
    and the CLOSE packet always fit. Only ``put_nowait``/``get_nowait`` are overridden:
    asyncio's ``put``/``get`` end in them, so the accounting sees every packet.
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
        if item is not None:
            self.bytes += packet_cost(item)

    def get_nowait(self) -> Any:
        item = super().get_nowait()
        if item is not None:
            self.bytes = max(0, self.bytes - packet_cost(item))
        return item

    def discard(self) -> None:
        """Drop every queued packet (the client is being thrown out)."""
        while not self.empty():
            self.get_nowait()
            self.task_done()
        self.bytes = 0
