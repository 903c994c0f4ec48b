"""Floods: handshake storms, MAX_CONNECTIONS, event floods across instances, a consumer that
never reads its socket, and many rooms per user. Figures are printed, never asserted as
timings (bounds here are functional and generous)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from service import keys
from service.engine.guard import SESSION_SLACK, HandshakeLimiter, client_address, parse_networks

from .helpers import connect, connect_error, running_server, token
from .rawclient import Closed, open_raw
from .test_cluster import cluster


def write_report(name: str, data: dict[str, Any]) -> None:
    """Figures for docs/reliability.md, when RELIABILITY_REPORT_DIR is set."""
    directory = os.environ.get("RELIABILITY_REPORT_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"{name}.json"), "w") as out:
            json.dump(data, out, indent=1)


def sample(app: Any, name: str, **labels: str) -> float:
    return app[keys.METRICS].registry.get_sample_value(name, labels) or 0.0


async def handshake(http: aiohttp.ClientSession, url: str, xff: str | None = None) -> int:
    headers = {"X-Forwarded-For": xff} if xff else {}
    async with http.get(f"{url}/socket.io/?EIO=4&transport=polling", headers=headers) as resp:
        await resp.read()
        return resp.status


# -- handshake storms --------------------------------------------------------------------------


async def test_handshake_storm_is_bounded_per_address() -> None:
    async with running_server(handshake_rate_per_address=5, handshake_burst_per_address=10) as srv:
        async with aiohttp.ClientSession() as http:
            # a client behind the (trusted, loopback) proxy, as behind an ingress
            client = "203.0.113.50"
            started = time.monotonic()
            statuses = Counter(
                await asyncio.gather(*(handshake(http, srv.url, client) for _ in range(200)))
            )
            storm_seconds = time.monotonic() - started
            assert statuses[200] <= 10 + 5 * storm_seconds + 1, statuses
            assert statuses[429] >= 200 - statuses[200]
            async with http.get(
                f"{srv.url}/socket.io/?EIO=4&transport=polling",
                headers={"X-Forwarded-For": client},
            ) as resp:
                assert resp.status == 429
                assert int(resp.headers["Retry-After"]) >= 1
                assert (await resp.json())["code"] == "rate_limited"
            # other addresses (behind a trusted proxy: loopback) have their own buckets
            others = await asyncio.gather(
                *(handshake(http, srv.url, f"203.0.113.{n}") for n in range(20))
            )
            assert set(others) == {200}
            # a spoofed hop left of the proxy's own entry does not escape the limit
            spoofed = Counter(
                await asyncio.gather(
                    *(handshake(http, srv.url, f"10.9.9.{n}, {client}") for n in range(30))
                )
            )
            assert spoofed[200] <= 2, spoofed
            # the bucket refills: one handshake a fifth of a second
            await asyncio.sleep(0.5)
            assert await handshake(http, srv.url, client) == 200
            # a process on this host (no forwarded address) is not limited
            local = await asyncio.gather(*(handshake(http, srv.url) for _ in range(30)))
            assert set(local) == {200}
            # other endpoints are never limited
            async with http.get(f"{srv.url}/healthz") as resp:
                assert resp.status == 200
        refused = sample(srv.app, "socketio_handshakes_refused_total", reason="rate_limited")
    assert refused >= statuses[429]
    report = {
        "attempts": 200,
        "seconds": round(storm_seconds, 3),
        "accepted": statuses[200],
        "refused_429": statuses[429],
        "rate_per_address": 5,
        "burst_per_address": 10,
    }
    print("\nhandshake storm:", report)
    write_report("handshake-storm", report)


@pytest.mark.slow
async def test_overloaded_at_max_connections_and_engineio_session_cap(clients) -> None:
    async with running_server(
        max_connections=5, handshake_rate_per_address=0, connect_timeout_seconds=1
    ) as srv:
        for n in range(5):
            clients.append(await connect(srv.url, f"user{n}"))
        refused = await connect_error(srv.url, auth={"token": token("late")})
        assert refused["code"] == "overloaded"
        # Engine.IO sessions that never connect a namespace are capped too...
        async with aiohttp.ClientSession() as http:
            cap = 5 + SESSION_SLACK
            statuses = Counter()
            for _ in range(cap + 20):
                statuses[await handshake(http, srv.url)] += 1
            assert statuses[503] >= 19, statuses
            async with http.get(f"{srv.url}/socket.io/?EIO=4&transport=polling") as resp:
                assert resp.status == 503 and (await resp.json())["code"] == "overloaded"
            # ...and closed after CONNECT_TIMEOUT_SECONDS, so the cap frees itself
            deadline = time.monotonic() + 10
            while await handshake(http, srv.url) != 200:
                assert time.monotonic() < deadline, "idle Engine.IO sessions never expired"
                await asyncio.sleep(0.2)
            freed_after = time.monotonic() - (deadline - 10)
        evicted = sample(srv.app, "socketio_clients_evicted_total", reason="connect_timeout")
        assert evicted >= 100
        # the connected clients were not touched
        assert (await clients[0].call("join:room", "r"))["ok"]
    print(f"\nsession cap: {dict(statuses)}; idle sessions freed within {freed_after:.1f}s")


# -- event floods ------------------------------------------------------------------------------


async def test_event_flood_is_limited_cluster_wide_and_others_unaffected(redis_url, clients):
    events, window = 40, 60.0
    async with cluster(redis_url, rate_limit_events=events, rate_limit_window_seconds=window) as (
        a,
        b,
    ):
        floods = [await connect(a.url, "flooder"), await connect(b.url, "flooder")]
        bystander = await connect(a.url, "bystander")
        clients += [*floods, bystander]
        started = time.monotonic()

        async def flood(client: Any) -> Counter[str]:
            counts: Counter[str] = Counter()
            acks = await asyncio.gather(
                *(client.call("join:room", "r", timeout=20) for _ in range(300))
            )
            for ack in acks:
                counts["ok" if ack["ok"] else ack["error"]["code"]] += 1
            return counts

        latencies: list[float] = []

        async def bystander_calls() -> None:
            for _ in range(10):
                t0 = time.perf_counter()
                assert (await bystander.call("join:room", "r"))["ok"]
                latencies.append(time.perf_counter() - t0)
                await asyncio.sleep(0.05)

        results = await asyncio.gather(*(flood(c) for c in floods), bystander_calls())
        elapsed = time.monotonic() - started
        total = results[0] + results[1]
        allowed = events - 2 + elapsed * events / window + 1  # handshakes took 2 tokens
        assert total["ok"] <= allowed, (total, allowed)
        assert total["ok"] >= events - 2 - 1
        assert total["rate_limited"] == 600 - total["ok"]
    report = {
        "events_sent": 600,
        "instances": 2,
        "accepted": total["ok"],
        "rate_limited": total["rate_limited"],
        "capacity": events,
        "seconds": round(elapsed, 2),
        "bystander_p50_ms": round(statistics.median(latencies) * 1000, 2),
        "bystander_max_ms": round(max(latencies) * 1000, 2),
    }
    print("\nevent flood:", report)
    write_report("event-flood", report)


# -- a consumer that never reads -----------------------------------------------------------------


async def stalled_websocket(url: str, user: str, room: str) -> asyncio.StreamWriter:
    """A websocket client that connects, joins ``room`` and then never reads again, with a
    small receive buffer: the server sees a peer whose TCP window stays shut."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await reader.readuntil(b"\r\n\r\n")

    async def read_frame() -> str:
        head = await reader.readexactly(2)
        n = head[1] & 0x7F
        if n == 126:
            n = int.from_bytes(await reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await reader.readexactly(8), "big")
        return (await reader.readexactly(n)).decode()

    def send(text: str) -> None:
        payload = text.encode()
        n = len(payload)
        head = bytes((0x81, 0x80 | n)) if n < 126 else bytes((0x81, 0xFE)) + n.to_bytes(2, "big")
        writer.write(head + b"\0\0\0\0" + payload)  # masked with a zero key

    assert (await read_frame()).startswith("0")
    send("40" + json.dumps({"token": token(user)}))
    assert (await read_frame()).startswith("40")
    send(f'421["join:room","{room}"]')
    while not (await read_frame()).startswith("431"):
        pass
    return writer  # from here on nobody reads


