"""Every row of the events table (docs/protocol.md#events) against a real server and
python-socketio clients."""

from __future__ import annotations

import asyncio
import time

import pytest

from .helpers import Client, connect, running_server

TRANSPORTS = [["websocket"], ["polling"]]


async def quiet(client: Client, event: str, seconds: float = 0.3) -> None:
    """Assert ``client`` receives no new ``event`` for a while."""
    before = list(client.events[event])
    await asyncio.sleep(seconds)
    assert client.events[event] == before, f"unexpected {event}: {client.events[event]}"


@pytest.mark.parametrize("transports", TRANSPORTS, ids=["websocket", "polling"])
async def test_join_send_receive_leave(server, clients, transports):
    alice = await connect(server.url, "alice", transports=transports)
    bob = await connect(server.url, "bob", transports=transports)
    clients += [alice, bob]

    ack = await alice.call("join:room", "lobby")
    assert ack == {"ok": True, "roomId": "lobby", "history": []}
    assert await alice.wait_for("joined:room") == "lobby"

    ack = await bob.call("join:room", {"roomId": "lobby"})
    assert ack["ok"] and ack["roomId"] == "lobby"
    joined = await alice.wait_for("user:joined")
    assert joined["userId"] == "bob" and joined["roomId"] == "lobby"
    assert isinstance(joined["timestamp"], int)
    assert abs(joined["timestamp"] - time.time() * 1000) < 5000

    before = int(time.time() * 1000)
    ack = await bob.call("message:send", {"roomId": "lobby", "message": "hello ✓"})
    assert ack["ok"] is True and isinstance(ack["id"], str)
    for client in (alice, bob):
        got = await client.wait_for("message:received")
        assert got == {
            "id": ack["id"],
            "roomId": "lobby",
            "userId": "bob",
            "message": "hello ✓",
            "timestamp": got["timestamp"],
        }
        assert before <= got["timestamp"] <= int(time.time() * 1000)

    assert await bob.call("leave:room", "lobby") == {"ok": True, "roomId": "lobby"}
    left = await alice.wait_for("user:left")
    assert left["userId"] == "bob" and left["roomId"] == "lobby"
    refused = await bob.call("message:send", {"roomId": "lobby", "message": "still here?"})
    assert refused["ok"] is False and refused["error"]["code"] == "not_in_room"
    await quiet(alice, "message:received", 0.2)


async def test_send_requires_membership_and_leaks_nothing(server, clients):
    alice = await connect(server.url, "alice")
    mallory = await connect(server.url, "mallory")
    clients += [alice, mallory]
    await alice.call("join:room", "secret")
    ack = await mallory.call("message:send", {"roomId": "secret", "message": "hi"})
    assert ack["error"]["code"] == "not_in_room"
    assert (await mallory.call("typing:start", "secret"))["error"]["code"] == "not_in_room"
    assert (await mallory.call("leave:room", "secret"))["error"]["code"] == "not_in_room"
    await quiet(alice, "message:received")
    await quiet(alice, "typing:user:start", 0)


async def test_private_messages_reach_every_socket_of_the_target(server, clients):
    alice = await connect(server.url, "alice")
    bob_phone = await connect(server.url, "bob")
    bob_laptop = await connect(server.url, "bob", transports=["polling"])
    carol = await connect(server.url, "carol")
    clients += [alice, bob_phone, bob_laptop, carol]

    ack = await alice.call("message:private", {"targetUserId": "bob", "message": "psst"})
    assert ack["ok"] is True and ack["id"]
    for device in (bob_phone, bob_laptop):
        got = await device.wait_for("message:private:received")
        assert got["id"] == ack["id"]
        assert got["fromUserId"] == "alice" and got["message"] == "psst"
        assert isinstance(got["timestamp"], int)
    await quiet(carol, "message:private:received")
    await quiet(alice, "message:private:received", 0)

    bad = await alice.call("message:private", {"targetUserId": 42, "message": "x"})
    assert bad["error"]["code"] == "invalid_payload"


async def test_typing_goes_to_the_room_except_the_sender(server, clients):
    alice = await connect(server.url, "alice")
    bob = await connect(server.url, "bob")
    clients += [alice, bob]
    await alice.call("join:room", "r1")
    await bob.call("join:room", "r1")
    assert await alice.call("typing:start", "r1") == {"ok": True}
    assert await bob.wait_for("typing:user:start") == {"userId": "alice", "roomId": "r1"}
    assert await alice.call("typing:stop", "r1") == {"ok": True}
    assert await bob.wait_for("typing:user:stop") == {"userId": "alice", "roomId": "r1"}
    await quiet(alice, "typing:user:start", 0.2)


