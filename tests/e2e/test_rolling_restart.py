"""A rolling restart under traffic, the way a Deployment rollout does it: one pod at a time
gets SIGTERM (readiness drops at once, so the LB stops sending it new sessions; then
``server:shutdown`` and a drain), exits 0, comes back on the same address and turns ready
before the next one goes. Reconnecting clients (``service.client.ChatClient`` through the
LB, each with its own cookie jar) chat all along; each ends up with exactly the messages
stored in the room's history, in order, none lost and none twice."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from service.client import (
    CONNECTED,
    DISCONNECTED,
    RECOVERED,
    AckTimeout,
    Backoff,
    ChatClient,
    Disconnected,
)

from ..helpers import token
from .topology import INSTANCE_ENV, Topology, id_key

pytestmark = pytest.mark.slow

TRANSPORTS: dict[str, tuple[str, ...]] = {
    "websocket": ("websocket",),
    "polling": ("polling",),
    "upgrade": ("polling", "websocket"),
}
PER_TRANSPORT = 3
SEND_EVERY = 0.3
CHAT_BETWEEN_RESTARTS = 1.5


@dataclass
class Member:
    """One user's client and everything it saw."""

    user: str
    transport: str
    client: ChatClient
    received: list[str] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)
    failed_sends: int = 0
    shutdown_notices: int = 0
    recovered: list[dict[str, Any]] = field(default_factory=list)
    lost_at: float | None = None
    reconnect_seconds: list[float] = field(default_factory=list)

    def watch(self, room: str) -> None:
        def on_message(message: dict[str, Any]) -> None:
            if message.get("roomId") == room:
                self.received.append(message["id"])

        def on_lost(_: Any) -> None:
            self.lost_at = time.monotonic()

        def on_connected(info: dict[str, Any]) -> None:
            if info.get("reconnect") and self.lost_at is not None:
                self.reconnect_seconds.append(time.monotonic() - self.lost_at)
                self.lost_at = None

        def on_shutdown(_: Any) -> None:
            self.shutdown_notices += 1

        self.client.on("message:received", on_message)
        self.client.on(DISCONNECTED, on_lost)
        self.client.on(CONNECTED, on_connected)
        self.client.on(RECOVERED, self.recovered.append)
        self.client.on("server:shutdown", on_shutdown)

    async def chat(self, room: str, stop: asyncio.Event) -> None:
        rng = random.Random(self.user)
        n = 0
        while not stop.is_set():
            try:
                self.acked.append((await self.client.send(room, f"{self.user}:{n}"))["id"])
            except (Disconnected, AckTimeout):
                self.failed_sends += 1  # maybe stored, maybe not: the history decides
            n += 1
            await asyncio.sleep(SEND_EVERY * rng.uniform(0.5, 1.5))


def stream_key(room: str) -> str:
    return f"sio:history:{{{room}}}"  # REDIS_PREFIX "sio", one Stream per room


