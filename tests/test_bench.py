"""The load tool's arithmetic and its counts against a real in-process server (small runs)."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from engineio import packet as eio_packet

from service.bench.cli import build_parser, parse_targets
from service.bench.rawws import OP_CLOSE, OP_PING, OP_TEXT, FrameParser, client_frame
from service.bench.report import median_result, table
from service.bench.runner import (
    BenchConfig,
    Target,
    _window,
    run_target,
    void_measures,
    wait_idle,
)
from service.bench.stats import Reservoir, percentile, summarize
from service.bench.summary import rows
from service.bench.wire import Sink, message_text, refusal_code
from service.engine.queue import BoundedSendQueue
from service.engine.transport import ListDeque, WriteThroughQueue, text_frame

from .helpers import SECRET, running_server


def frame_for(room: int, sender: int, seq: int) -> bytes:
    text, _ = message_text(room, sender, seq, 90)
    payload = {"id": "1-0", "roomId": "r", "userId": "u", "message": text, "timestamp": 1}
    return b"42" + json.dumps(["message:received", payload]).encode()


def test_percentiles_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7
    assert math.isnan(percentile([], 50))
    out = summarize(reversed(values))
    assert (out["count"], out["p50"], out["p95"], out["max"]) == (100, 50, 95, 100)


def test_reservoir_is_bounded_and_keeps_the_maximum() -> None:
    reservoir = Reservoir(capacity=10)
    for v in range(1000):
        reservoir.add(float(v))
    assert len(reservoir.values) == 10
    assert reservoir.seen == 1000
    assert reservoir.maximum == 999


def test_sink_counts_completions_duplicates_and_ignores_other_frames() -> None:
    recorded: list[float] = []
    sink = Sink({0: 3, 1: 2}, recorded.append)
    done: list[bytes] = []
    sink.on_complete = done.append
    sink.recording = True
    a, b = frame_for(0, 0, 1), frame_for(1, 1, 1)
    for data, timed in ((a, True), (a, False), (a, False), (b, False), (a, False)):
        sink.frame(data, timed)
    sink.frame(b'42["user:joined",{"userId":"x"}]', False)
    assert sink.delivered == 5
    assert sink.other == 1
    assert done == [a[a.index(b"~b") + 2 : a.index(b"~", a.index(b"~b") + 2)]]
    assert sink.by_room() == {0: (4, 1), 1: (1, 0)}
    assert len(recorded) == 1 and recorded[0] >= 0
    sink.frame(b'42["message:received","~b0:0:2:0~"]', True)
    assert sink.errors["malformed_frame"] == 1


def test_window_reports_lost_deliveries() -> None:
    edge0 = [{"time": 0.0, "delivered": 0, "sent": 0, "cpu": 0.0}]
    edge1 = [{"time": 2.0, "delivered": 10, "sent": 4, "cpu": 1.0}]
    results = [
        {
            "by_room": {0: (10, 0)},
            "expected": {0: 3},
            "sent_by_room": {0: 4},
            "latency_ms": [1.0, 2.0],
            "latency_max": 2.0,
            "latency_seen": 2,
            "complete_ms": [],
            "complete_max": 0.0,
            "errors": {},
            "timeouts": 0,
            "disconnects": {},
            "max_lag_ms": 0.0,
        }
    ]
    result: dict = {}
    _window(result, edge0, edge1, {}, {}, results)
    assert result["deliveries_per_s"] == 5
    assert result["deliveries_expected"] == 12
    assert result["lost"] == 2
    assert result["load_cpu"] == 0.5


def test_refusal_code_and_text_frame() -> None:
    assert refusal_code(b'44{"message":"no","data":{"code":"unauthorized"}}') == "unauthorized"
    assert refusal_code(b"44garbage") == "refused"
    assert text_frame(b"x" * 5)[:2] == b"\x81\x05"
    assert text_frame(b"x" * 300)[:4] == b"\x81\x7e\x01\x2c"
    assert text_frame(b"x" * 70000)[:2] == b"\x81\x7f"


def server_frame(payload: bytes, opcode: int = OP_TEXT, fin: bool = True) -> bytes:
    """An unmasked server frame with the shortest length encoding."""
    n = len(payload)
    head = bytes(((0x80 if fin else 0) | opcode,))
    if n < 126:
        head += bytes((n,))
    elif n < 1 << 16:
        head += b"\x7e" + n.to_bytes(2, "big")
    else:
        head += b"\x7f" + n.to_bytes(8, "big")
    return head + payload


def test_raw_frame_parser_joins_chunks_fragments_and_long_frames() -> None:
    """Frames split anywhere across reads, 16- and 64-bit lengths and fragmented messages
    all come out whole and in order; control frames go to their own callback."""
    messages: list[bytes] = []
    controls: list[tuple[int, bytes]] = []
    parser = FrameParser(messages.append, lambda op, data: controls.append((op, data)))
    stream = (
        server_frame(b"42a")
        + server_frame(b"p" * 300)
        + server_frame(b"ping!", OP_PING)
        + server_frame(b"first ", OP_TEXT, fin=False)
        + server_frame(b"second ", 0x0, fin=False)
        + server_frame(b"last", 0x0)
        + server_frame(b"L" * 70_000)
        + server_frame(b"\x03\xe8", OP_CLOSE)
    )
    for size in (1, 7, 4096, len(stream)):
        messages.clear()
        controls.clear()
        for i in range(0, len(stream), size):
            parser.feed(stream[i : i + size])
        assert messages == [b"42a", b"p" * 300, b"first second last", b"L" * 70_000]
        assert controls == [(OP_PING, b"ping!"), (OP_CLOSE, b"\x03\xe8")]
        assert parser.buf == b""
    with pytest.raises(ValueError):
        parser.feed(b"\x81\x85abcd12345")  # a server must not mask


def unmask(frame: bytes) -> tuple[int, bytes]:
    n = frame[1] & 0x7F
    start = 2 + {126: 2, 127: 8}.get(n, 0)
    if n >= 126:
        n = int.from_bytes(frame[2:start], "big")
    assert frame[1] & 0x80, "client frames are masked"
    mask, body = frame[start : start + 4], frame[start + 4 :]
    assert len(body) == n
    return frame[0], bytes(b ^ mask[i % 4] for i, b in enumerate(body))


@pytest.mark.parametrize("size", [0, 1, 4, 5, 125, 126, 300, 70_000])
def test_raw_client_frames_are_masked_and_round_trip(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    frame = client_frame(payload)
    assert unmask(frame) == (0x80 | OP_TEXT, payload)
    if size:
        assert client_frame(payload, mask=b"\x01\x02\x03\x04")[-size:] != payload


def test_saturated_runs_are_void_and_left_out_of_the_table(tmp_path: Path) -> None:
    """A run whose load process passed the threshold is void for what it measured: the
    summary leaves it out of the median and says so, or prints ``void`` when none is left."""
    assert void_measures({"load_cpu": 0.97, "connect_load_cpu": 0.2}) == ["flow"]
    assert void_measures({"load_cpu": 0.5, "connect_load_cpu": 0.9}) == ["connect"]
    assert void_measures({"load_cpu": 0.5}) == []

    def run(target: str, rate: float, void: list[str]) -> dict:
        return {"target": target, "deliveries_per_s": rate, "load_cpu": 0.5, "void": void}

    for i, (ours, anchor) in enumerate(((100.0, 200.0), (900.0, 50.0))):
        void = [] if i == 0 else ["flow"]
        doc = {
            "targets": {
                "ours": {"runs": [run("ours", ours, void)]},
                "anchor": {"runs": [run("anchor", anchor, void)]},
            }
        }
        (tmp_path / f"s1-200-{i + 1}.json").write_text(json.dumps(doc))
    table_rows = {r[1]: r for r in rows(sorted(tmp_path.glob("*.json")))}
    assert table_rows["deliveries/s"][2:5] == ["100 (1 void)", "200 (1 void)", "0.50x"]
    (tmp_path / "s1-200-1.json").unlink()
    table_rows = {r[1]: r for r in rows(sorted(tmp_path.glob("*.json")))}
    assert table_rows["deliveries/s"][2:5] == ["void", "void", "-"]


async def test_next_target_waits_until_the_servers_are_idle() -> None:
    """A server still busy (closing the last run's connections) holds the next run back
    until it is idle, or until the limit; an idle one does not."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert await wait_idle([busy.pid, idle.pid], quiet=0.2, limit=1.0) >= 1.0
        assert await wait_idle([idle.pid], quiet=0.2, limit=30.0) < 30.0
    finally:
        for proc in (busy, idle):
            proc.kill()
            proc.wait()


def test_cli_targets_pids_and_side_by_side_table() -> None:
    args = build_parser().parse_args(
        [
            *("--target", "ours=http://a:1,http://b:2", "--target", "anchor=http://c:3"),
            *("--pid", "ours=10,11", "--pid", "anchor=12"),
        ]
    )
    targets = parse_targets(args)
    assert [(t.name, t.urls, t.pids) for t in targets] == [
        ("ours", ["http://a:1", "http://b:2"], [10, 11]),
        ("anchor", ["http://c:3"], [12]),
    ]
    runs = [
        {"target": "ours", "deliveries_per_s": 100.0, "receivers": 5},
        {"target": "ours", "deliveries_per_s": 300.0, "receivers": 5},
    ]
    ours = median_result(runs)
    assert ours["deliveries_per_s"] == 200
    text = table([ours, {"target": "anchor", "deliveries_per_s": 400.0, "receivers": 5}])
    assert "anchor/ours" in text and "2.00x" in text


async def test_slim_queue_keeps_order_bounds_and_join() -> None:
    """The fast driver's socket queue holds lists instead of deques: the guard's bounds,
    overflow callback, FIFO order, blocking get and join() must be unchanged."""
    overflowed: list[BoundedSendQueue] = []
    queue = WriteThroughQueue(400, overflowed.append)  # 164 bytes a packet
    assert isinstance(queue._queue, ListDeque) and isinstance(queue._getters, ListDeque)
    getter = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait(eio_packet.Packet(eio_packet.MESSAGE, "a" * 100))
    assert (await getter).data == "a" * 100
    queue.task_done()
    for text in ("b" * 100, "c" * 100):
        queue.put_nowait(eio_packet.Packet(eio_packet.MESSAGE, text))
    queue.put_nowait(eio_packet.Packet(eio_packet.MESSAGE, "d" * 100))  # past 400 bytes
    assert overflowed == [queue] and queue.qsize() == 2
    joined = asyncio.ensure_future(queue.join())
    assert [queue.get_nowait().data[0] for _ in range(2)] == ["b", "c"]
    queue.task_done()
    queue.task_done()
    await asyncio.wait_for(joined, 1)


def test_server_cpu_is_reported_per_pid() -> None:
    runs = [
        {"target": "ours", "deliveries_per_s": 1.0, "server_cpu": {"10": 0.5, "11": 0.01}},
        {"target": "ours", "deliveries_per_s": 1.0, "server_cpu": {"10": 0.7, "11": 0.03}},
        {"target": "ours", "deliveries_per_s": 1.0, "server_cpu": {"10": 0.6, "11": 0.02}},
    ]
    ours = median_result(runs)
    assert ours["server_cpu"]["10"] == 0.6 and ours["server_cpu"]["11"] == 0.02
    assert abs(ours["server_cpu"]["total"] - 0.62) < 1e-9
    assert "server CPU (cores)  0.62" in table([ours])  # the total, not twice it
    text = table([ours])
    assert "ours server CPU by pid (cores): 10=0.60 11=0.02" in text
    single = table([{"target": "one", "deliveries_per_s": 1.0, "server_cpu": {"10": 0.5}}])
    assert "by pid" not in single


def config(**overrides: object) -> BenchConfig:
    base: dict = {
        "receivers": 6,
        "rooms": 2,
        "warmup": 0.3,
        "duration": 1.0,
        "hold": 0.0,
        "jwt_secret": SECRET,
        "sample_every": 2,
        "progress": False,
        "connect_concurrency": 8,
        "fast_loop": False,
    }
    base.update(overrides)
    return BenchConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("polling", "lean"), [(0.0, True), (0.0, False), (0.5, True)], ids=["raw", "aiohttp", "poll"]
)
async def test_counts_against_a_real_server(polling: float, lean: bool) -> None:
    """Both websocket clients (raw frames and aiohttp's) and long-polling count the same."""
    async with running_server(rate_limit_events=1_000_000) as server:
        result = await run_target(
            config(polling_fraction=polling, lean=lean),
            Target("ours", [server.url]),
            log=lambda _: None,
        )
    assert result["receivers"] == 6
    assert result["joined"] == 6
    assert result["errors"] == {}
    assert result["messages_sent"] > 0
    # every message reaches the 3 receivers of its room, none lost, none twice
    assert result["deliveries_expected"] == result["messages_sent"] * 3
    assert result["lost"] == 0
    assert result["duplicates"] == 0
    assert result["deliveries_per_s"] > 0
    latency = result["latency_ms"]
    assert latency["count"] > 0
    assert 0 <= latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]


async def test_open_loop_rate_and_ack_errors_are_counted() -> None:
    # a rate limit of 5 events: joins pass, most sends are refused with rate_limited acks
    async with running_server(rate_limit_events=5) as server:
        result = await run_target(
            config(receivers=2, rooms=1, rate=50.0, duration=1.0),
            Target("ours", [server.url]),
            log=lambda _: None,
        )
    assert result["errors"].get("send_rate_limited", 0) > 0
    assert 30 <= result["messages_per_s"] <= 70


async def test_refused_handshakes_are_reported() -> None:
    async with running_server() as server:
        result = await run_target(
            config(jwt_secret="", token="not-a-jwt", rooms=0, duration=0),
            Target("ours", [server.url]),
            log=lambda _: None,
        )
    assert result["receivers"] == 0
    assert result["errors"] == {"connect_unauthorized": 6}
    assert any("connected" in w for w in result["warnings"])
