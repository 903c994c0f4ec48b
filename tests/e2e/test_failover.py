"""Redis fails over, freezes, restarts or fills up under chat traffic: nothing acked is lost.

Three pods behind the sticky LB, two chat clients per pod (polling upgraded to websocket,
each with its own cookie jar) in one room; one sender per pod posts every
:data:`SEND_EVERY` seconds. For each event (:mod:`.failover` describes the topologies):

* SIGKILL of the Sentinel master (failover to a replica, the old master back as a replica);
* SIGSTOP of the Sentinel master for 10 s (failover while the old one is frozen, SIGCONT);
* a standalone Redis killed and started again 3 s later;
* the master filled to ``maxmemory`` (``noeviction``) for 3 s, then the cap lifted;

the test measures the time from the event until a message sent after it reaches a member on
another pod, the messages acked ``ok`` that some member never got, duplicates, and whether
every pod stayed ready. Figures are printed (and written to ``RELIABILITY_REPORT_DIR``);
docs/reliability.md records them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
import socketio

from ..helpers import require_tool, token
from .failover import FailoverTopology

pytestmark = pytest.mark.slow

SEND_EVERY = 0.06
PER_POD = 2
BUFFER_SECONDS = 5.0
COOKIE = "SIOSTICKY"


@pytest.fixture(scope="module")
def sentinel_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FailoverTopology]:
    require_tool("haproxy", "apt-get install -y --no-install-recommends haproxy")
    topology = FailoverTopology.start(tmp_path_factory.mktemp("sentinel"), "sentinel")
    yield topology
    topology.stop()


@pytest.fixture(scope="module")
def standalone_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FailoverTopology]:
    require_tool("haproxy", "apt-get install -y --no-install-recommends haproxy")
    topology = FailoverTopology.start(tmp_path_factory.mktemp("standalone"), "standalone")
    yield topology
    topology.stop()


@dataclass
class Sent:
    text: str
    pod: str
    at: float
    acked_at: float
    ack: dict[str, Any]


@dataclass
class Member:
    user: str
    pod: str
    sio: socketio.AsyncClient
    received: list[tuple[str, float]] = field(default_factory=list)  # (id, when)


@dataclass
class Room:
    """The chat: members on every pod, one sender per pod, readiness watched throughout."""

    name: str
    members: list[Member]
    sent: list[Sent] = field(default_factory=list)
    not_ready: list[tuple[str, int]] = field(default_factory=list)
    lb_degraded: int = 0

    def senders(self) -> list[Member]:
        return [next(m for m in self.members if m.pod == pod) for pod in self.pods()]

    def pods(self) -> list[str]:
        return sorted({m.pod for m in self.members})

    async def send_loop(self, sender: Member, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            text = f"{sender.user}:{n}"
            started = time.monotonic()
            try:
                ack = await sender.sio.call(
                    "message:send", {"roomId": self.name, "message": text}, timeout=15
                )
            except Exception as exc:  # a lost ack is a finding, not a crash
                ack = {"ok": False, "error": {"code": type(exc).__name__}}
            self.sent.append(Sent(text, sender.pod, started, time.monotonic(), ack))
            await asyncio.sleep(SEND_EVERY)

    async def watch_readiness(self, topology: FailoverTopology, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                for pod in topology.pods:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with http.get(f"{pod.url}/readyz", timeout=1) as resp:
                            if resp.status != 200:
                                self.not_ready.append((pod.instance_id, resp.status))
                if not await asyncio.to_thread(topology.lb.all_up):
                    self.lb_degraded += 1
                await asyncio.sleep(0.1)


async def join_members(topology: FailoverTopology, room: str, stack: Any) -> list[Member]:
    """Clients through the LB until every pod has :data:`PER_POD` of them."""
    members: list[Member] = []
    per_pod: Counter[str] = Counter()
    attempts = 0
    while min((per_pod[p.instance_id] for p in topology.pods), default=0) < PER_POD:
        attempts += 1
        assert attempts < 40, f"the LB did not spread clients: {per_pod}"
        jar = aiohttp.CookieJar(unsafe=True)
        session = await stack.enter_async_context(aiohttp.ClientSession(cookie_jar=jar))
        sio = socketio.AsyncClient(reconnection=False, http_session=session)
        user = f"u{attempts}"
        await sio.connect(topology.url, auth={"token": token(user)}, wait_timeout=10)
        stack.push_async_callback(_close, sio)
        pod = next(c.value for c in jar if c.key == COOKIE)
        if per_pod[pod] >= PER_POD:
            continue  # this pod has enough: leave the client idle
        member = Member(user, pod, sio)
        sio.on("message:received", _recorder(member, room))
        ack = await sio.call("join:room", room, timeout=10)
        assert ack["ok"], ack
        per_pod[pod] += 1
        members.append(member)
    return members


def _recorder(member: Member, room: str) -> Callable[..., None]:
    def on_message(message: dict[str, Any], *offset: Any) -> None:
        """(With connection state recovery on, the message id follows as the offset.)"""
        if message.get("roomId") == room:
            member.received.append((message["id"], time.monotonic()))

    return on_message


async def _close(sio: socketio.AsyncClient) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(sio.disconnect(), 5)


@contextlib.asynccontextmanager
async def chatting(topology: FailoverTopology) -> AsyncIterator[Room]:
    async with contextlib.AsyncExitStack() as stack:
        name = f"ha-{uuid.uuid4().hex[:8]}"
        room = Room(name, await join_members(topology, name, stack))
        stop = asyncio.Event()
        tasks = [asyncio.create_task(room.send_loop(s, stop)) for s in room.senders()]
        tasks.append(asyncio.create_task(room.watch_readiness(topology, stop)))
        try:
            yield room
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await converge(room)


async def converge(room: Room, timeout: float = 15) -> None:
    """Until every member has every message acked ok, or the timeout (then the report says)."""
    deadline = time.monotonic() + timeout
    wanted = {s.ack["id"] for s in room.sent if s.ack.get("ok")}
    while time.monotonic() < deadline:
        if all(wanted <= {i for i, _ in m.received} for m in room.members):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # a late duplicate would show by now


async def stream_ids(topology: FailoverTopology, room: Room) -> set[str]:
    """The ids the room's stream holds on the master (where a missing message was lost)."""
    master = aioredis.Redis(port=await asyncio.to_thread(topology.master_port))
    try:
        ids: set[str] = set()
        async for key in master.scan_iter(match=f"*:history:{{{room.name}}}"):
            ids.update(entry_id.decode() for entry_id, _ in await master.xrange(key))
        return ids
    finally:
        await master.aclose()


