"""Cluster mode: several instances sharing one real Redis behave as one service."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from service import keys
from service.protocol import parse_id

from .helpers import RunningServer, connect, running_server, spawn_service


@contextlib.asynccontextmanager
async def cluster(
    redis_url: str, count: int = 2, **overrides: Any
) -> AsyncIterator[list[RunningServer]]:
    async with contextlib.AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(
                running_server(redis_url=redis_url, instance_id=f"i{n}", **overrides)
            )
            for n in range(count)
        ]
        yield servers


async def numsub(redis_url: str, channel: str) -> int:
    client = aioredis.Redis.from_url(redis_url)
    try:
        [(_, count)] = await client.pubsub_numsub(channel)
        return int(count)
    finally:
        await client.aclose()


async def readyz(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as resp:
        return resp.status, await resp.json()


async def test_every_event_crosses_instances(redis_url, clients):
    async with cluster(redis_url) as (a, b):
        alice = await connect(a.url, "alice")
        bob = await connect(b.url, "bob", transports=["polling"])
        clients += [alice, bob]
        await alice.call("join:room", "x")
        await bob.call("join:room", "x")
        joined = await alice.wait_for("user:joined")
        assert joined["userId"] == "bob"

        ack = await alice.call("message:send", {"roomId": "x", "message": "from a"})
        for client in (alice, bob):
            got = await client.wait_for("message:received")
            assert got["id"] == ack["id"] and got["message"] == "from a"
        await asyncio.sleep(0.2)
        assert len(bob.events["message:received"]) == 1  # exactly once

        pm = await bob.call("message:private", {"targetUserId": "alice", "message": "psst"})
        got = await alice.wait_for("message:private:received")
        assert got["id"] == pm["id"] and got["fromUserId"] == "bob"

        await bob.call("typing:start", "x")
        assert await alice.wait_for("typing:user:start") == {"userId": "bob", "roomId": "x"}
        await bob.call("typing:stop", "x")
        assert await alice.wait_for("typing:user:stop") == {"userId": "bob", "roomId": "x"}

        assert (await alice.call("presence:get", "x"))["users"] == ["alice", "bob"]
        history = await bob.call("history:get", {"roomId": "x"})
        assert [m["id"] for m in history["messages"]] == [ack["id"]]

        await bob.call("leave:room", "x")
        left = await alice.wait_for("user:left")
        assert left["userId"] == "bob"
        assert (await alice.call("presence:get", "x"))["users"] == ["alice"]


async def test_instances_subscribe_only_to_rooms_with_local_members(redis_url, clients):
    async with cluster(redis_url) as (a, b):
        channel = "sio:socketio#room:{quiet}"
        alice = await connect(a.url, "alice")
        clients.append(alice)
        assert await numsub(redis_url, channel) == 0
        await alice.call("join:room", "quiet")
        assert await numsub(redis_url, channel) == 1  # only instance a
        bob = await connect(b.url, "bob")
        clients.append(bob)
        await bob.call("join:room", "quiet")
        assert await numsub(redis_url, channel) == 2
        await bob.call("leave:room", "quiet")
        await asyncio.sleep(0.2)
        assert await numsub(redis_url, channel) == 1
        # each user's own channel follows its sockets too
        assert await numsub(redis_url, "sio:socketio#user:{bob}") == 1
        await bob.close()
        await asyncio.sleep(0.2)
        assert await numsub(redis_url, "sio:socketio#user:{bob}") == 0
        # a message for the room reaches a's member, and b's listener is not subscribed to it
        await alice.call("message:send", {"roomId": "quiet", "message": "only a"})
        await alice.wait_for("message:received")
        assert "room:quiet" not in b.app[keys.SIO].manager._wanted


async def test_history_recovery_after_moving_instance(redis_url, clients):
    async with cluster(redis_url, history_size=50) as (a, b):
        alice = await connect(a.url, "alice")
        bob = await connect(b.url, "bob")
        clients += [alice, bob]
        await alice.call("join:room", "move")
        await bob.call("join:room", "move")
        first = (await bob.call("message:send", {"roomId": "move", "message": "1"}))["id"]
        await alice.wait_for("message:received")
        await alice.close()  # alice's instance goes away from her point of view
        later = [
            (await bob.call("message:send", {"roomId": "move", "message": str(n)}))["id"]
            for n in (2, 3)
        ]
        alice = await connect(b.url, "alice")
        clients.append(alice)
        ack = await alice.call("join:room", {"roomId": "move", "since": first})
        assert [m["id"] for m in ack["missed"]] == later
        assert ack["recovered"] is True
        assert [m["message"] for m in ack["missed"]] == ["2", "3"]


async def test_recovery_reports_gaps_older_than_history(redis_url, clients):
    async with cluster(redis_url, count=1, history_size=2) as (a,):
        alice = await connect(a.url, "alice")
        clients.append(alice)
        await alice.call("join:room", "gap")
        ids = [
            (await alice.call("message:send", {"roomId": "gap", "message": str(n)}))["id"]
            for n in range(5)
        ]
        kept = await alice.call("join:room", {"roomId": "gap", "since": ids[2]})
        assert kept["recovered"] is True and [m["id"] for m in kept["missed"]] == ids[3:]
        lost = await alice.call("join:room", {"roomId": "gap", "since": ids[0]})
        assert lost["recovered"] is False and [m["id"] for m in lost["missed"]] == ids[3:]
        gone = await alice.call("join:room", {"roomId": "never-used", "since": ids[0]})
        assert gone["recovered"] is False and gone["missed"] == []


async def test_history_keys_expire_and_stay_capped(redis_url, clients):
    async with cluster(redis_url, count=1, history_size=3, history_ttl_seconds=60) as (a,):
        alice = await connect(a.url, "alice")
        clients.append(alice)
        await alice.call("join:room", "ttl")
        for n in range(10):
            await alice.call("message:send", {"roomId": "ttl", "message": str(n)})
        client = aioredis.Redis.from_url(redis_url)
        try:
            key = "sio:history:{ttl}"
            assert await client.xlen(key) == 3
            assert 0 < await client.ttl(key) <= 60
            assert 0 < await client.ttl(f"{key}:dropped") <= 60
        finally:
            await client.aclose()


async def test_rate_limit_is_cluster_wide(redis_url, clients):
    async with cluster(redis_url, rate_limit_events=6, rate_limit_window_seconds=60) as (a, b):
        on_a = await connect(a.url, "alice")  # handshake: 1 token
        on_b = await connect(b.url, "alice")  # handshake: 1 token
        clients += [on_a, on_b]
        for _ in range(2):
            assert (await on_a.call("join:room", "r"))["ok"]
            assert (await on_b.call("join:room", "r"))["ok"]
        limited = await on_b.call("join:room", "r")
        assert limited["error"]["code"] == "rate_limited"
        assert limited["error"]["retryAfterMs"] > 0
        assert (await on_a.call("join:room", "r"))["error"]["code"] == "rate_limited"


async def test_a_message_takes_its_token_in_the_store_script(redis_url, clients):
    """``message:send`` pays its token inside the script that stores it (one round trip), from
    the same cluster-wide bucket as every other event; a refused send pays too, and a send
    refused for rate stores nothing."""
    async with cluster(redis_url, rate_limit_events=8, rate_limit_window_seconds=600) as (a, b):
        on_a = await connect(a.url, "alice")  # handshake: 1 token
        on_b = await connect(b.url, "alice")  # handshake: 1 token
        clients += [on_a, on_b]
        assert (await on_a.call("join:room", "paid"))["ok"]  # 1 token
        answers = []
        for n in range(2):  # 4 tokens: a stored message, then an invalid one, twice
            answers.append(await on_a.call("message:send", {"roomId": "paid", "message": f"{n}"}))
            answers.append(await on_a.call("message:send", {"roomId": "paid"}))
        answers.append(await on_a.call("message:send", {"roomId": "paid", "message": "2"}))
        assert [a.get("ok") or a["error"]["code"] for a in answers] == [
            True,
            "invalid_payload",
            True,
            "invalid_payload",
            True,  # the 8th token
        ]
        assert (await on_b.call("join:room", "paid"))["error"]["code"] == "rate_limited"
        refused = await on_a.call("message:send", {"roomId": "paid", "message": "over"})
        assert refused["error"]["code"] == "rate_limited" and refused["error"]["retryAfterMs"] > 0
        history = await on_a.call("history:get", {"roomId": "paid"})
        assert history["error"]["code"] == "rate_limited"  # the bucket is empty for reads too
        client = aioredis.Redis.from_url(redis_url)
        try:
            stored = [e[1][b"m"] for e in await client.xrange("sio:history:{paid}")]
        finally:
            await client.aclose()
        assert [json.loads(m)["message"] for m in stored] == ["0", "1", "2"]


async def test_presence_of_a_killed_instance_expires(redis_url, clients):
    async with cluster(redis_url, count=1, presence_ttl_seconds=3) as (a,):
        doomed = spawn_service(env={"REDIS_URL": redis_url, "PRESENCE_TTL_SECONDS": "3"})
        try:
            carol = await connect(doomed.url, "carol")
            await carol.call("join:room", "ghosts")
            alice = await connect(a.url, "alice")
            clients.append(alice)
            await alice.call("join:room", "ghosts")
            assert (await alice.call("presence:get", "ghosts"))["users"] == ["alice", "carol"]
            doomed.stop(sig=9)
            killed = time.monotonic()
            while "carol" in (await alice.call("presence:get", "ghosts"))["users"]:
                assert time.monotonic() - killed < 10, "carol never left presence"
                await asyncio.sleep(0.2)
            gone_after = time.monotonic() - killed
            assert gone_after <= 3 + 1  # the TTL, plus one poll
            await carol.sio.eio.disconnect(abort=True)
        finally:
            doomed.stop(sig=9)


async def test_ready_with_redis_and_still_ready_without(own_redis):
    """A Redis outage is shared by every instance: it is reported by /health and
    socketio_redis_up, never by readiness (which would empty the Service)."""
    started = time.monotonic()
    proc = spawn_service(env={"REDIS_URL": own_redis.url})
    try:
        while (await readyz(proc.url))[0] != 200:
            assert time.monotonic() - started < 5, "not ready within 5 s of start"
            await asyncio.sleep(0.05)
        own_redis.kill()
        deadline = time.monotonic() + 10
        while True:
            async with aiohttp.ClientSession() as http, http.get(f"{proc.url}/health") as resp:
                detail = await resp.json()
            if detail["redis"]["connected"] is False:
                break
            assert time.monotonic() < deadline, detail
            await asyncio.sleep(0.1)
        assert detail["status"] == "degraded" and "redis_unreachable" in detail["reasons"]
        while True:
            async with aiohttp.ClientSession() as http, http.get(f"{proc.url}/metrics") as resp:
                if "\nsocketio_redis_up 0.0\n" in await resp.text():
                    break
            assert time.monotonic() < deadline, "socketio_redis_up never turned 0"
            await asyncio.sleep(0.1)
        for _ in range(10):  # past the deafness limit: still ready
            assert await readyz(proc.url) == (200, {"status": "ready"})
            await asyncio.sleep(0.4)
        async with aiohttp.ClientSession() as http, http.get(f"{proc.url}/healthz") as resp:
            assert resp.status == 200  # liveness never depends on Redis
    finally:
        proc.stop()


@pytest.mark.slow
async def test_redis_restart_mid_traffic(own_redis, clients, tmp_path):
    """Kill Redis under traffic; local delivery continues, remote resumes fast after restart."""
    from .redis_server import RedisServer

    own_redis.stop()
    durable = RedisServer(
        own_redis.workdir, own_redis.port, "--appendonly", "yes", "--appendfsync", "always"
    ).start()
    try:
        # a 1 s outage buffer: this outage (4.5 s) is past it, messages go local-only
        async with cluster(durable.url, redis_outage_buffer_seconds=1, ping_timeout=20) as (a, b):
            sender = await connect(a.url, "alice")
            local = await connect(a.url, "carol")
            remote = await connect(b.url, "bob")
            clients += [sender, local, remote]
            for client in (sender, local, remote):
                await client.call("join:room", "live")
            stored_before = (
                await sender.call("message:send", {"roomId": "live", "message": "kept"})
            )["id"]
            await remote.wait_for("message:received", lambda m: m["id"] == stored_before)

            durable.kill()
            await asyncio.sleep(1.5)
            assert (await readyz(a.url))[0] == 200  # an outage is not a readiness failure
            during = await sender.call("message:send", {"roomId": "live", "message": "outage"})
            assert during["ok"] is True and during["stored"] is False
            got = await local.wait_for("message:received", lambda m: m["message"] == "outage")
            assert got["id"] == during["id"]
            # joining, presence and the rate limit keep working on local state
            joined = await local.call("join:room", {"roomId": "side", "since": stored_before})
            assert joined["ok"] and joined["recovered"] is False
            assert (await local.call("presence:get", "live"))["users"] == ["alice", "carol"]
            assert (await local.call("history:get", "live"))["error"]["code"] == "internal"

            await asyncio.sleep(3)  # a long-ish outage
            durable.start()
            restarted = time.monotonic()
            n = 0
            while True:
                n += 1
                text = f"after-{n}"
                await sender.call("message:send", {"roomId": "live", "message": text}, timeout=10)
                with contextlib.suppress(TimeoutError):
                    await remote.wait_for(
                        "message:received", lambda m, t=text: m["message"] == t, timeout=0.1
                    )
                    break
                assert time.monotonic() - restarted < 5, "cross-instance delivery did not resume"
            resumed_after = time.monotonic() - restarted
            print(f"\ncross-instance delivery resumed {resumed_after:.2f}s after Redis restart")
            assert resumed_after <= 5
            while (await readyz(a.url))[0] != 200 or (await readyz(b.url))[0] != 200:
                assert time.monotonic() - restarted < 5
                await asyncio.sleep(0.05)
            history = await bob_history(remote)
            assert stored_before in history  # nothing stored before the crash is lost
    finally:
        durable.stop()


async def bob_history(client) -> list[str]:
    ack = await client.call("history:get", {"roomId": "live", "limit": 100})
    return [m["id"] for m in ack["messages"]]


async def test_a_deaf_instance_reports_itself_not_ready(redis_url, clients):
    from .faultproxy import FaultProxy

    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = await FaultProxy(port).start()
    try:
        async with running_server(redis_url=proxy.url, instance_id="deaf") as deaf:
            started = time.monotonic()
            while (await readyz(deaf.url))[0] != 200:
                assert time.monotonic() - started < 5
                await asyncio.sleep(0.05)
            proxy.mute_subscribers()
            muted = time.monotonic()
            registry = deaf.app[keys.METRICS].registry
            while registry.get_sample_value("socketio_pubsub_deaf") != 1:
                assert time.monotonic() - muted < 10, "deafness never detected"
                await asyncio.sleep(0.1)
            detected = time.monotonic() - muted
            status, body = await readyz(deaf.url)
            assert status == 503 and body["reasons"] == ["pubsub_deaf"]
            print(f"\ndeaf instance detected after {detected:.1f}s")
            proxy.restore()
            while (await readyz(deaf.url))[0] != 200 or registry.get_sample_value(
                "socketio_pubsub_deaf"
            ):
                assert time.monotonic() - muted < 20, "never recovered from deafness"
                await asyncio.sleep(0.1)
    finally:
        await proxy.close()


async def test_server_to_client_ack_crosses_instances(redis_url, clients):
    """An emit with a callback to a socket on another instance gets the client's answer back
    (python-socketio's own callback messages; the manager used to publish ``callback: None``)."""
    async with cluster(redis_url) as (a, b):
        bob = await connect(b.url, "bob")
        clients.append(bob)
        bob.sio.on("quiz", lambda question: {"answer": question * 2})
        [sid] = list(b.app[keys.NAMESPACE].sessions)
        answered: asyncio.Future[tuple] = asyncio.get_running_loop().create_future()
        await a.app[keys.SIO].emit(
            "quiz", 21, to=sid, callback=lambda *args: answered.set_result(args)
        )
        assert await asyncio.wait_for(answered, 5) == ({"answer": 42},)


def received_ids(client) -> list[str]:
    return [m["id"] for m in client.events["message:received"]]


async def test_a_short_outage_loses_nothing(own_redis, clients):
    """Messages sent while Redis is down (shorter than REDIS_OUTAGE_BUFFER_SECONDS) are acked
    only once stored, then reach every member on every instance, in order, once."""
    async with cluster(own_redis.url, redis_outage_buffer_seconds=5, ping_timeout=20) as (a, b):
        alice, carol = await connect(a.url, "alice"), await connect(a.url, "carol")
        bob = await connect(b.url, "bob")
        clients += [alice, carol, bob]
        for client in (alice, carol, bob):
            assert (await client.call("join:room", "short"))["ok"]
        first = await alice.call("message:send", {"roomId": "short", "message": "before"})
        await bob.wait_for("message:received", lambda m: m["id"] == first["id"])

        own_redis.kill()
        await asyncio.sleep(0.3)
        sends = [
            asyncio.create_task(
                sender.call("message:send", {"roomId": "short", "message": text}, timeout=10)
            )
            for sender, text in ((alice, "during-1"), (carol, "during-2"))
        ]
        await asyncio.sleep(1.5)
        assert not any(task.done() for task in sends)  # acks wait for Redis
        restarted = time.monotonic()
        own_redis.start()
        acks = await asyncio.gather(*sends)
        assert time.monotonic() - restarted < 5
        assert all(ack["ok"] and "stored" not in ack for ack in acks), acks
        ids = sorted((ack["id"] for ack in acks), key=parse_id)
        for client in (alice, carol, bob):
            for message_id in ids:
                await client.wait_for("message:received", lambda m, i=message_id: m["id"] == i)
        await asyncio.sleep(0.3)
        for client in (alice, carol, bob):
            assert received_ids(client) == [first["id"], *ids]  # in order, once
        history = await bob.call("history:get", {"roomId": "short"})
        # (this Redis keeps nothing across a SIGKILL: only what was stored after it is there)
        assert [m["id"] for m in history["messages"]] == ids


async def test_past_the_buffer_messages_fall_back_to_local_only(own_redis, clients):
    settings = {"redis_outage_buffer_seconds": 1, "ping_timeout": 20}
    async with cluster(own_redis.url, count=1, **settings) as (a,):
        alice, carol = await connect(a.url, "alice"), await connect(a.url, "carol")
        clients += [alice, carol]
        for client in (alice, carol):
            await client.call("join:room", "long")
        own_redis.kill()
        started = time.monotonic()
        ack = await alice.call("message:send", {"roomId": "long", "message": "x"}, timeout=10)
        waited = time.monotonic() - started
        assert ack["ok"] and ack["stored"] is False
        assert 0.5 < waited < 3  # held for the window, then local-only
        got = await carol.wait_for("message:received")
        assert got["id"] == ack["id"]
        # the outage is older than the window now: no more waiting
        started = time.monotonic()
        later = await alice.call("message:send", {"roomId": "long", "message": "y"})
        assert later["stored"] is False and time.monotonic() - started < 0.5


async def test_a_message_missed_on_pubsub_is_delivered_without_reconnecting(redis_url, clients):
    """An instance whose subscriber missed a publish delivers the message to its members once
    it hears the next one (which names the entry before it) — in order, once."""
    async with cluster(redis_url) as (a, b):
        alice = await connect(a.url, "alice")
        bob = await connect(b.url, "bob")
        clients += [alice, bob]
        for client in (alice, bob):
            await client.call("join:room", "gap")
        first = await alice.call("message:send", {"roomId": "gap", "message": "1"})
        await bob.wait_for("message:received", lambda m: m["id"] == first["id"])
        # stored, but its publish lost (as while a subscriber reconnects)
        history = a.app[keys.STORES].history
        lost = await history.post(
            "gap", {"roomId": "gap", "userId": "x", "message": "lost", "timestamp": 1}, nonce="n1"
        )
        sid = bob.sio.sid
        third = await alice.call("message:send", {"roomId": "gap", "message": "3"})
        expected = [first["id"], lost.message["id"], third["id"]]
        for client in (alice, bob):
            await client.wait_for("message:received", lambda m: m["id"] == third["id"])
            await asyncio.sleep(0.2)
            assert received_ids(client) == expected
        assert bob.sio.sid == sid  # same connection


async def test_messages_published_while_deaf_arrive_after_resubscribe(redis_url, clients):
    from .faultproxy import FaultProxy

    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = await FaultProxy(port).start()
    try:
        async with (
            running_server(redis_url=redis_url, instance_id="a") as a,
            running_server(redis_url=proxy.url, instance_id="b") as b,
        ):
            alice = await connect(a.url, "alice")
            bob = await connect(b.url, "bob")
            clients += [alice, bob]
            for client in (alice, bob):
                await client.call("join:room", "deaf")
            first = await alice.call("message:send", {"roomId": "deaf", "message": "1"})
            await bob.wait_for("message:received", lambda m: m["id"] == first["id"])
            proxy.mute_subscribers()
            missed = [
                (await alice.call("message:send", {"roomId": "deaf", "message": m}))["id"]
                for m in ("2", "3")
            ]
            await asyncio.sleep(0.3)
            assert received_ids(bob) == [first["id"]]
            proxy.restore()  # the listener reconnects, resubscribes and looks for gaps
            await bob.wait_for("message:received", lambda m: m["id"] == missed[-1], timeout=5)
            await asyncio.sleep(0.2)
            assert received_ids(bob) == [first["id"], *missed]
    finally:
        await proxy.close()


async def test_wait_replicas_acks_say_when_replication_timed_out(own_redis, tmp_path, clients):
    from .redis_server import RedisServer

    replica = RedisServer(
        tmp_path / "replica", None, "--replicaof", "127.0.0.1", str(own_redis.port)
    ).start()
    try:
        client = aioredis.Redis.from_url(replica.url)
        try:
            while (await client.info("replication")).get("master_link_status") != "up":
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        async with cluster(own_redis.url, count=1, redis_wait_replicas=1) as (a,):
            alice = await connect(a.url, "alice")
            clients.append(alice)
            await alice.call("join:room", "safe")
            ack = await alice.call("message:send", {"roomId": "safe", "message": "on 1"})
            assert ack["ok"] and "replicated" not in ack and "stored" not in ack
        async with cluster(own_redis.url, count=1, redis_wait_replicas=2) as (a,):
            alice = await connect(a.url, "alice")
            clients.append(alice)
            await alice.call("join:room", "safe")
            started = time.monotonic()
            ack = await alice.call("message:send", {"roomId": "safe", "message": "on 2?"})
            assert ack["ok"] and ack["replicated"] is False  # only one replica exists
            assert time.monotonic() - started < 2  # the wait is bounded
    finally:
        replica.stop()


async def test_a_retry_finds_the_first_try_instead_of_storing_twice(redis_url):
    """A try that timed out may still run (a frozen Redis resumes): the retry carries the same
    nonce and gets the stored entry back, without writing or publishing again."""
    async with cluster(redis_url, count=1) as (a,):
        history = a.app[keys.STORES].history
        manager = a.app[keys.SIO].manager
        channel = manager.channel_for("room:twice")
        listener = aioredis.Redis.from_url(redis_url)
        pubsub = listener.pubsub()
        await pubsub.subscribe(channel)
        await pubsub.get_message(timeout=1)  # the subscribe confirmation
        message = {"roomId": "twice", "userId": "u", "message": "m", "timestamp": 1}
        tried_at = int(time.time() * 1000)
        first = await history.post("twice", message, nonce="n-1", channel=channel)
        again = await history.post(
            "twice", message, nonce="n-1", channel=channel, dedupe_from_ms=tried_at - 5000
        )
        other = await history.post(
            "twice", message, nonce="n-2", channel=channel, dedupe_from_ms=tried_at - 5000
        )
        try:
            assert again.duplicate and again.message["id"] == first.message["id"]
            assert not other.duplicate and other.prev == first.message["id"]
            assert await listener.xlen("sio:history:{twice}") == 2
            published = []
            while (got := await pubsub.get_message(timeout=0.3)) is not None:
                published.append(json.loads(got["data"])["id"])
            assert published == [first.message["id"], other.message["id"]]
        finally:
            await pubsub.aclose()
            await listener.aclose()


async def test_the_outage_buffer_is_bounded(own_redis, clients, monkeypatch):
    from service.cluster import outbox

    monkeypatch.setattr(outbox, "MAX_BUFFERED_MESSAGES", 1)
    async with cluster(own_redis.url, count=1, ping_timeout=20) as (a,):
        alice, carol = await connect(a.url, "alice"), await connect(a.url, "carol")
        clients += [alice, carol]
        for client in (alice, carol):
            await client.call("join:room", "full")
        own_redis.kill()
        held = asyncio.create_task(
            alice.call("message:send", {"roomId": "full", "message": "held"}, timeout=10)
        )
        await asyncio.sleep(0.5)
        started = time.monotonic()
        refused = await carol.call("message:send", {"roomId": "full", "message": "no room"})
        assert refused["stored"] is False and time.monotonic() - started < 0.5
        own_redis.start()
        ack = await held
        assert ack["ok"] and "stored" not in ack  # the one buffered message was stored
