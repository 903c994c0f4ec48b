"""A message stored through another pod can arrive after a later one stored locally (pub/sub
is slower than the local path, or held back). The pod delivers stored messages in id order
anyway: the later message names the entry before it, so the pod reads the held-back one from
the room's stream and delivers it first (service/cluster/sequencer.py). Then the pod dies:
the client rejoins from ``REJOIN_MARGIN_MS`` before its newest id on another pod and drops
repeats by id, so it ends with each message once.

The fault proxy produces the race on purpose: it mutes the pod's pub/sub, so the remote
message never arrives there live."""

from __future__ import annotations

import asyncio
import signal
import uuid

import pytest

from service.client import Backoff, ChatClient

from ..helpers import connect, token
from .topology import DEAF_CANDIDATE, Topology, id_key

pytestmark = pytest.mark.slow


async def test_a_message_in_flight_at_the_disconnect_is_recovered(topology: Topology) -> None:
    local = topology.instances[DEAF_CANDIDATE]  # its pub/sub goes through the fault proxy
    other = topology.instances[0]
    room = f"in-flight-{uuid.uuid4().hex[:8]}"
    alice = ChatClient([local.url, other.url], token("alice"), backoff=Backoff(0.1, 0.5))
    got: list[str] = []
    alice.on("message:received", lambda m: got.append(m["message"]))
    await alice.connect()
    bob = await connect(other.url, "bob")
    carol = await connect(local.url, "carol")
    try:
        await alice.join(room)
        await bob.call("join:room", room)
        await carol.call("join:room", room)
        topology.proxy.mute_subscribers()  # remote deliveries to `local` are held back
        first = await bob.call("message:send", {"roomId": room, "message": "remote, earlier"})
        second = await carol.call("message:send", {"roomId": room, "message": "local, later"})
        assert id_key(first["id"]) < id_key(second["id"])
        for _ in range(100):
            if len(got) >= 2:
                break
            await asyncio.sleep(0.05)
        assert got == ["remote, earlier", "local, later"]  # in id order, the gap filled
        assert local.proc is not None
        local.proc.send_signal(signal.SIGKILL)  # alice's pod dies; she moves to `other`
        await asyncio.to_thread(local.proc.wait, 10)
        for _ in range(100):
            if alice.reconnects and len(got) >= 2:
                break
            await asyncio.sleep(0.05)
        assert alice.reconnects == 1 and alice.url == other.url
        await asyncio.sleep(0.3)
        assert got == ["remote, earlier", "local, later"], got  # nothing twice after the move
    finally:
        await alice.close()
        await bob.close()
        await carol.close()
        topology.proxy.restore()
