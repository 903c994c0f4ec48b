"""The sequencer on a real Redis stream: stored messages reach an instance's members in
order, once, and a gap it could not read is retried, never skipped."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis import asyncio as aioredis

from service.cluster.sequencer import Sequencer
from service.metrics import Metrics
from service.stores import redis_stores
from service.stores.history import HistoryUnavailable, Message, RedisHistory
from service.stores.link import RedisLink

from .helpers import make_settings


@pytest.fixture
async def history(redis_url: str) -> AsyncIterator[RedisHistory]:
    client = aioredis.Redis.from_url(redis_url)
    link = RedisLink(client, Metrics(CollectorRegistry()), "sequencer")
    stores = redis_stores(make_settings(), link)
    assert isinstance(stores.history, RedisHistory)
    yield stores.history
    await client.aclose()


class FailingReads:
    """The real stream reader, whose first ``failures`` gap reads fail as a Redis error
    would make them (a stale connection right after a restart)."""

    def __init__(self, history: RedisHistory, failures: int) -> None:
        self.history = history
        self.failures = failures

    async def latest(self, room_ids: list[str]) -> dict[str, str]:
        return await self.history.latest(room_ids)

    async def between(self, room_id: str, after: str, before: str | None = None) -> list[Any]:
        if self.failures > 0:
            self.failures -= 1
            raise HistoryUnavailable("connection reset")
        return await self.history.between(room_id, after, before)


async def test_a_gap_that_cannot_be_read_is_retried_not_skipped(history: RedisHistory) -> None:
    room = f"gap-{uuid.uuid4().hex[:8]}"
    delivered: list[str] = []

    async def deliver(room_id: str, message: Message) -> None:
        delivered.append(message["id"])

    sequencer = Sequencer(FailingReads(history, failures=1), deliver)
    sequencer.serving(room)
    await sequencer.start(room)
    posted = []
    for n in range(3):
        message = {"roomId": room, "userId": "u", "message": f"m{n}", "timestamp": n}
        posted.append(await history.post(room, message, nonce=history.nonce()))
    try:
        # pub/sub lost m0 and m1 (a restart); m2 arrives naming m1 as the entry before it
        await sequencer.arrived(room, posted[2].message, posted[2].prev)
        assert delivered == [], "m2 was delivered past a gap nobody could read"
        for _ in range(100):
            if len(delivered) == 3:
                break
            await asyncio.sleep(0.05)
        assert delivered == [p.message["id"] for p in posted]  # in order, once each
        await sequencer.arrived(room, posted[2].message, posted[2].prev)  # a late echo
        assert len(delivered) == 3
    finally:
        sequencer.close()
