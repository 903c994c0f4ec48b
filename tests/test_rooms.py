"""Room access: reading needs membership, ``ROOM_ACCESS=claims``, the ``ROOM_AUTH_URL`` hook
(a real aiohttp server started here) and what members, and only members, get to see."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from service import keys
from service.auth import mint_token
from service.client import ChatClient, Forbidden
from service.rooms import claim_allows

from .helpers import SECRET, Client, connect, running_server
from .test_chatcli import run_chat
from .test_client import FAST


def rooms_token(user: str, rooms: Any) -> str:
    return mint_token(SECRET, user, 3600, extra={"rooms": rooms})


async def connect_with(url: str, tok: str) -> Client:
    return await connect(url, None, auth={"token": tok})


def code(ack: dict[str, Any]) -> str | None:
    return None if ack.get("ok") else ack["error"]["code"]


# -- reading needs membership --------------------------------------------------------------


async def test_history_and_presence_need_membership(server, clients):
    alice = await connect(server.url, "alice")
    eve = await connect(server.url, "eve")
    clients += [alice, eve]
    await alice.call("join:room", "secret")
    await alice.call("message:send", {"roomId": "secret", "message": "the plan"})

    assert code(await eve.call("history:get", {"roomId": "secret"})) == "not_in_room"
    assert code(await eve.call("history:get", "secret")) == "not_in_room"
    assert code(await eve.call("presence:get", "secret")) == "not_in_room"
    assert code(await eve.call("presence:get", {"roomId": "secret"})) == "not_in_room"

    # a member reads as before; a former member no longer can
    assert [m["message"] for m in (await alice.call("history:get", "secret"))["messages"]] == [
        "the plan"
    ]
    assert (await alice.call("presence:get", "secret"))["users"] == ["alice"]
    await alice.call("leave:room", "secret")
    assert code(await alice.call("history:get", "secret")) == "not_in_room"
    assert code(await alice.call("presence:get", "secret")) == "not_in_room"


async def test_membership_is_per_socket_not_per_user(server, clients):
    """Another socket of the same user that never joined does not read the room either."""
    first = await connect(server.url, "alice")
    second = await connect(server.url, "alice")
    clients += [first, second]
    await first.call("join:room", "r")
    assert code(await second.call("history:get", "r")) == "not_in_room"


# -- ROOM_ACCESS=claims --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claim", "room", "allowed"),
    [
        (["team-a"], "team-a", True),
        (["team-a"], "team-ab", False),
        (["team-*"], "team-ab", True),
        (["team-*"], "team", False),
        (["*"], "anything", True),
        ([], "team-a", False),
        ("team-a", "team-a", False),  # not a list: nothing
        ([42, None, "", "x"], "x", True),
        (None, "team-a", False),
    ],
)
def test_rooms_claim_matching(claim, room, allowed):
    assert claim_allows(claim, room) is allowed


@pytest.fixture
async def claims_server() -> AsyncIterator[Any]:
    async with running_server(room_access="claims") as running:
        yield running


async def test_claims_decide_joins(claims_server, clients):
    url = claims_server.url
    alice = await connect_with(url, rooms_token("alice", ["team-a", "pub.*"]))
    nobody = await connect(url, "nobody")  # no rooms claim at all
    clients += [alice, nobody]

    assert (await alice.call("join:room", "team-a"))["ok"]
    assert (await alice.call("join:room", {"roomId": "pub.news"}))["ok"]
    refused = await alice.call("join:room", "team-b")
    assert refused == {
        "ok": False,
        "error": {"code": "forbidden", "message": "this token may not join this room"},
    }
    assert code(await nobody.call("join:room", "team-a")) == "forbidden"
    # a refused join leaves no trace: not a member, so nothing to read or post either
    assert code(await alice.call("history:get", "team-b")) == "not_in_room"
    assert code(await alice.call("message:send", {"roomId": "team-b", "message": "x"})) == (
        "not_in_room"
    )
    metrics = claims_server.app[keys.METRICS]
    forbidden = metrics.event_errors.labels(event="join:room", code="forbidden")
    assert forbidden._value.get() == 2


async def test_open_is_the_default_and_ignores_claims(server, clients):
    alice = await connect_with(server.url, rooms_token("alice", ["team-a"]))
    clients.append(alice)
    assert (await alice.call("join:room", "team-b"))["ok"]


async def test_a_refused_join_tells_members_nothing(claims_server, clients):
    """user:joined goes out only for a join that happened, and only to that room."""
    url = claims_server.url
    member = await connect_with(url, rooms_token("member", ["a", "b"]))
    outsider = await connect_with(url, rooms_token("outsider", ["b"]))
    clients += [member, outsider]
    await member.call("join:room", "a")
    assert code(await outsider.call("join:room", "a")) == "forbidden"
    await outsider.call("join:room", "b")  # joins b: members of a must not hear of it
    await member.call("typing:start", "a")  # a round trip: anything sent before is here
    assert member.events["user:joined"] == []
    assert outsider.events["joined:room"] == ["b"]
    assert code(await outsider.call("presence:get", "a")) == "not_in_room"


async def test_chat_client_raises_forbidden(claims_server):
    async with ChatClient(claims_server.url, rooms_token("alice", ["ok"]), backoff=FAST) as c:
        await c.join("ok")
        with pytest.raises(Forbidden) as refused:
            await c.join("nope")
        assert refused.value.code == "forbidden"


async def test_chat_cli_says_forbidden_and_exits_5(claims_server):
    exit_code, out, err = await run_chat(
        [
            "--url",
            claims_server.url,
            "--token",
            rooms_token("alice", ["ok"]),
            "--room",
            "nope",
            "--once",
            "x",
        ]
    )
    assert exit_code == 5 and out == ""
    assert "may not join room 'nope' (forbidden)" in err


# -- ROOM_AUTH_URL -------------------------------------------------------------------------


@dataclass
class Hook:
    """A real HTTP join hook: allows rooms named ``allow-*``, records every request."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    mode: str = "answer"  # answer | fail | slow | garbage

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        if self.mode == "fail":
            return web.json_response({"error": "boom"}, status=500)
        if self.mode == "slow":
            await asyncio.sleep(5)
        if self.mode == "garbage":
            return web.Response(text="yes")
        return web.json_response({"allow": body["roomId"].startswith("allow-")})

    def rooms(self) -> list[str]:
        return [r["roomId"] for r in self.requests]