@contextlib.asynccontextmanager
async def flood_room(
    clients: list[Any], room: str, send_buffer_bytes: int
) -> AsyncIterator[tuple[Any, Any, Any]]:
    """A server whose only limit in play is the send buffer, with a sender and a healthy
    receiver in ``room``: yields (server, sender, healthy)."""
    async with running_server(
        rate_limit_events=10**9,
        send_buffer_bytes=send_buffer_bytes,
        handshake_rate_per_address=0,
        ping_interval=25,  # the overflow, not the ping timeout, must catch a slow reader
        ping_timeout=20,
    ) as srv:
        sender = await connect(srv.url, "sender")
        healthy = await connect(srv.url, "healthy")
        clients += [sender, healthy]
        for client in (sender, healthy):
            await client.call("join:room", room)
        yield srv, sender, healthy


async def send_burst(sender: Any, room: str, text: str, count: int = 100) -> int:
    """``count`` messages at once (acks awaited together); returns ``count``."""
    await asyncio.gather(
        *(sender.call("message:send", {"roomId": room, "message": text}) for _ in range(count))
    )
    return count


def count_and_clear(client: Any, text: str) -> int:
    """How many ``text`` messages ``client`` got; then forget them (wait_for scans the list)."""
    got = client.events["message:received"]
    count = sum(1 for m in got if m["message"] == text)
    got.clear()
    return count


