"""Socket.IO connection state recovery with the official socket.io-client, untouched.

The client reaches the service through a TCP proxy (:class:`tests.faultproxy.FaultProxy`)
that can be pointed at another instance, so "comes back to another instance" needs no change
to the client. Its transport is dropped the way socket.io's own tests do it
(``socket.io.engine.close()``); it reconnects by itself with its default back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from service import keys
from service.lifecycle import drain
from service.recovery import Resume, resume_request, with_offset
from service.stores.sessions import MemorySessions, RedisSessions

from .faultproxy import FaultProxy
from .helpers import RunningServer, connect, running_server, token
from .jsclient import JsClient, js_client
from .rawclient import open_raw

TRANSPORTS = ("websocket", "polling")


@dataclass
class Setup:
    servers: list[RunningServer]
    proxy: FaultProxy

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}"

    def point_at(self, server: RunningServer) -> None:
        """New connections through the proxy reach ``server``; open ones are cut."""
        self.proxy.target_port = int(server.url.rsplit(":", 1)[1])
        for link in list(self.proxy.links):
            link.client.close()
            link.upstream.close()


@contextlib.asynccontextmanager
async def setup(redis_url: str | None, count: int = 1, **overrides: Any) -> AsyncIterator[Setup]:
    async with contextlib.AsyncExitStack() as stack:
        servers = []
        for n in range(count):
            extra = {"redis_url": redis_url} if redis_url else {}
            servers.append(
                await stack.enter_async_context(
                    running_server(instance_id=f"i{n}", **extra, **overrides)
                )
            )
        proxy = await FaultProxy(int(servers[0].url.rsplit(":", 1)[1])).start()
        stack.push_async_callback(proxy.close)
        yield Setup(servers, proxy)


def user_sessions(server: RunningServer, user: str) -> list[Any]:
    sessions = server.app[keys.NAMESPACE].sessions.values()
    return [s for s in sessions if s.user_id == user]


def recoveries(server: RunningServer, result: str) -> float:
    return server.app[keys.METRICS].recoveries.labels(result=result)._value.get()


async def until(predicate: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def drop_and_chat(
    env: Setup, js: JsClient, sender: Any, texts: list[str], *, move_to: int | None = None
) -> int:
    """Drop the client's transport, send ``texts`` while it is away (and, with ``move_to``,
    send it to that instance), and return the index of its next line."""
    mark = len(js.lines)
    await js.command("drop")
    await js.event("disconnect", after=mark)
    # the instance has let the socket go (and kept its session) before anything is sent
    await until(lambda: not user_sessions(env.servers[0], "alice"))
    for text in texts:
        assert (await sender.call("message:send", {"roomId": "r", "message": text}))["ok"]
    if move_to is not None:
        env.point_at(env.servers[move_to])
    return mark


async def run_recovery(env: Setup, transport: str, *, move_to: int | None) -> None:
    sender = await connect(env.servers[-1].url, "bob")
    try:
        async with js_client(env.url, transport, token("alice")) as js:
            assert js.lines[0]["recovered"] is False  # a first connection recovers nothing
            assert (await js.call("join", "r"))["ok"]
            await sender.call("join:room", "r")
            await sender.call("message:send", {"roomId": "r", "message": "before"})
            await js.wait(lambda line: line.get("text") == "before")

            mark = await drop_and_chat(
                env, js, sender, ["gap 1", "gap 2", "gap 3"], move_to=move_to
            )
            back = await js.event("connect", after=mark)
            assert back["recovered"] is True
            if move_to is not None:
                assert user_sessions(env.servers[move_to], "alice"), "not on the other instance"
            # rooms are back: membership-only reads work, live messages flow
            assert (await js.call("presence", "r"))["users"] == ["alice", "bob"]
            await sender.call("message:send", {"roomId": "r", "message": "after"})
            await js.wait(lambda line: line.get("text") == "after")
            assert js.texts() == ["before", "gap 1", "gap 2", "gap 3", "after"]
            ids = js.messages("r")
            assert len(set(ids)) == len(ids)
            # whoever is in the room saw alice come back
            await sender.wait_for("user:joined", lambda e: e["userId"] == "alice")
            landed = env.servers[move_to or 0]
            assert recoveries(landed, "recovered") == 1
    finally:
        await sender.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_recovers_on_the_same_instance_embedded(transport):
    async with setup(None) as env:
        await run_recovery(env, transport, move_to=None)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_recovers_on_the_same_instance_cluster(redis_url, transport):
    async with setup(redis_url) as env:
        await run_recovery(env, transport, move_to=None)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_recovers_on_another_instance_cluster(redis_url, transport):
    async with setup(redis_url, count=2) as env:
        await run_recovery(env, transport, move_to=1)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_expired_session_is_a_fresh_connection(transport):
    """Past the window the client is connected as new: recovered false, no rooms, nothing
    replayed (the application resyncs, as with socket.io)."""
    async with setup(None, connection_state_recovery_seconds=0.2) as env:
        sender = await connect(env.servers[0].url, "bob")
        try:
            async with js_client(env.url, transport, token("alice")) as js:
                await js.call("join", "r")
                await sender.call("join:room", "r")
                mark = await drop_and_chat(env, js, sender, ["gap"])
                back = await js.event("connect", after=mark)
                assert back["recovered"] is False
                assert recoveries(env.servers[0], "unknown") == 1
                assert (await js.call("presence", "r"))["error"]["code"] == "not_in_room"
                assert js.texts() == []
        finally:
            await sender.close()


async def test_without_recovery_no_pid_and_no_offsets(clients):
    async with setup(None, connection_state_recovery_seconds=0) as env:
        bob = await connect(env.servers[0].url, "bob")
        clients.append(bob)
        async with js_client(env.url, "websocket", token("alice")) as js:
            await js.call("join", "r")
            await bob.call("join:room", "r")
            await bob.call("message:send", {"roomId": "r", "message": "x"})
            await bob.wait_for("message:received")
            assert bob.offsets == []
            mark = await drop_and_chat(env, js, bob, [])
            assert not (await js.event("connect", after=mark)).get("recovered")


# -- the wire: offsets and pids ------------------------------------------------------------


async def test_room_messages_carry_their_id_as_offset(server, clients):
    alice = await connect(server.url, "alice")
    clients.append(alice)
    await alice.call("join:room", "r")
    ack = await alice.call("message:send", {"roomId": "r", "message": "x"})
    await alice.wait_for("message:received")
    assert alice.offsets == [ack["id"]]


def test_with_offset_shapes():
    message = {"id": "1-0", "roomId": "r", "message": "x"}
    assert with_offset("message:received", message) == (message, "1-0")
    assert with_offset("joined:room", "r") == ("r", None)  # never a string last
    assert with_offset("user:joined", {"userId": "a"}) == {"userId": "a"}


@pytest.mark.parametrize(
    "auth",
    [
        None,
        "pid",
        {"pid": None},
        {"pid": 12345678901234567890},
        {"pid": "short"},
        {"pid": "x" * 65},
        {"pid": "has spaces in it ok?"},
        {"pid": "A" * 22, "offset": 5},
        {"pid": "A" * 22, "offset": "lobby"},
        {"pid": "A" * 22, "offset": "1-2-3"},
        {"pid": "A" * 22, "offset": "9" * 60},
        {"pid": "A" * 22, "offset": ["1-0"]},
        {"pid": ["A" * 22]},
    ],
)
def test_hostile_resume_requests_mean_no_recovery(auth):
    assert resume_request(auth) is None


def test_resume_request_accepts_the_official_shapes():
    assert resume_request({"token": "t", "pid": "A" * 22, "offset": "17-3"}) == Resume(
        "A" * 22, "17-3"
    )
    # a client that got no room message yet sends no offset
    assert resume_request({"token": "t", "pid": "A" * 22}) == Resume("A" * 22, None)


@pytest.mark.parametrize("auth_extra", [{"pid": "A" * 22, "offset": "1-0"}, {"pid": "x" * 500}])
async def test_unknown_or_garbage_pid_connects_normally(server, clients, auth_extra):
    client = await connect(server.url, None, auth={"token": token("alice"), **auth_extra})
    clients.append(client)
    assert (await client.call("join:room", "r"))["ok"]
    [session] = user_sessions(server, "alice")
    assert session.pid != auth_extra["pid"] and len(session.pid) == 22


async def test_a_pid_is_bound_to_its_user_and_works_once(server, clients):
    """Another user's token with a stolen pid gets nothing; the record is spent either way."""
    alice = await connect(server.url, "alice")
    await alice.call("join:room", "private")
    [session] = user_sessions(server, "alice")
    pid = session.pid
    await alice.sio.eio.disconnect(abort=True)  # the transport drops: the session is kept
    await until(lambda: not user_sessions(server, "alice"))

    mallory = await connect(server.url, None, auth={"token": token("mallory"), "pid": pid})
    clients.append(mallory)
    assert (await mallory.call("presence:get", "private"))["error"]["code"] == "not_in_room"
    again = await connect(server.url, None, auth={"token": token("alice"), "pid": pid})
    clients.append(again)
    assert (await again.call("presence:get", "private"))["error"]["code"] == "not_in_room"


