"""docs/protocol.md#drain: SIGTERM drains without a thundering herd and exits 0 inside the grace period."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import select
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from service import keys
from service.lifecycle import drain, drain_schedule

from .helpers import Client, connect, connect_error, running_server, spawn_service, token


@dataclass
class Timeline:
    """When one client heard ``server:shutdown`` and when it was disconnected."""

    client: Client
    shutdown_at: float | None = None
    disconnected_at: float | None = None
    order: list[str] = field(default_factory=list)


async def watched(url: str, user: str) -> Timeline:
    client = await connect(url, user)
    timeline = Timeline(client)

    async def on_shutdown(data: Any) -> None:
        timeline.shutdown_at = time.monotonic()
        timeline.order.append("server:shutdown")
        await client._record("server:shutdown", data)

    def on_disconnect(*_: Any) -> None:
        timeline.disconnected_at = time.monotonic()
        timeline.order.append("disconnect")

    client.sio.on("server:shutdown", on_shutdown)
    client.sio.on("disconnect", on_disconnect)
    return timeline


async def status(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status


async def wait_until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_drain_schedule_spreads_every_client_over_the_window():
    assert drain_schedule(0, 10) == []
    assert drain_schedule(3, 0) == [(0.0, 0, 3)]
    five = drain_schedule(5, 10)
    assert [offset for offset, _, _ in five] == [0.0, 2.0, 4.0, 6.0, 8.0]
    thousand = drain_schedule(1000, 10)
    assert len(thousand) == 100 and all(stop - start == 10 for _, start, stop in thousand)
    for clients, seconds in ((1000, 10), (7, 3), (250, 2.5), (1, 1)):
        batches = drain_schedule(clients, seconds)
        assert batches[0][1] == 0 and batches[-1][2] == clients
        assert all(a[2] == b[1] for a, b in itertools.pairwise(batches))
        assert batches[-1][0] < seconds


async def test_sigterm_drains_a_real_process():
    """The whole sequence against ``python -m service``, as Kubernetes would stop it."""
    delay, window, clients = 0.5, 2.5, 8
    proc = spawn_service(
        {"SHUTDOWN_DELAY_SECONDS": str(delay), "SHUTDOWN_DRAIN_SECONDS": str(window)}
    )
    timelines: list[Timeline] = []
    try:
        timelines = [await watched(proc.url, f"user{i}") for i in range(clients)]
        assert await status(f"{proc.url}/readyz") == 200
        signalled = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        # readiness flips at once, well before the delay is over
        while await status(f"{proc.url}/readyz") != 503:
            assert time.monotonic() - signalled < delay, "readiness still 200 after the delay"
            await asyncio.sleep(0.02)
        assert await status(f"{proc.url}/healthz") == 200
        refused = await connect_error(proc.url, auth={"token": token("late")})
        assert refused["code"] == "draining"
        # nobody is told before the delay (endpoints propagate meanwhile)
        assert all(t.shutdown_at is None for t in timelines)

        await wait_until(lambda: all(t.disconnected_at for t in timelines), delay + window + 5)
        loop = asyncio.get_running_loop()
        code = await loop.run_in_executor(None, proc.proc.wait, delay + window + 5)
        exited = time.monotonic() - signalled
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()
        output = proc.output()
        for timeline in timelines:
            with contextlib.suppress(Exception):
                await timeline.client.sio.disconnect()

    assert code == 0, output
    assert exited < delay + window + 5, f"exit took {exited:.1f}s"
    for timeline in timelines:
        assert timeline.order == ["server:shutdown", "disconnect"], timeline.order
        assert timeline.client.events["server:shutdown"] == [
            {"reason": "draining", "reconnect": True}
        ]
        assert timeline.shutdown_at is not None and timeline.shutdown_at - signalled >= delay * 0.9
    times = sorted(t.disconnected_at for t in timelines if t.disconnected_at)
    assert times[-1] - times[0] >= window / 2, f"disconnects not spread: {times}"

    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    events = [r.get("event") for r in records]
    for expected in ("shutdown", "drain_start", "drain_done", "stopped"):
        assert expected in events, events
    assert not [r for r in records if r["level"] in ("error", "critical")], output
    assert "Traceback" not in output


async def test_abandoned_long_poll_does_not_hold_the_exit():
    """An Engine.IO session whose client vanished must not keep the pod past its grace."""
    proc = spawn_service({"SHUTDOWN_DELAY_SECONDS": "0", "SHUTDOWN_DRAIN_SECONDS": "0.5"})
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{proc.url}/socket.io/?EIO=4&transport=polling") as response,
        ):
            assert response.status == 200
        signalled = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        code = await loop.run_in_executor(None, proc.proc.wait, 0.5 + 5)
        assert code == 0
        assert time.monotonic() - signalled < 0.5 + 5
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()
        proc.output()


async def test_drain_loses_no_message_and_raises_no_handler_error():
    """Clients keep talking while they are being drained: every acked message is stored and
    delivered to the members still connected; no handler fails."""
    async with running_server(
        shutdown_delay_seconds=0.2, shutdown_drain_seconds=1.5, history_size=100_000
    ) as server:
        timelines = [await watched(server.url, f"user{i}") for i in range(6)]
        for timeline in timelines:
            assert (await timeline.client.call("join:room", "lobby"))["ok"]
        acked: list[tuple[float, str]] = []
        failures: list[Any] = []

        async def chatter(timeline: Timeline, index: int) -> None:
            n = 0
            while timeline.client.sio.connected and timeline.shutdown_at is None:
                n += 1
                try:
                    ack = await timeline.client.call(
                        "message:send", {"roomId": "lobby", "message": f"m{index}-{n}"}, timeout=2
                    )
                except Exception:  # disconnected mid-call: the message may or may not be in
                    return
                if ack.get("ok"):
                    acked.append((time.monotonic(), ack["id"]))
                else:
                    failures.append(ack)
                await asyncio.sleep(0.02)

        talkers = [asyncio.create_task(chatter(t, i)) for i, t in enumerate(timelines)]
        await asyncio.sleep(0.1)
        await drain(server.app)
        await asyncio.gather(*talkers)
        await wait_until(lambda: all(t.disconnected_at for t in timelines), 5)

        assert not failures, failures
        assert len(acked) > 10
        stored = {m["id"] for m in await server.app[keys.STORES].history.recent("lobby", 100_000)}
        missing = [message_id for _, message_id in acked if message_id not in stored]
        assert not missing, f"{len(missing)} acked messages not stored"
        # a member that was still connected when a message was acked received it
        for timeline in timelines:
            received = {m["id"] for m in timeline.client.events["message:received"]}
            assert timeline.disconnected_at is not None
            for at, message_id in acked:
                if at < timeline.disconnected_at - 0.05 and (
                    timeline.shutdown_at is None or at < timeline.shutdown_at - 0.05
                ):
                    assert message_id in received, (message_id, timeline.order)

        metrics = server.app[keys.METRICS]
        internal = metrics.event_errors.labels(event="message:send", code="internal")
        assert internal._value.get() == 0
        assert metrics.draining._value.get() == 1
        # every socket was disconnected by the server, with `server:shutdown` first
        assert all(t.order == ["server:shutdown", "disconnect"] for t in timelines)
        assert metrics.disconnections.labels(reason="server_disconnect")._value.get() == 6


@pytest.mark.slow
async def test_sigterm_with_a_hundred_clients_spreads_their_disconnects():
    """More clients than batches per second: each 0.5 s slot gets its share."""
    window, clients = 4.0, 100
    proc = spawn_service({"SHUTDOWN_DELAY_SECONDS": "0", "SHUTDOWN_DRAIN_SECONDS": str(window)})
    timelines: list[Timeline] = []
    try:
        timelines = [await watched(proc.url, f"user{i}") for i in range(clients)]
        signalled = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: all(t.disconnected_at for t in timelines), window + 5)
        loop = asyncio.get_running_loop()
        code = await loop.run_in_executor(None, proc.proc.wait, window + 5)
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()
        output = proc.output()
    assert code == 0, output
    offsets = [t.disconnected_at - signalled for t in timelines if t.disconnected_at]
    slots = [0] * int(window / 0.5 + 2)
    for offset in offsets:
        slots[min(len(slots) - 1, int(offset / 0.5))] += 1
    # no half-second slot takes more than a third of the clients (even is 1/8)
    assert max(slots) <= clients / 3, slots
    assert max(offsets) - min(offsets) >= window / 2, slots


def test_a_connect_burst_waits_in_the_listen_queue():
    """600 clients connect while the event loop is busy (here: stopped): the kernel completes
    and queues every handshake, none has its SYN dropped (with aiohttp's default backlog of
    128, ~470 would wait 1 s or more for a retry)."""
    proc = spawn_service()
    sockets: list[socket.socket] = []
    try:
        proc.proc.send_signal(signal.SIGSTOP)
        for _ in range(600):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", proc.port))
            sockets.append(sock)
        # a queued handshake completes at once; a dropped SYN is retried only after 1 s
        by_fd = {sock.fileno(): sock for sock in sockets}
        poller = select.poll()
        for fd in by_fd:
            poller.register(fd, select.POLLOUT)
        done: set[int] = set()
        deadline = time.monotonic() + 0.5
        while len(done) < len(by_fd) and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                poller.unregister(fd)
                done.add(fd)
        error = socket.SO_ERROR
        connected = [fd for fd in done if by_fd[fd].getsockopt(socket.SOL_SOCKET, error) == 0]
        assert len(connected) == 600
    finally:
        for sock in sockets:
            sock.close()
        proc.proc.send_signal(signal.SIGCONT)
        assert proc.stop() == 0