@pytest.mark.slow
async def test_slow_consumer_is_disconnected_and_others_keep_their_latency(clients) -> None:
    buffer = 256 * 1024
    async with flood_room(clients, "flood", buffer) as (srv, sender, healthy):
        namespace = srv.app[keys.NAMESPACE]

        async def round_trip_ms(text: str) -> float:
            t0 = time.perf_counter()
            await sender.call("message:send", {"roomId": "flood", "message": text})
            await healthy.wait_for("message:received", lambda m: m["message"] == text)
            return (time.perf_counter() - t0) * 1000

        before = [await round_trip_ms(f"before-{n}") for n in range(20)]
        stalled = await stalled_websocket(srv.url, "stalled", "flood")
        assert len(namespace.sessions) == 3
        payload = "x" * 3000
        started = time.monotonic()
        sent = 0
        during: list[float] = []
        received = 0
        while sample(srv.app, "socketio_clients_evicted_total", reason="slow_consumer") < 1:
            assert time.monotonic() - started < 120, "the slow consumer was never disconnected"
            sent += await send_burst(sender, "flood", payload)
            if sent % 1000 == 0:
                received += count_and_clear(healthy, payload)
                during.append(await round_trip_ms(f"during-{sent}"))
        evicted_after = time.monotonic() - started
        await asyncio.sleep(0.5)
        assert len(namespace.sessions) == 2  # the stalled one is gone, the others stay
        assert not any(s.user_id == "stalled" for s in namespace.sessions.values())
        # the healthy receiver got every message
        received += count_and_clear(healthy, payload)
        assert received == sent
        after = [await round_trip_ms(f"after-{n}") for n in range(20)]
        stalled.close()
    report = {
        "send_buffer_bytes": buffer,
        "messages_until_disconnect": sent,
        "bytes_until_disconnect": sent * len(payload),
        "seconds_until_disconnect": round(evicted_after, 2),
        "healthy_rtt_ms_before_p50": round(statistics.median(before), 2),
        "healthy_rtt_ms_during_p50": round(statistics.median(during), 2) if during else None,
        "healthy_rtt_ms_after_p50": round(statistics.median(after), 2),
        "healthy_messages_lost": 0,
    }
    print("\nslow consumer:", report)
    write_report("slow-consumer", report)


@pytest.mark.slow
async def test_many_slow_consumers_are_all_evicted(clients) -> None:
    """Several receivers that stop reading overflow together (often in the same turn of the
    event loop, where the guard finds each queue's socket through one index): every one of
    them is evicted, the healthy receiver gets every message."""
    async with flood_room(clients, "herd", 64 * 1024) as (srv, sender, healthy):
        stalled = [await stalled_websocket(srv.url, f"stalled{n}", "herd") for n in range(6)]
        namespace = srv.app[keys.NAMESPACE]
        assert len(namespace.sessions) == 8
        payload = "y" * 3000
        started = time.monotonic()
        sent = received = 0
        while sample(srv.app, "socketio_clients_evicted_total", reason="slow_consumer") < 6:
            assert time.monotonic() - started < 120, "not every slow consumer was disconnected"
            sent += await send_burst(sender, "herd", payload)
            received += count_and_clear(healthy, payload)
        await asyncio.sleep(0.5)
        assert sorted(s.user_id for s in namespace.sessions.values()) == ["healthy", "sender"]
        received += count_and_clear(healthy, payload)
        assert received == sent
        for writer in stalled:
            writer.close()