def report(
    room: Room, event: str, fault_at: float, ended_at: float, stored: set[str]
) -> dict[str, Any]:
    sent_after = {s.ack.get("id"): s for s in room.sent if s.at >= fault_at and s.ack.get("ok")}
    back = [
        when - fault_at
        for m in room.members
        for message_id, when in m.received
        if message_id in sent_after and sent_after[message_id].pod != m.pod
    ]
    ok = [s for s in room.sent if s.ack.get("ok")]
    missing = [
        s for s in ok if any(s.ack["id"] not in {i for i, _ in m.received} for m in room.members)
    ]
    duplicates = sum(len(m.received) - len({i for i, _ in m.received}) for m in room.members)
    acks: Counter[str] = Counter()
    for s in room.sent:
        if not s.ack.get("ok"):
            acks[f"error:{s.ack['error']['code']}"] += 1
        elif s.ack.get("stored") is False:
            acks["ok_not_stored"] += 1
        else:
            acks["ok_stored"] += 1
        if s.ack.get("replicated") is False:
            acks["replicated_false"] += 1
    during = [s.acked_at - s.at for s in room.sent if fault_at <= s.at <= ended_at]
    return {
        "event": event,
        "event_seconds": round(ended_at - fault_at, 2),
        "members": len(room.members),
        "pods": len(room.pods()),
        "messages_sent": len(room.sent),
        "acks": dict(acks),
        "ack_max_during_event_s": round(max(during), 2) if during else None,
        "cross_instance_delivery_back_after_s": round(min(back), 2) if back else None,
        "acked_ok_missing_for_some_member": len(missing),
        "acked_stored_missing_for_some_member": sum(
            1 for s in missing if s.ack.get("stored") is not False
        ),
        "missing": [
            {
                "id": s.ack["id"],
                "pod": s.pod,
                "sent_s": round(s.at - fault_at, 2),
                "acked_s": round(s.acked_at - fault_at, 2),
                "in_stream": s.ack["id"] in stored,
                "not_on": sorted(
                    m.pod for m in room.members if s.ack["id"] not in {i for i, _ in m.received}
                ),
            }
            for s in missing
        ],
        "duplicates": duplicates,
        "not_ready_samples": len(room.not_ready),
        "lb_degraded_samples": room.lb_degraded,
    }


