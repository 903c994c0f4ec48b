"""docs/protocol.md#metrics: every metric is exported with its name, type and bounded labels, and moves when
its event happens. Each test drives real clients against a real server and parses the scrape
with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
import socketio
from prometheus_client.parser import text_string_to_metric_families

from service import __version__
from service.lifecycle import begin_drain
from service.protocol import DISCONNECT_REASONS

from .helpers import connect, connect_error, running_server, token

# docs/protocol.md#metrics: family name (as the parser reports it: counters lose `_total`) -> type, labels
CONTRACT: dict[str, tuple[str, frozenset[str]]] = {
    "socketio_connected_clients": ("gauge", frozenset()),
    "socketio_connections": ("counter", frozenset({"transport"})),
    "socketio_connect_errors": ("counter", frozenset({"code"})),
    "socketio_disconnections": ("counter", frozenset({"reason"})),
    "socketio_events_received": ("counter", frozenset({"event"})),
    "socketio_messages_sent": ("counter", frozenset({"event"})),
    "socketio_event_errors": ("counter", frozenset({"event", "code"})),
    "socketio_event_duration_seconds": ("histogram", frozenset({"event"})),
    "socketio_delivery_latency_seconds": ("histogram", frozenset({"scope"})),
    "socketio_rooms": ("gauge", frozenset()),
    "socketio_redis_up": ("gauge", frozenset()),
    "socketio_redis_command_duration_seconds": ("histogram", frozenset({"op"})),
    "socketio_event_loop_lag_seconds": ("histogram", frozenset()),
    "socketio_draining": ("gauge", frozenset()),
    "socketio_messages_stored": ("counter", frozenset()),
    "socketio_build_info": ("gauge", frozenset({"version"})),
}
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum", "_created")
FORBIDDEN_LABELS = {"namespace", "pod", "job", "instance", "sid", "room", "user", "room_id"}


@dataclass
class Scrape:
    """One parsed ``/metrics`` answer."""

    types: dict[str, str]
    labels: dict[str, set[str]]
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def value(self, name: str, **labels: str) -> float:
        """A sample's value; 0 when the series does not exist (yet)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def label_values(self) -> Iterable[str]:
        for _, labels in self.samples:
            for _, value in labels:
                yield value


async def scrape(url: str) -> Scrape:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return parse(text)


def parse(text: str) -> Scrape:
    types: dict[str, str] = {}
    labels: dict[str, set[str]] = {}
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        names = labels.setdefault(family.name, set())
        for sample in family.samples:
            names.update(k for k in sample.labels if k != "le")
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Scrape(types, labels, samples)