@pytest.mark.slow
async def test_a_stalled_websocket_is_aborted_after_its_ping_timeout(clients) -> None:
    """Little traffic, no overflow: python-engineio closes the socket on ping timeout but
    its writer would wait forever on the unread TCP connection; the guard aborts it."""
    async with running_server(ping_interval=0.5, ping_timeout=1, rate_limit_events=10**9) as srv:
        sender = await connect(srv.url, "sender")
        clients.append(sender)
        await sender.call("join:room", "s")
        stalled = await stalled_websocket(srv.url, "stalled", "s")
        eio = srv.app[keys.SIO].eio
        # ~1.5 MB: fills the kernel buffers and pauses the server's transport, below the
        # direct-write threshold and the send buffer, so nothing evicts it for size
        for _ in range(10):
            await asyncio.gather(
                *(
                    sender.call("message:send", {"roomId": "s", "message": "z" * 3000})
                    for _ in range(50)
                )
            )
        started = time.monotonic()
        guard = srv.app[keys.GUARD]
        while len(guard.websockets) > 1 or len(eio.sockets) > 1:  # only the sender left
            assert time.monotonic() - started < 15, "the stalled websocket was never closed"
            await asyncio.sleep(0.1)
        closed_after = time.monotonic() - started
        aborted = sample(srv.app, "socketio_clients_evicted_total", reason="stalled")
        print(
            f"\nstalled websocket closed {closed_after:.1f}s after the traffic (aborted: {aborted})"
        )
        assert len(srv.app[keys.NAMESPACE].sessions) == 1
        stalled.close()


async def test_polling_client_that_stops_polling_is_bounded(clients) -> None:
    """A long-polling client that stops sending GETs: its queue is bounded, then it is
    disconnected, long before its ping timeout."""
    async with running_server(
        rate_limit_events=10**9, send_buffer_bytes=64 * 1024, ping_interval=25, ping_timeout=20
    ) as srv:
        sender = await connect(srv.url, "sender")
        clients.append(sender)
        await sender.call("join:room", "q")
        async with aiohttp.ClientSession() as http:
            raw = await open_raw(srv.url, "polling", http)
            await raw.connect({"token": token("idle")})
            assert (await raw.call("join:room", "q"))["ok"]
            raw._reader.cancel()  # stop polling; the session stays open server-side
            with contextlib.suppress(BaseException):
                await raw._reader
            namespace = srv.app[keys.NAMESPACE]
            assert len(namespace.sessions) == 2
            for _ in range(40):
                await sender.call("message:send", {"roomId": "q", "message": "y" * 3000})
            await asyncio.sleep(0.2)
            assert len(namespace.sessions) == 1
            assert sample(srv.app, "socketio_clients_evicted_total", reason="slow_consumer") == 1
            with pytest.raises(Closed):
                await raw.send('42["presence:get","q"]')


# -- rooms -----------------------------------------------------------------------------------


async def test_rooms_per_socket_are_bounded_and_per_user_exposure_is_reported(clients) -> None:
    async with running_server(max_rooms_per_socket=50, rate_limit_events=10**9) as srv:
        sockets = [await connect(srv.url, "hoarder") for _ in range(4)]
        clients.extend(sockets)
        joined = 0
        for n, client in enumerate(sockets):
            acks = await asyncio.gather(*(client.call("join:room", f"h{n}-{i}") for i in range(51)))
            joined += sum(1 for ack in acks if ack["ok"])
            refused = [ack["error"]["code"] for ack in acks if not ack["ok"]]
            assert refused == ["too_many_rooms"]
        rooms = srv.app[keys.SIO].manager.rooms["/"]
        room_count = sum(1 for r in rooms if isinstance(r, str) and r.startswith("room:"))
    # per socket the bound holds; per user it is sockets x MAX_ROOMS_PER_SOCKET, and sockets
    # per user are limited only by the handshake rate limit and MAX_CONNECTIONS
    assert joined == 4 * 50 and room_count == 200
    print(f"\nrooms: one user, 4 sockets -> {room_count} rooms (50 per socket)")