def inversions(ids: list[str]) -> int:
    """Messages that arrived after one with a larger id (live delivery is in arrival order:
    a message stored on another instance can arrive after a later one stored locally)."""
    highest, late = (0, -1), 0
    for key in map(id_key, ids):
        if key < highest:
            late += 1
        highest = max(highest, key)
    return late


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def test_rolling_restart_loses_and_duplicates_nothing(topology: Topology) -> None:
    room = f"rolling-{uuid.uuid4().hex[:8]}"
    members: list[Member] = []
    async with AsyncExitStack() as stack:
        for kind, transports in TRANSPORTS.items():
            for n in range(PER_TRANSPORT):
                session = await stack.enter_async_context(
                    aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
                )
                user = f"{kind}{n}"
                client = ChatClient(
                    topology.url,
                    token(user),
                    http_session=session,
                    transports=transports,
                    backoff=Backoff(initial=0.2, maximum=2.0),
                )
                member = Member(user, kind, client)
                member.watch(room)
                await client.connect()
                stack.push_async_callback(client.close)
                assert (await client.join(room))["history"] == []
                members.append(member)
        # every pod has clients to lose (HAProxy's round robin is not strictly cyclic after
        # servers went down and up in earlier tests, so the split is not always 3/3/3)
        spread = await asyncio.to_thread(topology.connections)
        assert all(count >= 1 for count in spread.values()), spread

        stop = asyncio.Event()
        chatting = [asyncio.create_task(m.chat(room, stop)) for m in members]
        await asyncio.sleep(CHAT_BETWEEN_RESTARTS)
        timeline = []
        for instance in topology.instances:
            before = await asyncio.to_thread(topology.connections)
            started = time.monotonic()
            code = await asyncio.to_thread(instance.terminate, 20)
            stopped = time.monotonic() - started
            assert code == 0, instance.log_tail()
            await asyncio.to_thread(instance.start)
            await asyncio.to_thread(instance.wait_ready)
            await asyncio.to_thread(topology.lb.wait_all_up)
            back = time.monotonic() - started
            timeline.append((instance.instance_id, before, round(stopped, 1), round(back, 1)))
            await asyncio.sleep(CHAT_BETWEEN_RESTARTS)
        stop.set()
        await asyncio.gather(*chatting)

        client = aioredis.Redis.from_url(topology.redis.url)
        try:
            stored = [i.decode() for i, _ in await client.xrange(stream_key(room))]
        finally:
            await client.aclose()

        async def converged() -> None:
            while any(sorted(m.received, key=id_key) != stored for m in members):
                await asyncio.sleep(0.1)

        try:
            await asyncio.wait_for(converged(), 20)
        except TimeoutError:
            pass  # the assertions below say who differs and how
        await asyncio.sleep(0.5)  # a late duplicate would show up by now
        presence = await members[0].client.presence(room)

    acked = [i for m in members for i in m.acked]
    assert len(stored) == len(set(stored)) and set(acked) <= set(stored)
    assert len(acked) > 100, "too little traffic to mean anything"
    for m in members:
        missing = [i for i in stored if i not in set(m.received)]
        duplicated = len(m.received) - len(set(m.received))
        assert not missing and not duplicated, (m.user, len(missing), duplicated)
        assert m.client.reconnects >= 1, f"{m.user} never had to move"
        assert all(r["recovered"] for r in m.recovered), (m.user, m.recovered)
    assert sorted(presence["users"]) == sorted(m.user for m in members)

    late = sum(inversions(m.received) for m in members)
    durations = [d for m in members for d in m.reconnect_seconds]
    assert len(durations) >= len(members)
    drain = (
        float(INSTANCE_ENV["SHUTDOWN_DELAY_SECONDS"]),
        float(INSTANCE_ENV["SHUTDOWN_DRAIN_SECONDS"]),
    )
    lines = [
        f"\nrolling restart: {len(topology.instances)} pods, {len(members)} clients, "
        f"{len(stored)} messages stored, {len(acked)} acked, "
        f"{sum(m.failed_sends for m in members)} sends failed (disconnected) and retried later",
        f"  deliveries out of id order (cross-instance races): {late} "
        f"of {sum(len(m.received) for m in members)}",
        f"  shutdown delay {drain[0]:g} s, drain {drain[1]:g} s; per pod "
        "(id, connections before, s to exit, s to ready again):",
        *(f"    {t}" for t in timeline),
        f"  reconnects: {len(durations)}  min {min(durations):.3f} s  "
        f"p50 {statistics.median(durations):.3f} s  p90 {percentile(durations, 0.9):.3f} s  "
        f"max {max(durations):.3f} s",
    ]
    for kind in TRANSPORTS:
        mine = [d for m in members if m.transport == kind for d in m.reconnect_seconds]
        notices = sum(m.shutdown_notices for m in members if m.transport == kind)
        lines.append(
            f"    {kind:9} n={len(mine):2}  p50 {statistics.median(mine):.3f} s  "
            f"max {max(mine):.3f} s  server:shutdown notices {notices}"
        )
    print("\n".join(lines))
