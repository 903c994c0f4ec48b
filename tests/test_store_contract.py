"""One contract, two backends: history, presence and rate limits behave the same in memory
(embedded mode) and on a real Redis (cluster mode), so a client never sees which it got."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry
from redis import asyncio as aioredis

from service.metrics import Metrics
from service.protocol import parse_id
from service.stores import Stores, memory_stores, redis_stores
from service.stores.link import RedisLink

from .helpers import make_settings

SIZE = 3
EVENTS = 3
WINDOW_SECONDS = 0.6


@pytest.fixture(params=["memory", "redis"])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[Stores]:
    settings = make_settings(
        history_size=SIZE, rate_limit_events=EVENTS, rate_limit_window_seconds=WINDOW_SECONDS
    )
    if request.param == "memory":
        yield memory_stores(settings)
        return
    client = aioredis.Redis.from_url(request.getfixturevalue("redis_url"))
    link = RedisLink(client, Metrics(CollectorRegistry()), "contract")
    yield redis_stores(settings, link)
    await client.aclose()


def message(text: str) -> dict[str, object]:
    return {"roomId": "r", "userId": "u", "message": text, "timestamp": 1}


# -- history --------------------------------------------------------------------------------


async def test_history_ids_are_ordered_and_recent_is_oldest_first(stores: Stores) -> None:
    stored = [await stores.history.append("r", message(f"m{n}")) for n in range(SIZE)]
    ids = [parse_id(m["id"]) for m in stored]
    assert ids == sorted(ids) and len(set(ids)) == SIZE
    assert stored[0] == {"id": stored[0]["id"], **message("m0")}
    assert await stores.history.recent("r", 10) == stored
    assert await stores.history.recent("r", 2) == stored[1:]
    assert await stores.history.recent("r", 10, before=stored[2]["id"]) == stored[:2]
    assert await stores.history.recent("r", 0) == []


async def test_history_keeps_the_last_size_messages_per_room(stores: Stores) -> None:
    stored = [await stores.history.append("r", message(f"m{n}")) for n in range(SIZE + 2)]
    await stores.history.append("other", message("elsewhere"))
    assert await stores.history.recent("r", 10) == stored[-SIZE:]
    assert [m["message"] for m in await stores.history.recent("other", 10)] == ["elsewhere"]
    assert await stores.history.recent("nobody-here", 10) == []


async def test_history_since_tells_a_complete_recovery_from_a_gap(stores: Stores) -> None:
    stored = [await stores.history.append("r", message(f"m{n}")) for n in range(SIZE + 2)]
    kept = stored[-SIZE:]
    recovery = await stores.history.since("r", kept[0]["id"])
    assert recovery.messages == kept[1:] and recovery.complete
    recovery = await stores.history.since("r", kept[-1]["id"])
    assert recovery.messages == [] and recovery.complete
    recovery = await stores.history.since("r", stored[0]["id"])  # its successor was dropped
    assert recovery.messages == kept and not recovery.complete
    assert (await stores.history.since("empty", "0-0")).complete
    assert not (await stores.history.since("empty", stored[0]["id"])).complete


# -- presence -------------------------------------------------------------------------------


async def test_presence_lists_distinct_users_until_their_last_socket_leaves(
    stores: Stores,
) -> None:
    presence = stores.presence
    await presence.add("r", "bob", "s1")
    await presence.add("r", "alice", "s2")
    await presence.add("r", "bob", "s3")
    await presence.add("other", "carol", "s4")
    assert await presence.users("r") == ["alice", "bob"]
    await presence.remove("r", "bob", "s1")
    assert await presence.users("r") == ["alice", "bob"]  # bob still has s3 there
    await presence.remove("r", "bob", "s3")
    await presence.remove("r", "nobody", "s9")  # unknown entries are ignored
    assert await presence.users("r") == ["alice"]
    assert await presence.users("other") == ["carol"]
    assert await presence.users("empty") == []


# -- rate limits ----------------------------------------------------------------------------


async def test_rate_limit_is_a_token_bucket_per_user(stores: Stores) -> None:
    limiter = stores.limiter
    assert [await limiter.acquire("u") for _ in range(EVENTS)] == [0] * EVENTS
    wait = await limiter.acquire("u")
    assert 0 < wait <= WINDOW_SECONDS / EVENTS + 0.05  # one token comes back per 0.2 s
    assert await limiter.acquire("someone-else") == 0
    await asyncio.sleep(WINDOW_SECONDS / EVENTS + 0.1)
    assert await limiter.acquire("u") == 0
    assert await limiter.acquire("u") > 0