async def test_history_oldest_first_with_limit_and_before(clients):
    async with running_server(history_size=5) as srv:
        alice = await connect(srv.url, "alice")
        clients.append(alice)
        await alice.call("join:room", "h")
        ids = []
        for i in range(7):
            ids.append(
                (await alice.call("message:send", {"roomId": "h", "message": f"m{i}"}))["id"]
            )
        assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
        ack = await alice.call("history:get", {"roomId": "h"})
        assert [m["message"] for m in ack["messages"]] == ["m2", "m3", "m4", "m5", "m6"]
        ack = await alice.call("history:get", {"roomId": "h", "limit": 2})
        assert [m["message"] for m in ack["messages"]] == ["m5", "m6"]
        ack = await alice.call("history:get", {"roomId": "h", "before": ids[5], "limit": 2})
        assert [m["message"] for m in ack["messages"]] == ["m3", "m4"]
        ack = await alice.call("history:get", {"roomId": "h", "limit": 1000})
        assert len(ack["messages"]) == 5  # never more than HISTORY_SIZE
        joined = await alice.call("join:room", "h")
        assert [m["message"] for m in joined["history"]] == ["m2", "m3", "m4", "m5", "m6"]
        for bad in (
            {"roomId": "h", "limit": 0},
            {"roomId": "h", "limit": "5"},
            {"roomId": "h", "before": "yesterday"},
            {"limit": 3},
        ):
            assert (await alice.call("history:get", bad))["error"]["code"] == "invalid_payload"


async def test_presence_counts_distinct_users(server, clients):
    alice1 = await connect(server.url, "alice")
    alice2 = await connect(server.url, "alice")
    bob = await connect(server.url, "bob")
    clients += [alice1, alice2, bob]
    for client in (alice1, alice2, bob):
        await client.call("join:room", "p")
    assert await bob.call("presence:get", "p") == {
        "ok": True,
        "roomId": "p",
        "users": ["alice", "bob"],
    }
    await alice1.close()
    assert (await bob.call("presence:get", "p"))["users"] == ["alice", "bob"]
    await alice2.call("leave:room", "p")
    assert (await bob.call("presence:get", {"roomId": "p"}))["users"] == ["bob"]
    # reading a room needs membership, like posting
    assert (await bob.call("presence:get", "empty"))["error"]["code"] == "not_in_room"


async def test_join_since_recovers_missed_messages(clients):
    async with running_server(history_size=3) as srv:
        alice = await connect(srv.url, "alice")
        bob = await connect(srv.url, "bob")
        clients += [alice, bob]
        await alice.call("join:room", "rec")
        await bob.call("join:room", "rec")
        first = (await alice.call("message:send", {"roomId": "rec", "message": "a"}))["id"]
        await bob.wait_for("message:received")
        await bob.close()
        second = (await alice.call("message:send", {"roomId": "rec", "message": "b"}))["id"]
        third = (await alice.call("message:send", {"roomId": "rec", "message": "c"}))["id"]

        bob = await connect(srv.url, "bob")
        clients.append(bob)
        ack = await bob.call("join:room", {"roomId": "rec", "since": first})
        assert [m["id"] for m in ack["missed"]] == [second, third]
        assert ack["recovered"] is True

        for i in range(3):
            await alice.call("message:send", {"roomId": "rec", "message": f"flood{i}"})
        late = await alice.call("join:room", {"roomId": "rec", "since": first})
        assert late["recovered"] is False  # older than what HISTORY_SIZE keeps
        assert [m["message"] for m in late["missed"]] == ["flood0", "flood1", "flood2"]
        bad = await alice.call("join:room", {"roomId": "rec", "since": 17})
        assert bad["error"]["code"] == "invalid_payload"


@pytest.mark.parametrize(
    "room",
    [123, "", "a b", "x" * 129, None, ["room"], {"id": "r"}, "émoji", "r/1", True, 1.5],
    ids=repr,
)
async def test_invalid_room_ids_are_refused(server, clients, room):
    alice = await connect(server.url, "alice")
    clients.append(alice)
    for event in ("join:room", "leave:room", "typing:start", "presence:get"):
        ack = await alice.call(event, room)
        assert ack["ok"] is False and ack["error"]["code"] == "invalid_payload", (event, ack)
    ack = await alice.call("message:send", {"roomId": room, "message": "x"})
    assert ack["error"]["code"] == "invalid_payload"


async def test_room_id_limits_are_inclusive(server, clients):
    alice = await connect(server.url, "alice")
    clients.append(alice)
    for room in ("a", "x" * 128, "A-Z_a.z:0-9"):
        assert (await alice.call("join:room", room))["ok"] is True


@pytest.mark.parametrize(
    "payload",
    [
        "hello",
        5,
        None,
        [],
        ["lobby", "hi"],
        {"roomId": "lobby"},
        {"message": "x"},
        {"roomId": "lobby", "message": 5},
        {"roomId": "lobby", "message": ""},
        {"roomId": "lobby", "message": ["a"]},
        {"roomId": "lobby", "message": {"text": "a"}},
    ],
    ids=repr,
)
async def test_malformed_messages_are_refused_and_not_delivered(server, clients, payload):
    alice = await connect(server.url, "alice")
    bob = await connect(server.url, "bob")
    clients += [alice, bob]
    await alice.call("join:room", "lobby")
    await bob.call("join:room", "lobby")
    ack = await alice.call("message:send", payload)
    assert ack["ok"] is False and ack["error"]["code"] == "invalid_payload"
    assert ack["error"]["message"]
    await quiet(bob, "message:received", 0.1)


