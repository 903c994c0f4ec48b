"""service.client against real servers: typed acks and errors, token refresh, back-off,
failover across URLs and instances, and exactly-once, in-order recovery after a reconnect."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from service import keys
from service.app import create_app
from service.client import (
    CLOSED,
    CONNECTED,
    RECOVERED,
    Backoff,
    ChatClient,
    ConnectFailed,
    Disconnected,
    HandshakeRefused,
    InvalidPayload,
    NotInRoom,
    RateLimited,
    TooLarge,
    Unauthorized,
)
from service.config import Settings

from .e2e.lb import sticky_lb
from .helpers import (
    free_port,
    make_settings,
    running_server,
    spawn_service,
    token,
)

FAST = Backoff(initial=0.05, maximum=0.5)


class Recorder:
    """Everything a client's handlers saw, with a way to wait for a condition."""

    def __init__(self, client: ChatClient) -> None:
        self.events: list[tuple[str, Any]] = []
        self._changed = asyncio.Event()
        client.on("*", self._record)

    def _record(self, item: tuple[str, Any]) -> None:
        self.events.append(item)
        self._changed.set()

    def of(self, event: str) -> list[Any]:
        return [data for name, data in self.events if name == event]

    def texts(self, room: str) -> list[str]:
        return [m["message"] for m in self.of("message:received") if m["roomId"] == room]

    async def until(self, condition: Any, timeout: float = 10) -> None:
        async def loop() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), timeout)


@contextlib.asynccontextmanager
async def serve_on(port: int, settings: Settings) -> AsyncIterator[web.Application]:
    """A server on a fixed port, so a restart comes back at the same URL."""
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield app
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def chat(urls: str | list[str], user: str = "alice", **kwargs: Any):
    kwargs.setdefault("backoff", FAST)
    client = ChatClient(urls, kwargs.pop("token", None) or token(user), **kwargs)
    await client.connect()
    try:
        yield client
    finally:
        await client.close()


def test_backoff_grows_exponentially_with_bounded_jitter():
    backoff = Backoff(initial=0.5, maximum=8.0, multiplier=2.0, jitter=0.5)
    rng = random.Random(7)
    for attempt, base in enumerate([0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]):
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        assert all(base * 0.5 <= d <= base for d in delays)
        assert max(delays) - min(delays) > base * 0.3, "no jitter"


async def test_every_helper_returns_its_ack(server):
    async with chat(server.url, "alice") as alice, chat(server.url, "bob") as bob:
        seen = Recorder(bob)
        joined = await alice.join("lobby")
        assert joined == {"ok": True, "roomId": "lobby", "history": []}
        await bob.join("lobby")
        await alice.typing_start("lobby")
        await alice.typing_stop("lobby")
        sent = await alice.send("lobby", "hello")
        assert sent["ok"] is True and isinstance(sent["id"], str)
        private = await alice.private("bob", "psst")
        assert private["ok"] is True
        history = await bob.history("lobby", limit=10)
        assert [m["message"] for m in history["messages"]] == ["hello"]
        assert (await bob.history("lobby", before=sent["id"]))["messages"] == []
        assert sorted((await bob.presence("lobby"))["users"]) == ["alice", "bob"]
        await seen.until(lambda: seen.of("message:private:received"))
        assert [name for name, _ in seen.events if not name.startswith("client:")] == [
            "joined:room",
            "typing:user:start",
            "typing:user:stop",
            "message:received",
            "message:private:received",
        ]
        assert seen.of("message:private:received")[0]["fromUserId"] == "alice"
        assert await alice.leave("lobby") == {"ok": True, "roomId": "lobby"}
        assert alice.rooms == []
        await seen.until(lambda: seen.of("user:left"))


async def test_refusals_raise_typed_errors_with_code_and_message():
    async with (
        running_server(max_message_bytes=16, rate_limit_events=12) as server,
        chat(server.url) as alice,
    ):
        with pytest.raises(NotInRoom) as refused:
            await alice.send("elsewhere", "hi")
        assert refused.value.code == "not_in_room" and refused.value.message
        with pytest.raises(InvalidPayload):
            await alice.join("bad room id!")
        assert alice.rooms == []
        await alice.join("r")
        with pytest.raises(TooLarge) as too_large:
            await alice.send("r", "x" * 17)
        assert too_large.value.details["maxBytes"] == 16
        with pytest.raises(RateLimited) as limited:
            for _ in range(20):
                await alice.presence("r")
        assert limited.value.retry_after_ms and limited.value.retry_after_ms > 0


async def test_unauthorized_token_fails_connect_at_once(server):
    client = ChatClient(server.url, "not-a-jwt", backoff=FAST)
    closed: list[Any] = []
    client.on(CLOSED, closed.append)
    with pytest.raises(Unauthorized) as refused:
        await client.connect(retry=True)
    assert refused.value.code == "unauthorized"
    expired = ChatClient(server.url, token("alice", ttl=-60), backoff=FAST)
    with pytest.raises(Unauthorized):
        await expired.connect()


