"""A drain the official socket.io-client survives with no code of its own.

The unmodified client (tests/js/recovery.js: ``io(url, {auth: {token}})``, default options)
talks to the topology through HAProxy. Its instance gets SIGTERM: it hears
``server:shutdown``, its transport is closed (``transport close``, never
``io server disconnect``, after which socket.io-client would stay down), it reconnects by
itself through the load balancer to another instance, and connection state recovery gives it
``socket.recovered === true``, its room, and the messages sent while it was away, once each
and in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest

from ..helpers import connect, token
from ..jsclient import js_client
from .topology import Topology

pytestmark = pytest.mark.slow

TRANSPORT_ENDED = {"transport close", "transport error"}
"""socket.io-client's reasons after which it reconnects by itself."""


def connections(topology: Topology) -> dict[str, int]:
    """Socket.IO connections per instance that answers (a stopping one may not)."""
    counts = {}
    for instance in topology.instances:
        with contextlib.suppress(OSError, ValueError, KeyError):
            counts[instance.instance_id] = instance.health()["connections"]
    return counts


async def instance_of_new_connection(topology: Topology, before: dict[str, int]) -> str:
    """The instance whose connection count went up since ``before``."""
    deadline = time.monotonic() + 10
    while True:
        now = await asyncio.to_thread(connections, topology)
        grown = [i for i, n in now.items() if n > before.get(i, 0)]
        if len(grown) == 1:
            return grown[0]
        assert time.monotonic() < deadline, (before, now)
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_sigterm_official_client_reconnects_elsewhere_and_recovers(
    topology: Topology, node: str, transport: str
) -> None:
    room = f"drain-{transport}-{uuid.uuid4().hex[:6]}"
    before = await asyncio.to_thread(connections, topology)
    async with js_client(topology.url, transport, token("alice")) as js:
        victim_id = await instance_of_new_connection(topology, before)
        victim = topology.by_id(victim_id)
        bystander = next(i for i in topology.instances if i.instance_id != victim_id)
        sender = await connect(bystander.url, "bob")
        try:
            assert (await js.call("join", room))["ok"]
            await sender.call("join:room", room)
            await sender.call("message:send", {"roomId": room, "message": "before"})
            await js.wait(lambda line: line.get("text") == "before")

            mark = len(js.lines)
            stopping = asyncio.create_task(asyncio.to_thread(victim.terminate, 20))
            await js.event("shutdown", after=mark, timeout=10)
            gone = await js.event("disconnect", after=mark, timeout=10)
            for text in ("gap 1", "gap 2"):
                assert (await sender.call("message:send", {"roomId": room, "message": text}))["ok"]
            back = await js.event("connect", after=mark, timeout=20)

            # never "io server disconnect" (socket.io-client would stay down). A long-poll
            # may read "transport error" instead: the load balancer stops routing to a
            # draining instance (readiness 503), so its next poll reaches another one
            expected = {"transport close"} if transport == "websocket" else TRANSPORT_ENDED
            assert gone["reason"] in expected, js.lines[mark:]
            assert back["recovered"] is True
            # it landed on another instance: the victim exits, and the client neither drops
            # again nor misses what follows (counting connections per instance races with
            # other clients coming and going)
            assert await stopping == 0
            await sender.call("message:send", {"roomId": room, "message": "after"})
            await js.wait(lambda line: line.get("text") == "after")
            assert js.texts() == ["before", "gap 1", "gap 2", "after"]
            assert (await js.call("presence", room))["users"] == ["alice", "bob"]
            assert [line for line in js.lines[mark:] if line["ev"] == "disconnect"] == [gone]
            order = [line["ev"] for line in js.lines[mark:] if line["ev"] != "message"]
            assert order[:3] == ["shutdown", "disconnect", "connect"], order
        finally:
            await sender.close()