async def eventually(check, timeout: float = 5.0) -> None:
    """Poll ``check`` (an async callable returning bool) until it holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.05)


async def test_every_contract_metric_is_exported_with_its_type_and_labels(server):
    got = await scrape(server.url)
    for name, (kind, labels) in CONTRACT.items():
        assert got.types.get(name) == kind, f"{name}: {got.types.get(name)} != {kind}"
        assert got.labels[name] <= labels, f"{name} has labels {got.labels[name]}"
    for name, names in got.labels.items():
        assert not names & FORBIDDEN_LABELS, f"{name} uses a reserved/unbounded label {names}"
    # the default process/platform/GC collectors come along
    assert got.value("process_cpu_seconds_total") > 0
    assert got.value("process_resident_memory_bytes") > 0
    assert any(name == "python_info" for name, _ in got.samples)
    assert any(name == "python_gc_objects_collected_total" for name, _ in got.samples)
    # known label values exist before their first event, so rate() sees the first increment
    assert ("socketio_connections_total", frozenset({("transport", "polling")})) in got.samples
    assert ("socketio_connect_errors_total", frozenset({("code", "draining")})) in got.samples
    assert got.value("socketio_build_info", version=__version__) == 1
    assert got.value("socketio_redis_up") == 0  # embedded mode: no Redis
    assert got.value("socketio_draining") == 0


async def test_connection_metrics_move(server, clients):
    before = await scrape(server.url)
    ws = await connect(server.url, "alice")
    polling = await connect(server.url, "bob", transports=["polling"])
    clients += [ws, polling]
    await connect_error(server.url, auth={"token": token("eve", secret="x" * 40)})
    after = await scrape(server.url)
    assert after.value("socketio_connected_clients") == 2
    for transport in ("websocket", "polling"):
        assert after.value("socketio_connections_total", transport=transport) == (
            before.value("socketio_connections_total", transport=transport) + 1
        )
    assert after.value("socketio_connect_errors_total", code="unauthorized") == 1

    await ws.sio.disconnect()

    async def counted() -> bool:
        now = await scrape(server.url)
        reasons = {
            dict(labels)["reason"]: value
            for (name, labels), value in now.samples.items()
            if name == "socketio_disconnections_total"
        }
        # python-socketio's client closes the websocket right behind its DISCONNECT packet,
        # so the server may see either; the reason is one of a closed set either way
        assert set(reasons) <= {*DISCONNECT_REASONS.values(), "other"}
        return sum(reasons.values()) == 1 and now.value("socketio_connected_clients") == 1

    await eventually(counted)


async def test_overloaded_and_draining_refusals_are_counted(clients):
    async with running_server(max_connections=1) as server:
        clients.append(await connect(server.url, "alice"))
        assert (await connect_error(server.url, auth={"token": token("bob")}))["code"] == (
            "overloaded"
        )
        begin_drain(server.app)
        assert (await connect_error(server.url, auth={"token": token("bob")}))["code"] == (
            "draining"
        )
        got = await scrape(server.url)
        assert got.value("socketio_connect_errors_total", code="overloaded") == 1
        assert got.value("socketio_connect_errors_total", code="draining") == 1
        assert got.value("socketio_draining") == 1


async def test_event_message_and_room_metrics_move(server, clients):
    alice = await connect(server.url, "alice")
    bob = await connect(server.url, "bob")
    carol = await connect(server.url, "carol")
    clients += [alice, bob, carol]
    for client in (alice, bob, carol):
        assert (await client.call("join:room", "lobby"))["ok"]
    base = await scrape(server.url)
    assert base.value("socketio_rooms") == 1
    assert base.value("socketio_events_received_total", event="join:room") == 3
    assert base.value("socketio_event_duration_seconds_count", event="join:room") == 3
    assert base.value("socketio_messages_sent_total", event="joined:room") == 3

    ack = await alice.call("message:send", {"roomId": "lobby", "message": "hello"})
    assert ack["ok"]
    for client in (alice, bob, carol):
        await client.wait_for("message:received")
    got = await scrape(server.url)
    assert (
        got.value("socketio_messages_stored_total")
        == base.value("socketio_messages_stored_total") + 1
    )
    # one delivery per recipient ...
    assert got.value("socketio_messages_sent_total", event="message:received") == 3
    # ... but one latency observation per broadcast (no per-recipient metric call)
    assert got.value("socketio_delivery_latency_seconds_count", scope="local") == 1
    assert got.value("socketio_delivery_latency_seconds_count", scope="remote") == 0
    assert got.value("socketio_events_received_total", event="message:send") == 1
    assert got.value("socketio_event_duration_seconds_count", event="message:send") == 1

    ack = await bob.call("message:private", {"targetUserId": "carol", "message": "psst"})
    assert ack["ok"]
    await carol.wait_for("message:private:received")
    got = await scrape(server.url)
    assert got.value("socketio_messages_sent_total", event="message:private:received") == 1
    assert got.value("socketio_delivery_latency_seconds_count", scope="local") == 2

    ack = await bob.call("message:send", {"roomId": "lobby", "message": 42})
    assert ack["error"]["code"] == "invalid_payload"
    ack = await bob.call("message:send", {"roomId": "elsewhere", "message": "hi"})
    assert ack["error"]["code"] == "not_in_room"
    got = await scrape(server.url)
    for code in ("invalid_payload", "not_in_room"):
        assert got.value("socketio_event_errors_total", event="message:send", code=code) == 1

    assert (await carol.call("leave:room", "lobby"))["ok"]
    got = await scrape(server.url)
    assert got.value("socketio_messages_sent_total", event="user:left") == 2


async def test_labels_stay_bounded(server, clients):
    """Unknown event names collapse into `unknown`; room and user ids never become labels."""
    alice = await connect(server.url, "user-4f7a9c")
    clients.append(alice)
    await alice.call("join:room", "room-7d1e2b")
    for event in ("evil:room-7d1e2b", "x" * 200, "join:room:extra"):
        ack = await alice.call(event, "room-7d1e2b")
        assert ack["error"]["code"] == "unknown_event"
    got = await scrape(server.url)
    assert got.value("socketio_events_received_total", event="unknown") == 3
    assert got.value("socketio_event_errors_total", event="unknown", code="unknown_event") == 3
    for value in got.label_values():
        assert "7d1e2b" not in value and "4f7a9c" not in value and "evil" not in value


async def test_event_loop_lag_is_sampled(server):
    async def sampled() -> bool:
        return (await scrape(server.url)).value("socketio_event_loop_lag_seconds_count") >= 2

    await eventually(sampled, timeout=5)


async def test_rate_limited_events_are_counted(clients):
    async with running_server(rate_limit_events=3, rate_limit_window_seconds=60) as server:
        alice = await connect(server.url, "alice")
        clients.append(alice)
        codes = [
            (await alice.call("presence:get", "lobby")).get("error", {}).get("code")
            for _ in range(4)
        ]
        assert codes[-1] == "rate_limited"
        got = await scrape(server.url)
        assert (
            got.value("socketio_event_errors_total", event="presence:get", code="rate_limited") >= 1
        )


async def test_metrics_registry_is_per_app():
    """Two apps in one process each declare every metric on their own registry."""
    async with running_server() as one, running_server() as two:
        a = await scrape(one.url)
        b = await scrape(two.url)
        assert set(a.types) == set(b.types)
        sio = socketio.AsyncClient(reconnection=False)
        await sio.connect(one.url, auth={"token": token()}, transports=["websocket"])
        try:
            assert (await scrape(one.url)).value("socketio_connected_clients") == 1
            assert (await scrape(two.url)).value("socketio_connected_clients") == 0
        finally:
            await sio.disconnect()


# -- cluster mode (real Redis) ---------------------------------------------------------------


async def test_remote_delivery_and_redis_metrics_move(redis_url, clients):
    async with (
        running_server(redis_url=redis_url, instance_id="a") as a,
        running_server(redis_url=redis_url, instance_id="b") as b,
    ):
        alice = await connect(a.url, "alice")
        bob = await connect(b.url, "bob")
        carol = await connect(b.url, "carol")
        clients += [alice, bob, carol]
        for client in (alice, bob, carol):
            assert (await client.call("join:room", "lobby"))["ok"]
        before_a, before_b = await scrape(a.url), await scrape(b.url)
        assert before_a.value("socketio_redis_up") == 1
        assert before_b.value("socketio_redis_up") == 1
        assert before_a.value("socketio_pubsub_deaf") == 0

        assert (await alice.call("message:send", {"roomId": "lobby", "message": "hi"}))["ok"]
        for client in (alice, bob, carol):
            await client.wait_for("message:received")
        got_a, got_b = await scrape(a.url), await scrape(b.url)

        def delta(got: Scrape, before: Scrape, name: str, **labels: str) -> float:
            return got.value(name, **labels) - before.value(name, **labels)

        # the sender's instance delivered locally; its token, storing and publishing took one
        # round trip
        assert delta(got_a, before_a, "socketio_delivery_latency_seconds_count", scope="local") == 1
        redis_ops = "socketio_redis_command_duration_seconds_count"
        assert delta(got_a, before_a, redis_ops, op="history_append") == 1
        assert delta(got_a, before_a, redis_ops, op="publish") == 0
        assert delta(got_a, before_a, redis_ops, op="rate_limit") == 0
        # the other instance heard it through Redis: one remote observation for two sockets
        assert (
            delta(got_b, before_b, "socketio_delivery_latency_seconds_count", scope="remote") == 1
        )
        assert delta(got_b, before_b, "socketio_messages_sent_total", event="message:received") == 2
        assert delta(got_a, before_a, "socketio_messages_sent_total", event="message:received") == 1
        assert got_a.value("socketio_redis_command_duration_seconds_count", op="ping") >= 1
        assert delta(got_a, before_a, "socketio_messages_stored_total") == 1


async def test_redis_up_falls_when_redis_dies(own_redis, clients):
    async with running_server(redis_url=own_redis.url) as server:
        assert (await scrape(server.url)).value("socketio_redis_up") == 1
        own_redis.kill()

        async def down() -> bool:
            return (await scrape(server.url)).value("socketio_redis_up") == 0

        await eventually(down, timeout=10)