def test_client_address_behind_trusted_proxies() -> None:
    trusted = parse_networks(("127.0.0.0/8", "10.0.0.0/8"))
    # a direct, untrusted peer is the client, whatever it claims
    assert client_address("203.0.113.9", ["1.2.3.4"], trusted) == "203.0.113.9"
    # behind trusted proxies: the right-most hop that is not one of them
    assert client_address("10.0.0.5", ["1.2.3.4, 198.51.100.7, 10.0.0.9"], trusted) == (
        "198.51.100.7"
    )
    assert client_address("127.0.0.1", [], trusted) == "127.0.0.1"
    assert client_address("10.0.0.5", ["garbage, 198.51.100.7"], trusted) == "198.51.100.7"
    assert client_address("10.0.0.5", ["198.51.100.7, not-an-ip"], trusted) == "10.0.0.5"
    # a spoofed loopback hop left of the proxy's entry is skipped like any trusted one
    assert client_address("10.0.0.5", ["127.0.0.1, 198.51.100.7"], trusted) == "198.51.100.7"
    # a peer elsewhere cannot claim to be on this host (loopback is exempt from limits and
    # is what ADMIN_ALLOWED_NETWORKS allows by default)
    assert client_address("10.1.2.3", ["127.0.0.1"], trusted) == "10.1.2.3"
    assert client_address("10.1.2.3", ["::1"], trusted) == "10.1.2.3"
    assert client_address("10.0.0.5", ["127.0.0.1, 10.0.0.9"], trusted) == "10.0.0.9"
    # a proxy on this host (a sidecar) does vouch for a loopback client
    assert client_address("127.0.0.1", ["127.0.0.1"], trusted) == "127.0.0.1"
    # IPv6 clients are keyed by their /64
    assert client_address("2001:db8::1", [], trusted) == "2001:db8::/64"
    assert client_address("2001:db8::ffff", [], trusted) == "2001:db8::/64"


def test_handshake_buckets_refill_and_stay_bounded() -> None:
    limiter = HandshakeLimiter(rate=2, burst=3)
    assert [limiter.take("a", now=0) for _ in range(3)] == [0, 0, 0]
    assert limiter.take("a", now=0) == pytest.approx(0.5)
    assert limiter.take("a", now=0.5) == 0  # one token back after 1/rate seconds
    assert limiter.take("b", now=0.5) == 0  # addresses do not share buckets
    for n in range(3):
        limiter.take(f"x{n}", now=100)
    assert len(limiter) <= 5


# -- sessions that dodge the handshake limits ------------------------------------------------


async def raw_handshake(http: aiohttp.ClientSession, url: str, query: str, xff: str) -> int:
    """A polling handshake with an arbitrary query tail (``sid=``, ``sid``...)."""
    headers = {"X-Forwarded-For": xff}
    async with http.get(f"{url}/socket.io/?EIO=4&transport=polling&{query}", headers=headers) as r:
        await r.read()
        return r.status


@pytest.mark.parametrize("query", ["sid=", "sid", "sid=&sid=", "sid=not-a-session"])
async def test_an_empty_or_unknown_sid_is_a_handshake_and_is_limited(query: str) -> None:
    """python-engineio drops empty query values, so ``sid=`` starts a new session: it must
    pay the per-address handshake limit like any handshake, and be counted."""
    async with running_server(handshake_rate_per_address=1, handshake_burst_per_address=5) as srv:
        async with aiohttp.ClientSession() as http:
            started = time.monotonic()
            statuses = Counter(
                await asyncio.gather(
                    *(raw_handshake(http, srv.url, query, "203.0.113.77") for _ in range(40))
                )
            )
            # websocket handshakes too
            ws_accepted = 0
            for _ in range(10):
                try:
                    ws = await http.ws_connect(
                        f"{srv.url}/socket.io/?EIO=4&transport=websocket&{query}",
                        headers={"X-Forwarded-For": "203.0.113.77"},
                    )
                except aiohttp.WSServerHandshakeError as exc:
                    assert exc.status in (400, 429)
                else:
                    ws_accepted += 1
                    await ws.close()
            elapsed = time.monotonic() - started
        held = len(srv.app[keys.SIO].eio.sockets)
        refused = sample(srv.app, "socketio_handshakes_refused_total", reason="rate_limited")
    print(f"\n{query!r}: polling {dict(statuses)}, websocket accepted {ws_accepted}, held {held}")
    allowed = 5 + elapsed * 1 + 1  # burst + rate over the attempts
    assert statuses[200] + ws_accepted <= allowed, (statuses, ws_accepted, elapsed)
    assert statuses[429] >= 40 - allowed
    assert refused >= statuses[429]
    write_report(
        f"empty-sid-{query.replace('=', '_').replace('&', '+')}",
        {"attempts": 50, "accepted": statuses[200] + ws_accepted, "held": held},
    )