def write_report(name: str, data: dict[str, Any]) -> None:
    print(f"\n{name}:", json.dumps(data, indent=1))
    directory = os.environ.get("RELIABILITY_REPORT_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"{name}.json"), "w") as out:
            json.dump(data, out, indent=1)


async def run_event(
    topology: FailoverTopology, name: str, fault: Callable[[], Awaitable[None]]
) -> dict[str, Any]:
    await asyncio.to_thread(topology.heal)
    async with chatting(topology) as room:
        await asyncio.sleep(1.5)
        fault_at = time.monotonic()
        await fault()
        ended_at = time.monotonic()
        await asyncio.sleep(4)  # traffic after the event
    data = report(room, name, fault_at, ended_at, await stream_ids(topology, room))
    write_report(f"failover-{name}", data)
    await asyncio.to_thread(topology.heal)
    return data


def assert_nothing_lost(data: dict[str, Any]) -> None:
    assert data["duplicates"] == 0, data
    assert data["not_ready_samples"] == 0 and data["lb_degraded_samples"] == 0, data
    assert data["cross_instance_delivery_back_after_s"] is not None, data
    assert data["acked_stored_missing_for_some_member"] == 0, data
    assert data["acks"].get("ok_stored", 0) > 50, "too little traffic to mean anything"


async def test_sentinel_master_sigkill(sentinel_topology: FailoverTopology) -> None:
    topology = sentinel_topology

    async def kill_master() -> None:
        old = topology.master()
        await asyncio.to_thread(old.kill)
        while await asyncio.to_thread(topology.master_port) == old.port:
            await asyncio.sleep(0.05)  # until the Sentinels promoted a replica
        await asyncio.to_thread(topology.restart, old)

    data = await run_event(topology, "sentinel-sigkill", kill_master)
    assert_nothing_lost(data)
    assert data["acked_ok_missing_for_some_member"] == 0  # shorter than the buffer: 0


async def test_sentinel_master_sigstop_10s(sentinel_topology: FailoverTopology) -> None:
    topology = sentinel_topology

    async def freeze_master() -> None:
        old = topology.master()
        old.pause()
        try:
            await asyncio.sleep(10)
        finally:
            old.resume()

    data = await run_event(topology, "sentinel-sigstop-10s", freeze_master)
    assert_nothing_lost(data)


async def test_standalone_restart_3s(standalone_topology: FailoverTopology) -> None:
    topology = standalone_topology

    async def restart() -> None:
        server = topology.servers[0]
        await asyncio.to_thread(server.kill)
        await asyncio.sleep(3)
        await asyncio.to_thread(topology.restart, server)

    data = await run_event(topology, "standalone-restart-3s", restart)
    assert_nothing_lost(data)
    assert data["acked_ok_missing_for_some_member"] == 0  # shorter than the buffer: 0


async def test_sentinel_master_full(sentinel_topology: FailoverTopology) -> None:
    topology = sentinel_topology

    async def fill() -> None:
        master = aioredis.Redis(port=topology.master_port())
        try:
            used = int((await master.info("memory"))["used_memory"])
            await master.config_set("maxmemory-policy", "noeviction")
            await master.config_set("maxmemory", used + 64 * 1024)
            filler = 0
            with contextlib.suppress(aioredis.ResponseError):
                while True:  # fill it the rest of the way, as history growth would
                    filler += 1
                    await master.set(f"filler:{filler}", "x" * 4096)
            await asyncio.sleep(3)
            await master.config_set("maxmemory", 0)
            await master.delete(*(f"filler:{n}" for n in range(1, filler)))
        finally:
            await master.aclose()

    data = await run_event(topology, "sentinel-maxmemory-3s", fill)
    assert_nothing_lost(data)
    assert data["acks"].get("ok_not_stored", 0) > 0  # it really was full
    assert data["acked_ok_missing_for_some_member"] == 0  # still published to every pod
