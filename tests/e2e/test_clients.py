"""Clients through the sticky load balancer, spread over three instances sharing Redis.

The official JS socket.io-client (node) and python-socketio's client, on websocket,
long-polling and polling→websocket upgrade, run the whole protocol (docs/protocol.md) with alice,
bob and carol on three different instances. A client that drops the affinity cookie loses
its long-polling session: the negative control that shows the stickiness is what makes
long-polling work.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
import pytest
import socketio
from yarl import URL

from ..helpers import Client, connect, token
from ..jsclient import JS_DIR
from .topology import Topology

pytestmark = pytest.mark.slow

USERS = ("alice", "bob", "carol")
MODES = ("websocket", "polling", "upgrade")
SCRIPT = os.path.join(os.path.dirname(__file__), "js", "topology.js")


def transports(mode: str) -> list[str]:
    return ["polling", "websocket"] if mode == "upgrade" else [mode]


def check_spread(topology: Topology, cookies: dict[str, str | None], mode: str) -> None:
    """The three users sit on three different instances (the LB's round robin for cookie-less
    handshakes, then its cookie), as seen from each pod's own ``/health``."""
    connections = topology.connections()
    assert all(count >= 1 for count in connections.values()), connections
    if mode != "websocket":  # a websocket-only client never needs (or keeps) the cookie
        assert sorted(v for v in cookies.values() if v) == sorted(connections), cookies


def check_report(r: dict[str, Any], room: str, mode: str) -> None:
    """Every event of docs/protocol.md#events, each crossing instances (alice, bob, carol on three pods)."""
    assert r["join"] == {"ok": True, "roomId": room, "history": []}
    assert r["joinedEvent"] == room
    assert r["userJoined"]["userId"] == "bob" and r["userJoined"]["roomId"] == room
    assert isinstance(r["userJoined"]["timestamp"], int)
    sent = r["send"]
    assert sent["ok"] is True and isinstance(sent["id"], str)
    for received in (r["receivedByBob"], r["receivedByCarol"]):
        assert received["id"] == sent["id"] and received["message"] == "hello from alice"
        assert received["userId"] == "alice" and received["roomId"] == room
        assert isinstance(received["timestamp"], int)
    assert r["private"]["ok"] is True
    assert r["privateReceived"]["id"] == r["private"]["id"]
    assert r["privateReceived"]["fromUserId"] == "bob"
    assert r["privateReceived"]["message"] == "psst"
    assert r["typing"] == {"ok": True} and r["typingStop"] == {"ok": True}
    assert r["typingSeen"] == [{"userId": "carol", "roomId": room}] * 2
    assert r["typingStopSeen"] == [{"userId": "carol", "roomId": room}] * 2
    assert r["typingEchoedToSender"] is False
    assert [m["id"] for m in r["history"]["messages"]] == [sent["id"]]
    assert sorted(r["presence"]["users"]) == list(USERS)
    assert r["leave"]["ok"] is True
    assert r["userLeft"]["userId"] == "carol" and r["userLeft"]["roomId"] == room
    assert r["rejoin"]["ok"] is True and r["rejoin"]["recovered"] is True
    assert [m["id"] for m in r["rejoin"]["missed"]] == [r["whileAway"]["id"]]
    assert r["badRoom"]["error"]["code"] == "invalid_payload"
    assert r["unknown"]["error"]["code"] == "unknown_event"
    assert r["notInRoom"]["error"]["code"] == "not_in_room"
    expected = "polling" if mode == "polling" else "websocket"
    assert r["transports"] == dict.fromkeys(USERS, expected)


# -- the official JS client --------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_js_client_through_the_lb(topology: Topology, node: str, mode: str) -> None:
    room = f"js-{mode}-{uuid.uuid4().hex[:8]}"
    tokens = json.dumps({user: token(user) for user in USERS})
    proc = await asyncio.create_subprocess_exec(
        node,
        SCRIPT,
        topology.url,
        mode,
        room,
        tokens,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_PATH": str(JS_DIR / "node_modules")},
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30) or b"{}")
        assert first.get("stage") == "connected", first
        cookies = {user: (c["value"] if c else None) for user, c in first["cookies"].items()}
        if mode != "websocket":
            name = topology.lb.settings.cookie_name
            assert all(c and c["name"] == name for c in first["cookies"].values()), first
        await asyncio.to_thread(check_spread, topology, cookies, mode)
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert proc.returncode == 0 and result["stage"] == "report", (result, err.decode())
    report = result["report"]
    check_report(report, room, mode)
    if mode == "polling":
        # negative control: without its cookie the session's next request reaches another
        # instance, which does not know the sid ("Invalid session", HTTP 400)
        lost = report["cookieless"]
        assert lost["connected"] is False and lost["description"] == "400", lost


# -- python-socketio's client ------------------------------------------------------------------


async def wait_for(client: Client, event: str, predicate: Any = lambda _: True) -> Any:
    return await client.wait_for(event, predicate, timeout=10)