async def test_next_url_when_the_first_is_down_or_draining(server):
    dead = f"http://127.0.0.1:{free_port()}"
    async with chat([dead, server.url]) as client:
        assert client.url == server.url
    async with running_server() as draining:
        draining.app[keys.GATE].draining = True
        with pytest.raises(HandshakeRefused) as refused:
            await ChatClient(draining.url, token("alice")).connect()
        assert refused.value.code == "draining"
        async with chat([draining.url, server.url]) as client:
            assert client.url == server.url


async def test_gives_up_after_max_attempts_and_says_why():
    port = free_port()
    async with serve_on(port, make_settings()):
        client = ChatClient(
            f"http://127.0.0.1:{port}", token("alice"), backoff=FAST, max_attempts=2
        )
        await client.connect()
        events = Recorder(client)
    with pytest.raises(ConnectFailed):
        await asyncio.wait_for(client.wait_closed(), 10)
    assert events.of(CLOSED)[-1]["code"] == "connect_failed"
    with pytest.raises(Exception, match="closed"):
        await client.send("x", "y")


async def test_restart_refreshes_token_rejoins_and_reports_the_lost_gap():
    """Same URL, new process-less instance: memory history is gone, so the gap is reported."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    minted: list[str] = []

    async def fresh_token() -> str:
        minted.append(token("alice"))
        return minted[-1]

    async with serve_on(port, make_settings()):
        client = ChatClient(url, fresh_token, backoff=Backoff(initial=0.2, maximum=0.5))
        seen = Recorder(client)
        await client.connect()
        assert len(minted) == 1
        await client.join("lobby")
        await client.send("lobby", "before")
        await seen.until(lambda: seen.texts("lobby") == ["before"])
    try:
        before_restart = len(minted)
        sending = asyncio.create_task(client.send("lobby", "while away"))  # waits for ready
        async with serve_on(port, make_settings()):
            await seen.until(lambda: seen.of(RECOVERED))
            assert (await sending)["ok"] is True
            assert seen.of(RECOVERED) == [{"roomId": "lobby", "recovered": False, "missed": 0}]
            assert len(minted) > before_restart, "the token callable runs before each connect"
            await seen.until(lambda: seen.texts("lobby") == ["before", "while away"])
            assert [e for e in seen.of(CONNECTED)] == [
                {"url": url, "reconnect": False},
                {"url": url, "reconnect": True},
            ]
            assert client.reconnects == 1
    finally:
        await client.close()


async def test_calls_while_reconnecting_fail_as_disconnected_after_the_timeout():
    port = free_port()
    async with serve_on(port, make_settings()):
        client = ChatClient(f"http://127.0.0.1:{port}", token("alice"), ack_timeout=0.5)
        await client.connect()
    try:
        with pytest.raises(Disconnected):
            await client.presence("lobby")  # no server: waits ack_timeout for a connection
    finally:
        await client.close()


async def test_cookie_jar_of_the_given_session_is_kept(server):
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        jar.update_cookies({"SERVERID": "s1"}, response_url=aiohttp.client.URL(server.url))
        async with chat(server.url, http_session=http, transports=["polling"]) as client:
            await client.join("lobby")
            assert (await client.send("lobby", "over polling"))["ok"] is True
        assert not http.closed, "a caller's session is the caller's to close"
        assert any(c.key == "SERVERID" for c in jar)


# -- failover across instances (cluster mode: shared history through Redis) ---------------


async def send_steadily(sender: ChatClient, room: str, count: int, every: float) -> list[str]:
    """``count`` numbered messages, one per ``every`` seconds; the acked ids in order."""
    ids = []
    for n in range(count):
        ids.append((await sender.send(room, f"m{n}"))["id"])
        await asyncio.sleep(every)
    return ids


async def test_failover_to_another_instance_recovers_exactly_once_in_order(redis_url):
    """Alice's instance goes away mid-stream; she lands on the other one, rejoins with
    ``since`` and sees every message once, in order: live, missed and their overlap."""
    async with (
        running_server(redis_url=redis_url, instance_id="a") as a,
        running_server(redis_url=redis_url, instance_id="b") as b,
    ):
        alice = ChatClient([a.url, b.url], token("alice"), backoff=Backoff(0.3, 1.0))
        seen = Recorder(alice)
        await alice.connect()
        async with chat(b.url, "bob") as bob:
            await alice.join("stream")
            await alice.join("side")
            await bob.join("stream")
            await bob.join("side")
            sending = asyncio.create_task(send_steadily(bob, "stream", 40, 0.02))
            await seen.until(lambda: len(seen.texts("stream")) >= 5)
            await a.runner.cleanup()  # the instance alice is on goes away
            await bob.send("side", "while alice was away")
            ids = await sending
            await seen.until(lambda: len(seen.texts("stream")) >= 40, timeout=15)
            await seen.until(lambda: seen.texts("side") == ["while alice was away"])
            await asyncio.sleep(0.3)  # any duplicate would arrive by now
            got = [m["id"] for m in seen.of("message:received") if m["roomId"] == "stream"]
            assert got == ids
            assert seen.texts("stream") == [f"m{n}" for n in range(40)]
            assert alice.url == b.url and alice.reconnects == 1
            assert sorted(r["roomId"] for r in seen.of(RECOVERED)) == ["side", "stream"]
            assert all(r["recovered"] for r in seen.of(RECOVERED))
            assert sum(r["missed"] for r in seen.of(RECOVERED)) >= 2
            assert sorted((await bob.presence("stream"))["users"]) == ["alice", "bob"]
        await alice.close()


async def test_killed_and_drained_processes_fail_over(redis_url):
    """Real processes: SIGKILL one (no goodbye), then SIGTERM the next (``server:shutdown``
    and a drain); the client follows to the survivor each time and misses nothing."""
    env = {
        "REDIS_URL": redis_url,
        "SHUTDOWN_DELAY_SECONDS": "0",
        "SHUTDOWN_DRAIN_SECONDS": "0.5",
    }
    procs = [spawn_service(env={**env, "INSTANCE_ID": f"p{n}"}) for n in range(3)]
    try:
        urls = [proc.url for proc in procs]
        alice = ChatClient(urls, token("alice"), backoff=Backoff(0.2, 1.0))
        seen = Recorder(alice)
        await alice.connect()
        assert alice.url == urls[0]
        async with chat(urls[2], "bob") as bob:
            await alice.join("room")
            await bob.join("room")
            ids = [(await bob.send("room", "before"))["id"]]
            await seen.until(lambda: len(seen.texts("room")) == 1)

            procs[0].proc.send_signal(signal.SIGKILL)
            procs[0].proc.wait(10)
            ids += [(await bob.send("room", f"after kill {n}"))["id"] for n in range(3)]
            await seen.until(lambda: len(seen.texts("room")) == 4)
            assert alice.url == urls[1]

            procs[1].proc.send_signal(signal.SIGTERM)
            await seen.until(lambda: seen.of("server:shutdown"))
            ids += [(await bob.send("room", f"after drain {n}"))["id"] for n in range(3)]
            await seen.until(lambda: len(seen.texts("room")) == 7)
            assert procs[1].proc.wait(15) == 0
            await asyncio.sleep(0.3)
            assert [m["id"] for m in seen.of("message:received")] == ids
            assert alice.url == urls[2] and alice.reconnects == 2
        await alice.close()
    finally:
        for proc in procs:
            proc.stop(signal.SIGKILL)


async def test_long_polling_through_a_sticky_lb_survives_losing_its_instance(redis_url, tmp_path):
    """Polling needs every request on one instance: the client keeps the LB's cookie (also
    for 127.0.0.1), and after its instance dies the LB sends it to the other one."""
    async with (
        running_server(redis_url=redis_url, instance_id="a") as a,
        running_server(redis_url=redis_url, instance_id="b") as b,
        sticky_lb(tmp_path, [a.url, b.url]) as lb,
    ):
        async with aiohttp.ClientSession() as strict_jar:  # drops cookies from IP addresses
            cookieless = ChatClient(
                lb, token("eve"), http_session=strict_jar, transports=["polling"], connect_timeout=1
            )
            with pytest.raises(ConnectFailed):  # negative control: "Invalid session"
                await cookieless.connect()
        alice = ChatClient(lb, token("alice"), transports=["polling"], backoff=Backoff(0.3, 1))
        seen = Recorder(alice)
        await alice.connect()
        # the LB picked alice's instance; bob talks to the other one directly
        doomed, survivor = (a, b) if a.app[keys.NAMESPACE].sessions else (b, a)
        async with chat(survivor.url, "bob") as bob:
            await alice.join("lb")
            await bob.join("lb")
            for n in range(5):  # many polling requests: all must reach the same instance
                await bob.send("lb", f"before {n}")
            await seen.until(lambda: len(seen.texts("lb")) == 5)
            await doomed.runner.cleanup()
            for n in range(3):
                await bob.send("lb", f"after {n}")
            await seen.until(lambda: len(seen.texts("lb")) == 8, timeout=15)
            assert seen.texts("lb") == [f"before {n}" for n in range(5)] + [
                f"after {n}" for n in range(3)
            ]
            assert alice.reconnects == 1
            assert survivor.app[keys.NAMESPACE].sessions
        await alice.close()