async def test_python_client_recovers_rooms_with_pid(server, clients):
    """The protocol is not JS-only: any client that sends {pid, offset} gets its rooms back."""
    alice = await connect(server.url, "alice")
    await alice.call("join:room", "r")
    [session] = user_sessions(server, "alice")
    await alice.sio.eio.disconnect(abort=True)
    await until(lambda: not user_sessions(server, "alice"))
    bob = await connect(server.url, "bob")
    clients.append(bob)
    await bob.call("join:room", "r")
    sent = await bob.call("message:send", {"roomId": "r", "message": "while away"})
    back = await connect(server.url, None, auth={"token": token("alice"), "pid": session.pid})
    clients.append(back)
    await back.wait_for("message:received", lambda m: m["id"] == sent["id"])
    assert (await back.call("presence:get", "r"))["users"] == ["alice", "bob"]
    assert back.offsets == [sent["id"]]


async def test_leaving_on_purpose_keeps_no_session(server):
    """A Socket.IO DISCONNECT (the client's own ``socket.disconnect()``) is final; the same
    client losing its transport instead would be kept."""
    async with aiohttp.ClientSession() as http:
        raw = await open_raw(server.url, "websocket", http)
        connected = await raw.connect({"token": token("alice")})
        assert len(connected["pid"]) == 22  # the CONNECT answer carries the pid
        assert (await raw.call("join:room", "r"))["ok"]
        await raw.send("41")
        await until(lambda: not user_sessions(server, "alice"))
        await raw.close()
    sessions = server.app[keys.STORES].sessions
    assert await sessions.take(connected["pid"]) is None