async def test_closed_sessions_leave_the_session_table_at_once() -> None:
    async with running_server(handshake_rate_per_address=0) as srv:
        eio = srv.app[keys.SIO].eio
        async with aiohttp.ClientSession() as http:
            raws = [await open_raw(srv.url, "polling", http) for _ in range(20)]
            assert len(eio.sockets) == 20
            for raw in raws:
                await raw.close()  # an Engine.IO CLOSE packet
            await asyncio.sleep(0.3)
            # stock: they stay until python-engineio's service task reaches each one
            assert len(eio.sockets) == 0


async def test_readiness_and_a_metric_show_when_every_handshake_would_be_refused() -> None:
    async with running_server(
        max_connections=1, handshake_rate_per_address=0, connect_timeout_seconds=60
    ) as srv:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{srv.url}/readyz") as resp:
                assert resp.status == 200
            statuses = Counter([await handshake(http, srv.url) for _ in range(1 + SESSION_SLACK)])
            assert statuses == {200: 1 + SESSION_SLACK}
            assert await handshake(http, srv.url) == 503
            async with http.get(f"{srv.url}/readyz") as resp:
                assert resp.status == 503
                assert "at_session_capacity" in (await resp.json())["reasons"]
            async with http.get(f"{srv.url}/metrics") as resp:
                text = await resp.text()
        assert "socketio_at_capacity 1.0" in text
        assert f"socketio_engineio_sessions {1 + SESSION_SLACK + 0.0}" in text
        assert sample(srv.app, "socketio_handshakes_refused_total", reason="overloaded") == 1


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_a_socket_that_leaves_the_namespace_but_keeps_its_transport_is_closed(
    transport: str,
) -> None:
    """``40`` then ``41``: the namespace forgets the socket, so it must be bounded like a
    session that never connected (CONNECT_TIMEOUT_SECONDS), or one user holds sessions
    past MAX_SOCKETS_PER_USER and MAX_CONNECTIONS."""
    async with running_server(
        handshake_rate_per_address=0,
        connect_timeout_seconds=1,
        max_sockets_per_user=3,
    ) as srv:
        eio = srv.app[keys.SIO].eio
        async with aiohttp.ClientSession() as http:
            zombies = []
            for _ in range(3):
                raw = await open_raw(srv.url, transport, http)
                await raw.connect({"token": token("zed")})
                zombies.append(raw)
            await asyncio.sleep(1.5)  # well connected: past the connect timeout
            for raw in zombies:
                await raw.send("41")
            await asyncio.sleep(0.2)
            assert len(srv.app[keys.NAMESPACE].sessions) == 0
            assert len(eio.sockets) == 3
            started = time.monotonic()
            for raw in zombies:
                await raw.drain(8)  # returns early once the server closed it
            closed_after = time.monotonic() - started
            assert all(raw.closed for raw in zombies)
            assert len(eio.sockets) == 0
            # a zombie that comes back with `40` is counted again (per user, per instance)
            again = await open_raw(srv.url, transport, http)
            await again.connect({"token": token("zed")})
            await again.send("41")
            await again.connect({"token": token("zed")})
            assert len(srv.app[keys.NAMESPACE].sessions) == 1
            await again.close()
        evicted = sample(srv.app, "socketio_clients_evicted_total", reason="connect_timeout")
    assert evicted >= 3
    print(f"\nzombie sessions ({transport}): closed {closed_after:.1f}s after `41`")
    write_report(f"zombie-{transport}", {"zombies": 3, "closed_after_s": round(closed_after, 1)})


# -- slowloris -------------------------------------------------------------------------------------


async def _trickle(host: str, port: int, seconds: float, every: float) -> float | None:
    """Send a request head one header line at a time; the seconds until the server closed
    the connection, None if it was still open after ``seconds``."""
    reader, writer = await asyncio.open_connection(host, port)
    started = time.monotonic()
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        n = 0
        while time.monotonic() - started < seconds:
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1024), every) == b"":
                    return time.monotonic() - started
            n += 1
            try:
                writer.write(f"X-Slow-{n}: {n}\r\n".encode())
                await writer.drain()
            except ConnectionError:
                return time.monotonic() - started
        return None
    finally:
        writer.close()


