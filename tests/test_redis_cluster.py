"""Redis Cluster mode against a real local 3-node Redis Cluster: stores on RedisCluster, room
channels on sharded pub/sub (SPUBLISH/SSUBSCRIBE), the shared channel on classic pub/sub."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.cluster import key_slot

from service import keys
from service.cluster import RedisManager
from service.config import Settings

from .helpers import RunningServer, connect, free_port, running_server
from .redis_server import RedisServer, cli_binary

NODES = 3


class LocalRedisCluster:
    """Three ``redis-server --cluster-enabled yes`` processes joined by ``redis-cli --cluster
    create`` (no replicas)."""

    def __init__(self, workdir: Path) -> None:
        # the cluster bus defaults to port + 10000, past 65535 for high free ports: name it
        self.servers = [
            RedisServer(
                workdir / f"node{i}",
                None,
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                str(free_port()),
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            )
            for i in range(NODES)
        ]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.servers[0].port}"

    def start(self) -> LocalRedisCluster:
        cli = cli_binary()
        for server in self.servers:
            server.start()
        addresses = [f"127.0.0.1:{s.port}" for s in self.servers]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            out = subprocess.run(
                [cli, "-p", str(self.servers[0].port), "cluster", "info"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            if "cluster_state:ok" in out:
                return self
            time.sleep(0.05)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    local = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield local.start()
    finally:
        local.stop()


@contextlib.asynccontextmanager
async def instances(url: str, count: int = 2, **overrides: Any) -> AsyncIterator[list[Any]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                running_server(redis_url=url, instance_id=f"c{n}", **overrides)
            )
            for n in range(count)
        ]


async def until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def ready(server: RunningServer) -> bool:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/readyz") as resp:
        return resp.status == 200


async def shard_subscribers(cluster: LocalRedisCluster, channel: str) -> dict[int, int]:
    """PUBSUB SHARDNUMSUB of ``channel`` on every node, by port."""
    counts = {}
    for server in cluster.servers:
        client = aioredis.Redis(port=server.port)
        try:
            reply = await client.execute_command("PUBSUB", "SHARDNUMSUB", channel)
            counts[server.port] = int(reply[1])
        finally:
            await client.aclose()
    return counts


def test_settings_select_cluster_mode() -> None:
    def mode(**env: str) -> bool:
        return Settings.from_env({"JWT_SECRET": "s" * 32, **env}).redis_cluster_mode

    assert mode(REDIS_URL="redis+cluster://h:7000")
    assert mode(REDIS_URL="rediss+cluster://h:7000")
    assert mode(REDIS_URL="redis://h:7000", REDIS_CLUSTER="true")
    assert not mode(REDIS_URL="redis://h:7000")
    assert not mode(REDIS_CLUSTER="true")  # no Redis at all: embedded mode


@pytest.mark.parametrize("room", ["x", "room-2", "a.b:c", "Z" * 128])
def test_multi_key_operations_stay_in_one_slot(room: str) -> None:
    """History's script and transaction touch the stream and its 'dropped' marker: both
    carry the room as hash tag, so they hash to one slot."""
    stream = f"sio:history:{{{room}}}"
    assert key_slot(stream.encode()) == key_slot(f"{stream}:dropped".encode())
    assert key_slot(stream.encode()) == key_slot(f"sio:presence:{{{room}}}".encode())
    # the store+publish script publishes on the room's channel: the same slot again
    assert key_slot(stream.encode()) == key_slot(f"sio:socketio#room:{{{room}}}".encode())


async def test_two_instances_share_everything_through_the_cluster(redis_cluster, clients):
    async with instances(redis_cluster.url, rate_limit_events=30) as (a, b):
        await until(lambda: ready(a))
        await until(lambda: ready(b))
        assert a.app[keys.SIO].manager.sharded
        alice = await connect(a.url, "alice")
        bob = await connect(b.url, "bob", transports=["polling"])
        clients += [alice, bob]
        await alice.call("join:room", "x")
        await bob.call("join:room", "x")
        assert (await alice.wait_for("user:joined"))["userId"] == "bob"

        ack = await alice.call("message:send", {"roomId": "x", "message": "across shards"})
        for client in (alice, bob):
            got = await client.wait_for("message:received")
            assert got["id"] == ack["id"] and got["message"] == "across shards"
        await asyncio.sleep(0.2)
        assert len(bob.events["message:received"]) == 1  # exactly once

        pm = await bob.call("message:private", {"targetUserId": "alice", "message": "psst"})
        got = await alice.wait_for("message:private:received")
        assert got["id"] == pm["id"] and got["fromUserId"] == "bob"

        history = await bob.call("history:get", {"roomId": "x"})
        assert [m["id"] for m in history["messages"]] == [ack["id"]]
        # the sequencer's gap check reads many rooms' streams in one pipeline, across shards
        rooms = ["x", *(f"empty-{n}" for n in range(8))]
        assert await a.app[keys.STORES].history.latest(rooms) == {"x": ack["id"]}
        missed = await bob.call("join:room", {"roomId": "x", "since": "0-0"})
        assert [m["id"] for m in missed.get("missed", [])] == [ack["id"]]
        assert (await alice.call("presence:get", "x"))["users"] == ["alice", "bob"]

        # one token bucket per user, cluster-wide: spend it on a, be refused on b
        carol_a = await connect(a.url, "carol")
        carol_b = await connect(b.url, "carol")
        clients += [carol_a, carol_b]
        codes = []
        for _ in range(40):
            reply = await carol_a.call("presence:get", "x")
            codes.append(reply.get("error", {}).get("code"))
            if codes[-1] == "rate_limited":
                break
        assert "rate_limited" in codes
        refused = await carol_b.call("presence:get", "x")
        assert refused["ok"] is False and refused["error"]["code"] == "rate_limited"


def chan(room: str) -> str:
    return f"sio:socketio#room:{{{room}}}"


async def test_room_channel_lives_on_its_shard(redis_cluster, clients):
    async with instances(redis_cluster.url, count=1) as (a,):
        await until(lambda: ready(a))
        manager = a.app[keys.SIO].manager
        assert isinstance(manager, RedisManager) and manager.sharded
        alice = await connect(a.url, "alice")
        clients.append(alice)
        rooms = [f"shard-{i}" for i in range(12)]
        for room in rooms:
            await alice.call("join:room", room)
        owners = set()
        cluster = aioredis.RedisCluster.from_url(redis_cluster.url.replace("+cluster", ""))
        await cluster.initialize()
        try:
            owner_of = {chan(r): cluster.get_node_from_key(chan(r)).port for r in rooms}
        finally:
            await cluster.aclose()
        for room in rooms:
            channel = chan(room)
            # the room's channel and its history stream share one slot (one script does both)
            assert key_slot(channel.encode()) == key_slot(f"sio:history:{{{room}}}".encode())
            owner = owner_of[channel]
            owners.add(owner)

            async def subscribed_on_owner(channel: str = channel, port: int = owner) -> bool:
                counts = await shard_subscribers(redis_cluster, channel)
                return counts[port] == 1 and sum(counts.values()) == 1

            await until(subscribed_on_owner)
        assert len(owners) > 1  # twelve rooms spread over several shards

        # a message SPUBLISHed on the owner shard reaches the room; a classic PUBLISH of the
        # same payload on another node does not (room channels are sharded only)
        cluster = aioredis.RedisCluster.from_url(redis_cluster.url.replace("+cluster", ""))
        try:
            payload = (
                '{"method":"emit","event":"message:received","data":[{"id":"1-0",'
                '"roomId":"shard-0","userId":"z","message":"sharded","timestamp":1}],'
                '"namespace":"/","room":"room:shard-0","skip_sid":null,"callback":null,'
                '"host_id":"elsewhere"}'
            )
            assert await cluster.spublish(chan("shard-0"), payload) == 1
        finally:
            await cluster.aclose()
        got = await alice.wait_for("message:received")
        assert got["message"] == "sharded"

        await alice.call("leave:room", "shard-0")

        async def unsubscribed() -> bool:
            counts = await shard_subscribers(redis_cluster, chan("shard-0"))
            return sum(counts.values()) == 0

        await until(unsubscribed)


async def test_instance_is_ready_and_hears_its_heartbeat(redis_cluster):
    async with instances(redis_cluster.url, count=1, pubsub_heartbeat_seconds=0.1) as (a,):
        await until(lambda: ready(a))
        await asyncio.sleep(0.5)
        assert await ready(a)  # not deaf: classic PUBLISH reaches the classic subscriber


async def test_a_gap_is_filled_from_the_shard_that_owns_the_room(redis_cluster, clients):
    """Stored without a publish (as while a subscriber reconnects): the next message names
    it, and both instances deliver it first, from the stream on the room's shard."""
    async with instances(redis_cluster.url) as (a, b):
        await until(lambda: ready(a))
        await until(lambda: ready(b))
        alice, bob = await connect(a.url, "alice"), await connect(b.url, "bob")
        clients += [alice, bob]
        for client in (alice, bob):
            await client.call("join:room", "sharded-gap")
        message = {"roomId": "sharded-gap", "userId": "x", "message": "lost", "timestamp": 1}
        lost = await a.app[keys.STORES].history.post("sharded-gap", message, nonce="n1")
        after = await alice.call("message:send", {"roomId": "sharded-gap", "message": "next"})
        for client in (alice, bob):
            await client.wait_for("message:received", lambda m: m["id"] == after["id"])
            await asyncio.sleep(0.2)
            got = [m["id"] for m in client.events["message:received"]]
            assert got == [lost.message["id"], after["id"]]