# -- the stores ----------------------------------------------------------------------------


async def test_memory_sessions_expire_and_are_taken_once():
    store = MemorySessions()
    await store.save("p1", {"u": "a", "r": {}}, 0.05)
    await store.save("p2", {"u": "b", "r": {}}, 60)
    assert await store.take("p2") == {"u": "b", "r": {}}
    assert await store.take("p2") is None
    await asyncio.sleep(0.1)
    assert await store.take("p1") is None
    # a refresh never brings back a record that was taken
    await store.save("p3", {"u": "c", "r": {}}, 60, only_if_kept=True)
    assert await store.take("p3") is None
    await store.save("p4", {"u": "d", "r": {}}, 60)
    await store.save("p4", {"u": "d", "r": {"x": "2-0"}}, 60, only_if_kept=True)
    assert await store.take("p4") == {"u": "d", "r": {"x": "2-0"}}


async def test_memory_sessions_stay_bounded_and_drop_the_oldest(monkeypatch):
    """The embedded store keeps at most MAX_MEMORY_SESSIONS records, dropping the oldest, and
    frees expired ones as it is written (a drain saves one record per connected socket)."""
    from service.stores import sessions

    monkeypatch.setattr(sessions, "MAX_MEMORY_SESSIONS", 100)
    store = MemorySessions()
    for n in range(250):
        await store.save(f"p{n}", {"u": f"u{n}", "r": {}}, 60)
    assert [await store.take(f"p{n}") for n in (0, 149)] == [None, None]
    assert await store.take("p150") == {"u": "u150", "r": {}}
    assert await store.take("p249") == {"u": "u249", "r": {}}
    short = MemorySessions()
    for n in range(50):
        await short.save(f"s{n}", {"u": "a", "r": {}}, 0.01)
    await asyncio.sleep(0.05)
    await short.save("fresh", {"u": "b", "r": {}}, 60)
    assert len(short._records) == 1, "expired records are dropped by the next save"


async def test_redis_sessions_expire_and_are_taken_once(redis_url):
    import redis.asyncio as aioredis
    from prometheus_client import CollectorRegistry

    from service.metrics import Metrics
    from service.stores.link import RedisLink

    client = aioredis.Redis.from_url(redis_url)
    try:
        store = RedisSessions(RedisLink(client, Metrics(CollectorRegistry()), "t"))
        await store.save("p1", {"u": "a", "r": {"x": "1-0"}}, 60)
        assert 0 < await client.pttl("t:session:{p1}") <= 60_000
        assert await store.take("p1") == {"u": "a", "r": {"x": "1-0"}}
        assert await store.take("p1") is None
        await store.save("p2", {"u": "a", "r": {}}, 0.05)
        await asyncio.sleep(0.1)
        assert await store.take("p2") is None
        await store.save("p3", {"u": "c", "r": {}}, 60, only_if_kept=True)
        assert await store.take("p3") is None
        await store.save("p4", {"u": "d", "r": {}}, 60)
        await store.save("p4", {"u": "d", "r": {"x": "2-0"}}, 60, only_if_kept=True)
        assert await store.take("p4") == {"u": "d", "r": {"x": "2-0"}}
    finally:
        await client.aclose()