@contextlib.asynccontextmanager
async def hook_server() -> AsyncIterator[Hook]:
    hook = Hook()
    app = web.Application()
    app.router.add_post("/can-join", hook.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    hook.url = f"http://{host}:{port}/can-join"
    try:
        yield hook
    finally:
        await runner.cleanup()


async def test_hook_decides_joins_and_gets_user_claims_and_room(clients):
    async with (
        hook_server() as hook,
        running_server(room_auth_url=hook.url, room_auth_cache_seconds=30) as server,
    ):
        alice = await connect_with(server.url, rooms_token("alice", ["whatever"]))
        clients.append(alice)
        assert (await alice.call("join:room", "allow-1"))["ok"]
        assert code(await alice.call("join:room", "deny-1")) == "forbidden"
        first = hook.requests[0]
        assert first["userId"] == "alice" and first["roomId"] == "allow-1"
        assert first["claims"]["sub"] == "alice" and first["claims"]["rooms"] == ["whatever"]

        # answers are cached: leaving and rejoining asks nothing new
        await alice.call("leave:room", "allow-1")
        assert (await alice.call("join:room", "allow-1"))["ok"]
        assert code(await alice.call("join:room", "deny-1")) == "forbidden"
        assert hook.rooms() == ["allow-1", "deny-1"]

        durations = server.app[keys.METRICS].room_auth_duration
        assert durations.labels(result="allow")._sum.get() > 0
        assert count(durations, "allow") == 1 and count(durations, "deny") == 1


def count(histogram: Any, result: str) -> float:
    samples = histogram.labels(result=result).collect()[0].samples
    return next(s.value for s in samples if s.name.endswith("_count"))


@pytest.mark.parametrize("mode", ["fail", "slow", "garbage"])
async def test_hook_fails_closed(mode, clients):
    async with (
        hook_server() as hook,
        running_server(room_auth_url=hook.url, room_auth_timeout_seconds=0.3) as server,
    ):
        hook.mode = mode
        alice = await connect(server.url, "alice")
        clients.append(alice)
        assert code(await alice.call("join:room", "allow-1")) == "forbidden"
        assert count(server.app[keys.METRICS].room_auth_duration, "error") == 1
        # errors are not cached: once the hook works again, so do joins
        hook.mode = "answer"
        assert (await alice.call("join:room", "allow-1"))["ok"]


async def test_hook_unreachable_fails_closed(clients):
    async with running_server(room_auth_url="http://127.0.0.1:9/nothing") as server:
        alice = await connect(server.url, "alice")
        clients.append(alice)
        assert code(await alice.call("join:room", "allow-1")) == "forbidden"


async def test_claims_and_hook_must_both_allow(clients):
    async with (
        hook_server() as hook,
        running_server(room_access="claims", room_auth_url=hook.url) as server,
    ):
        alice = await connect_with(server.url, rooms_token("alice", ["allow-a", "deny-b"]))
        clients.append(alice)
        assert (await alice.call("join:room", "allow-a"))["ok"]
        assert code(await alice.call("join:room", "deny-b")) == "forbidden"  # the hook says no
        assert code(await alice.call("join:room", "allow-c")) == "forbidden"  # the claim says no
        assert hook.rooms() == ["allow-a", "deny-b"]  # the claim is checked first