async def test_slowloris_connections_are_closed_after_the_header_timeout() -> None:
    timeout = 1.0
    async with running_server(http_header_timeout_seconds=timeout) as srv:
        host, port = srv.url.removeprefix("http://").split(":")
        trickled = await asyncio.gather(
            *(_trickle(host, int(port), seconds=6, every=0.3) for _ in range(50))
        )
        # a connection that sends nothing at all
        reader, writer = await asyncio.open_connection(host, int(port))
        silent = await asyncio.wait_for(reader.read(), 6)
        writer.close()
        # an idle keep-alive connection is not a slow request: it stays usable
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{srv.url}/healthz") as resp:
                assert resp.status == 200
            await asyncio.sleep(timeout * 2.5)
            async with http.get(f"{srv.url}/healthz") as resp:
                assert resp.status == 200
            async with http.get(f"{srv.url}/metrics") as resp:
                text = await resp.text()
    assert all(t is not None for t in trickled), trickled
    assert silent == b""
    assert "socketio_http_header_timeouts_total 51.0" in text
    closed = sorted(t for t in trickled if t is not None)
    report = {
        "connections": 50,
        "header_timeout_s": timeout,
        "closed_after_s_median": round(statistics.median(closed), 2),
        "closed_after_s_max": round(closed[-1], 2),
    }
    print("\nslowloris:", report)
    write_report("slowloris", report)


async def test_sockets_that_left_the_namespace_keep_their_users_slot_until_they_close() -> None:
    """One user held 60 sessions under MAX_SOCKETS_PER_USER=20 by leaving `/` with `41`
    and connecting again; with MAX_CONNECTIONS=5 one user's zombies filled the instance."""
    async with running_server(
        handshake_rate_per_address=0,
        connect_timeout_seconds=2,
        max_sockets_per_user=2,
        max_connections=3,
        rate_limit_events=10**6,
    ) as srv:
        namespace = srv.app[keys.NAMESPACE]
        async with aiohttp.ClientSession() as http:
            zombies = []
            for _ in range(2):
                raw = await open_raw(srv.url, "websocket", http)
                await raw.connect({"token": token("zed")})
                await raw.send("41")
                zombies.append(raw)
            await asyncio.sleep(0.2)
            assert len(namespace.sessions) == 0
            # the user's two slots are still held: a third socket is refused
            third = await open_raw(srv.url, "websocket", http)
            with pytest.raises(Closed, match="too many connections for this user"):
                await third.connect({"token": token("zed")})
            # and they count toward MAX_CONNECTIONS too
            other = await open_raw(srv.url, "websocket", http)
            await other.connect({"token": token("other")})
            last = await open_raw(srv.url, "websocket", http)
            with pytest.raises(Closed, match="server at capacity"):
                await last.connect({"token": token("last")})
            # a zombie that connects again takes its own slot back
            await zombies[0].connect({"token": token("zed")})
            assert len(namespace.sessions) == 2
            await zombies[0].close()
            # once the other zombie's session is closed (connect timeout), its slot is free
            await zombies[1].drain(6)
            assert zombies[1].closed
            await asyncio.sleep(0.2)
            fresh = await open_raw(srv.url, "websocket", http)
            await fresh.connect({"token": token("zed")})
            assert len(namespace.lingering) == 0
            for raw in (third, other, last, fresh):
                await raw.close()


async def test_readiness_counts_the_slots_held_by_sockets_that_left() -> None:
    async with running_server(
        handshake_rate_per_address=0, connect_timeout_seconds=30, max_connections=1
    ) as srv:
        async with aiohttp.ClientSession() as http:
            raw = await open_raw(srv.url, "websocket", http)
            await raw.connect({"token": token("zed")})
            await raw.send("41")
            await asyncio.sleep(0.2)
            assert len(srv.app[keys.NAMESPACE].sessions) == 0
            async with http.get(f"{srv.url}/readyz") as resp:
                assert resp.status == 503
                assert (await resp.json())["reasons"] == ["at_max_connections"]
            assert sample(srv.app, "socketio_at_capacity") == 1
            await raw.close()
            await asyncio.sleep(0.2)
            async with http.get(f"{srv.url}/readyz") as resp:
                assert resp.status == 200
            assert sample(srv.app, "socketio_at_capacity") == 0