async def test_drain_closes_transports_so_the_official_client_comes_back(redis_url):
    """The drain ends sockets at the Engine.IO level: the client reads ``transport close``
    (not ``io server disconnect``, after which it would stay down), reconnects by itself
    and recovers on the instance the load balancer (here: the proxy) now sends it to."""
    async with setup(redis_url, count=2) as env:
        sender = await connect(env.servers[1].url, "bob")
        try:
            async with js_client(env.url, "websocket", token("alice")) as js:
                await js.call("join", "r")
                await sender.call("join:room", "r")
                mark = len(js.lines)
                # the load balancer sends new connections elsewhere; open ones stay
                env.proxy.target_port = int(env.servers[1].url.rsplit(":", 1)[1])
                await drain(env.servers[0].app)
                gone = await js.event("disconnect", after=mark)
                assert gone["reason"] == "transport close"
                await sender.call("message:send", {"roomId": "r", "message": "meanwhile"})
                back = await js.event("connect", after=mark)
                assert back["recovered"] is True
                await js.wait(lambda line: line.get("text") == "meanwhile")
                events = [line["ev"] for line in js.lines[mark:]]
                assert events[:2] == ["shutdown", "disconnect"]
                assert user_sessions(env.servers[1], "alice")
        finally:
            await sender.close()


async def test_a_gap_older_than_history_is_not_recovered(clients):
    """Messages dropped from history cannot be replayed: a fresh session, never a silent
    hole."""
    async with running_server(history_size=2) as server:
        alice = await connect(server.url, "alice")
        await alice.call("join:room", "r")
        [session] = user_sessions(server, "alice")
        await alice.sio.eio.disconnect(abort=True)
        await until(lambda: not user_sessions(server, "alice"))
        bob = await connect(server.url, "bob")
        clients.append(bob)
        await bob.call("join:room", "r")
        for n in range(5):
            await bob.call("message:send", {"roomId": "r", "message": f"m{n}"})
        back = await connect(server.url, None, auth={"token": token("alice"), "pid": session.pid})
        clients.append(back)
        assert (await back.call("presence:get", "r"))["error"]["code"] == "not_in_room"
        assert back.events["message:received"] == []
        assert recoveries(server, "incomplete") == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_client_moved_before_its_drain_turn_still_recovers(redis_url, transport):
    """Behind a load balancer a draining instance loses its clients' next requests at once
    (a long-poll lands on another instance: ``Invalid session``), before the drain reaches
    them. Their sessions are saved when the drain begins, so they recover anyway; the late
    close on the draining instance does not bring a used session back."""
    async with setup(redis_url, count=2, shutdown_delay_seconds=3) as env:
        sender = await connect(env.servers[1].url, "bob")
        try:
            async with js_client(env.url, transport, token("alice")) as js:
                await js.call("join", "r")
                await sender.call("join:room", "r")
                [session] = user_sessions(env.servers[0], "alice")
                draining = asyncio.create_task(drain(env.servers[0].app))
                await until(lambda: session.kept)
                await sender.call("message:send", {"roomId": "r", "message": "meanwhile"})
                mark = len(js.lines)
                env.point_at(env.servers[1])  # the client's connection moves elsewhere
                back = await js.event("connect", after=mark)
                assert back["recovered"] is True
                assert user_sessions(env.servers[1], "alice")
                await js.wait(lambda line: line.get("text") == "meanwhile")
                await draining
                assert js.texts() == ["meanwhile"]
                assert await env.servers[0].app[keys.STORES].sessions.take(session.pid) is None
        finally:
            await sender.close()


async def test_a_failing_restore_still_connects_fresh(server, clients, monkeypatch):
    """Whatever breaks during a restore, the handshake succeeds with a new session."""
    alice = await connect(server.url, "alice")
    await alice.call("join:room", "r")
    [session] = user_sessions(server, "alice")
    await alice.sio.eio.disconnect(abort=True)
    await until(lambda: not user_sessions(server, "alice"))
    recovery = server.app[keys.NAMESPACE].recovery

    async def broken(*_: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(recovery, "missed", broken)
    back = await connect(server.url, None, auth={"token": token("alice"), "pid": session.pid})
    clients.append(back)
    assert (await back.call("presence:get", "r"))["error"]["code"] == "not_in_room"
    [fresh] = user_sessions(server, "alice")
    assert fresh.pid != session.pid and not fresh.rooms
    assert not [r for r in server.app[keys.SIO].manager.rooms["/"] if str(r).startswith("room:")]