async def test_oversized_messages_are_refused(clients):
    async with running_server(max_message_bytes=100) as srv:
        alice = await connect(srv.url, "alice")
        bob = await connect(srv.url, "bob")
        clients += [alice, bob]
        await alice.call("join:room", "big")
        await bob.call("join:room", "big")
        assert (await alice.call("message:send", {"roomId": "big", "message": "x" * 100}))["ok"]
        await bob.wait_for("message:received")
        for text in ("x" * 101, "€" * 34):  # 102 bytes of UTF-8 in 34 characters
            ack = await alice.call("message:send", {"roomId": "big", "message": text})
            assert ack["error"]["code"] == "too_large"
            assert ack["error"]["maxBytes"] == 100
        await asyncio.sleep(0.2)
        assert len(bob.events["message:received"]) == 1
        # far past max_http_buffer_size: the transport drops the socket, the server lives on
        await alice.sio.emit("message:send", {"roomId": "big", "message": "y" * 1_000_000})
        await asyncio.sleep(0.5)
        assert (await bob.call("presence:get", "big"))["ok"]
        await asyncio.sleep(0.2)
        assert len(bob.events["message:received"]) == 1


async def test_unknown_events_get_an_error_ack(server, clients):
    alice = await connect(server.url, "alice")
    clients.append(alice)
    ack = await alice.call("admin:nuke", {"all": True})
    assert ack == {"ok": False, "error": {"code": "unknown_event", "message": "unknown event"}}
    await alice.sio.emit("no-ack:event", "x")  # without an ack it is dropped quietly
    assert (await alice.call("join:room", "still-works"))["ok"] is True


async def test_events_without_ack_are_handled(server, clients):
    alice = await connect(server.url, "alice")
    bob = await connect(server.url, "bob")
    clients += [alice, bob]
    await alice.call("join:room", "na")
    await bob.call("join:room", "na")
    await alice.sio.emit("message:send", {"roomId": "na", "message": "fire and forget"})
    got = await bob.wait_for("message:received")
    assert got["message"] == "fire and forget"
    await alice.sio.emit("message:send", "garbage")
    await quiet(bob, "typing:user:start", 0.1)
    assert len(bob.events["message:received"]) == 1


async def test_rate_limit_is_a_per_user_token_bucket(clients):
    async with running_server(rate_limit_events=5, rate_limit_window_seconds=60) as srv:
        alice = await connect(srv.url, "alice")  # the handshake costs one token
        bob = await connect(srv.url, "bob")
        clients += [alice, bob]
        acks = [await alice.call("join:room", "r") for _ in range(4)]
        assert all(a["ok"] for a in acks)
        limited = await alice.call("join:room", "r")
        assert limited["ok"] is False and limited["error"]["code"] == "rate_limited"
        assert 0 < limited["error"]["retryAfterMs"] <= 12_000
        # invalid events cost a token too, and the bucket follows the user, not the socket
        assert (await alice.call("bogus"))["error"]["code"] == "rate_limited"
        refused = await _refusal(srv.url, "alice")
        assert refused["code"] == "rate_limited"
        assert (await bob.call("join:room", "r"))["ok"] is True


async def test_rate_limit_refills_evenly(clients):
    async with running_server(rate_limit_events=2, rate_limit_window_seconds=1) as srv:
        alice = await connect(srv.url, "alice")
        clients.append(alice)
        await alice.call("join:room", "r")
        assert (await alice.call("join:room", "r"))["error"]["code"] == "rate_limited"
        await asyncio.sleep(0.6)  # 2 tokens per second: one is back
        assert (await alice.call("join:room", "r"))["ok"] is True


async def _refusal(url: str, user: str) -> dict:
    from .helpers import connect_error, token

    return await connect_error(url, auth={"token": token(user)})


async def test_max_rooms_per_socket(clients):
    async with running_server(max_rooms_per_socket=2) as srv:
        alice = await connect(srv.url, "alice")
        clients.append(alice)
        assert (await alice.call("join:room", "a"))["ok"]
        assert (await alice.call("join:room", "b"))["ok"]
        assert (await alice.call("join:room", "a"))["ok"]  # rejoining is free
        assert (await alice.call("join:room", "c"))["error"]["code"] == "too_many_rooms"


async def test_sockets_per_user_are_bounded(clients):
    """With MAX_ROOMS_PER_SOCKET this bounds the rooms one user can hold on an instance."""
    from .helpers import connect_error, token

    async with running_server(max_sockets_per_user=2) as srv:
        clients += [await connect(srv.url, "alice"), await connect(srv.url, "alice")]
        refused = await connect_error(srv.url, auth={"token": token("alice")})
        assert refused["code"] == "overloaded"
        clients.append(await connect(srv.url, "bob"))  # other users are not affected
        await clients[0].close()
        await asyncio.sleep(0.2)
        clients.append(await connect(srv.url, "alice"))  # a slot frees on disconnect