async def python_scenario(users: dict[str, Client], room: str) -> dict[str, Any]:
    """The same steps as js/topology.js, reported in the same shape."""
    alice, bob, carol = users["alice"], users["bob"], users["carol"]
    r: dict[str, Any] = {}
    r["join"] = await alice.call("join:room", room)
    r["joinedEvent"] = await wait_for(alice, "joined:room")
    await bob.call("join:room", {"roomId": room})
    r["userJoined"] = await wait_for(alice, "user:joined", lambda p: p["userId"] == "bob")
    await carol.call("join:room", room)
    await wait_for(bob, "user:joined", lambda p: p["userId"] == "carol")
    r["send"] = await alice.call("message:send", {"roomId": room, "message": "hello from alice"})
    r["receivedByBob"] = await wait_for(bob, "message:received")
    r["receivedByCarol"] = await wait_for(carol, "message:received")
    r["private"] = await bob.call("message:private", {"targetUserId": "carol", "message": "psst"})
    r["privateReceived"] = await wait_for(carol, "message:private:received")
    r["typing"] = await carol.call("typing:start", room)
    r["typingSeen"] = [await wait_for(c, "typing:user:start") for c in (alice, bob)]
    r["typingStop"] = await carol.call("typing:stop", room)
    r["typingStopSeen"] = [await wait_for(c, "typing:user:stop") for c in (alice, bob)]
    r["history"] = await carol.call("history:get", {"roomId": room})
    r["presence"] = await bob.call("presence:get", room)
    r["leave"] = await carol.call("leave:room", room)
    r["userLeft"] = await wait_for(alice, "user:left")
    r["whileAway"] = await alice.call(
        "message:send", {"roomId": room, "message": "while carol was away"}
    )
    r["rejoin"] = await carol.call("join:room", {"roomId": room, "since": r["send"]["id"]})
    r["badRoom"] = await bob.call("join:room", 42)
    r["unknown"] = await bob.call("no:such:event", {})
    r["notInRoom"] = await bob.call("message:send", {"roomId": "elsewhere", "message": "x"})
    r["typingEchoedToSender"] = any(e.startswith("typing:user:") for e in carol.events)
    r["transports"] = {name: c.sio.transport() for name, c in users.items()}
    return r


@asynccontextmanager
async def cookie_session() -> AsyncIterator[aiohttp.ClientSession]:
    """A browser-like session: keeps the LB's cookie even though the host is an IP."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


def affinity(session: aiohttp.ClientSession, topology: Topology) -> str | None:
    url = URL(topology.url + topology.lb.settings.route_path + "/")
    cookie = session.cookie_jar.filter_cookies(url).get(topology.lb.settings.cookie_name)
    return cookie.value if cookie else None


@pytest.mark.parametrize("mode", MODES)
async def test_python_client_through_the_lb(topology: Topology, mode: str) -> None:
    room = f"py-{mode}-{uuid.uuid4().hex[:8]}"
    async with AsyncExitStack() as stack:
        users: dict[str, Client] = {}
        cookies: dict[str, str | None] = {}
        for user in USERS:  # one cookie jar each, like three browsers
            session = await stack.enter_async_context(cookie_session())
            users[user] = await connect(
                topology.url, user, transports=transports(mode), http_session=session
            )
            stack.push_async_callback(users[user].close)
            cookies[user] = affinity(session, topology)
        await asyncio.to_thread(check_spread, topology, cookies, mode)
        report = await python_scenario(users, room)
    check_report(report, room, mode)


# -- the negative control ----------------------------------------------------------------------


async def test_long_polling_without_the_cookie_loses_its_session(topology: Topology) -> None:
    """Engine.IO by hand: the handshake lands on one instance; without the cookie the next
    requests are balanced elsewhere and answered 400 ``Invalid session``. With the cookie
    every request reaches the instance that owns the sid."""
    route = f"{topology.url}{topology.lb.settings.route_path}/?EIO=4&transport=polling"

    async def session_requests(http: aiohttp.ClientSession) -> list[tuple[int, str]]:
        async with http.get(route) as resp:
            assert resp.status == 200
            sid = json.loads((await resp.text())[1:])["sid"]
        answers = []
        for _ in range(len(topology.instances)):  # pong packets: answered at once
            async with http.post(f"{route}&sid={sid}", data=b"3") as resp:
                answers.append((resp.status, await resp.text()))
        async with http.post(f"{route}&sid={sid}", data=b"1"):  # close, wherever it lands
            pass
        return answers

    async with aiohttp.ClientSession() as strict:  # the default jar ignores cookies of IPs
        lost = await session_requests(strict)
    assert any(status == 400 and "Invalid session" in text for status, text in lost), lost
    assert len(strict.cookie_jar) == 0

    async with cookie_session() as sticky:
        kept = await session_requests(sticky)
    assert kept == [(200, "OK")] * len(topology.instances)

    # python-socketio's client without the cookie cannot even finish connecting
    async with aiohttp.ClientSession() as strict:
        with pytest.raises(socketio.exceptions.ConnectionError):
            client = await connect(topology.url, "eve", transports=["polling"], http_session=strict)
            await client.close()


async def test_the_lb_routes_only_socketio(topology: Topology) -> None:
    """Like the Ingress: /socket.io is public, /metrics and the probes are not."""
    async with aiohttp.ClientSession() as http:
        for path in ("/metrics", "/healthz", "/readyz", "/health", "/"):
            async with http.get(topology.url + path) as resp:
                assert resp.status == 404, path
