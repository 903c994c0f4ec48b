"""The coordinator: plans the load over workers, drives the phases, computes one result."""

from __future__ import annotations

import asyncio
import math
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .stats import process_cpu, process_rss_kib, summarize
from .worker import LocalWorker, Plan, RemoteWorker

SATURATED_CPU = 0.85
"""A load process busier than this share of a core may be the bottleneck."""
SATURATED_LAG_MS = 100.0


@dataclass
class BenchConfig:
    """One scenario: how many receivers, rooms and senders, and how long."""

    receivers: int = 200
    rooms: int = 1
    senders_per_room: int = 1
    in_flight: int = 8
    rate: float = 0.0
    message_bytes: int = 90
    warmup: float = 2.0
    duration: float = 7.0
    hold: float = 1.0
    procs: int = 1
    polling_fraction: float = 0.0
    sample_every: int = 10
    connect_concurrency: int = 64
    path: str = "/socket.io/"
    acks: bool = True
    drain: float = 5.0
    message_timeout: float = 5.0
    room_prefix: str = "bench"
    jwt_secret: str = ""
    token: str = ""
    fast_loop: bool = True
    lean: bool = True
    progress: bool = True

    def token_for(self, user: str) -> str:
        if self.jwt_secret:
            from ..auth import mint_token

            return mint_token(self.jwt_secret, user, 3600 + self.warmup + self.duration)
        return self.token or user


@dataclass
class Target:
    """A deployment under test: its URLs and, when local, its server pids."""

    name: str
    urls: list[str]
    pids: list[int] = field(default_factory=list)


def _is_polling(index: int, fraction: float) -> bool:
    return math.floor((index + 1) * fraction) > math.floor(index * fraction)


def make_plans(config: BenchConfig, target: Target) -> list[Plan]:
    """Spread receivers over URLs, rooms and processes; all senders go to process 0."""
    procs = max(1, config.procs)
    tag = f"{int(time.time()) % 100000}"
    plans = [
        Plan(
            index=k,
            receivers=[],
            room_prefix=f"{config.room_prefix}{tag}",
            message_bytes=config.message_bytes,
            in_flight=config.in_flight,
            rate=config.rate,
            sample_every=max(0, config.sample_every),
            connect_concurrency=config.connect_concurrency,
            path=config.path,
            message_timeout=config.message_timeout,
            acks=config.acks,
            lean=config.lean,
        )
        for k in range(procs)
    ]
    urls = target.urls
    for i in range(config.receivers):
        room = i % config.rooms if config.rooms > 0 else -1
        transport = "polling" if _is_polling(i, config.polling_fraction) else "websocket"
        token = config.token_for(f"bench-r{i}")
        plans[i % procs].receivers.append((urls[i % len(urls)], room, token, transport))
    if config.rooms > 0 and config.duration > 0:
        for j in range(config.rooms * max(0, config.senders_per_room)):
            room = j % config.rooms
            plans[0].senders.append((j, urls[j % len(urls)], room, config.token_for(f"bench-s{j}")))
    return plans


class Progress:
    """A live line on stderr: rates over the last second."""

    def __init__(self, name: str, enabled: bool) -> None:
        self.name = name
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last: tuple[float, int, int] | None = None

    def show(self, phase: str, ticks: list[dict[str, Any]], elapsed: float, total: float) -> None:
        if not self.enabled:
            return
        now = ticks[0]["time"]
        delivered = sum(t["delivered"] for t in ticks)
        sent = sum(t["sent"] for t in ticks)
        rate = msgs = 0.0
        if self.last is not None and now > self.last[0]:
            span = now - self.last[0]
            rate = (delivered - self.last[1]) / span
            msgs = (sent - self.last[2]) / span
        self.last = (now, delivered, sent)
        errors = sum(t["errors"] for t in ticks)
        line = (
            f"[{self.name}] {phase} {elapsed:4.1f}/{total:.0f}s  deliveries {rate:>9,.0f}/s  "
            f"sent {msgs:>7,.0f}/s  in flight {sum(t['in_flight'] for t in ticks):>4}  "
            f"errors {errors}  disconnects {sum(t['disconnects'] for t in ticks)}"
        )
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr)

    def done(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)


async def _all(workers: list[Any], name: str, *args: Any) -> list[Any]:
    return await asyncio.gather(*(w.call(name, *args) for w in workers))


async def _sleep_with_progress(
    workers: list[Any], progress: Progress, phase: str, seconds: float
) -> None:
    start = time.perf_counter()
    while (left := start + seconds - time.perf_counter()) > 0:
        await asyncio.sleep(min(1.0, left))
        ticks = await _all(workers, "tick")
        progress.show(phase, ticks, time.perf_counter() - start, seconds)


async def run_target(
    config: BenchConfig,
    target: Target,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> dict[str, Any]:
    """Run the scenario once against ``target``; returns a flat result dict."""
    plans = make_plans(config, target)
    workers: list[Any]
    if len(plans) == 1:
        workers = [LocalWorker(plans[0])]
    else:
        pairs = [socket.socketpair() for _ in plans[1:]]
        workers = [RemoteWorker(plans[0], [b for _, b in pairs], config.fast_loop)]
        workers += [
            RemoteWorker(plan, [a], config.fast_loop)
            for plan, (a, _) in zip(plans[1:], pairs, strict=True)
        ]
        for a, b in pairs:
            a.close()
            b.close()
    progress = Progress(target.name, config.progress)
    result: dict[str, Any] = {"target": target.name, "urls": target.urls}
    rss_before = {pid: process_rss_kib(pid) for pid in target.pids}
    try:
        started = time.perf_counter()
        server0 = {pid: process_cpu(pid) for pid in target.pids}
        connected = await _all(workers, "connect")
        result["connect_wall_s"] = time.perf_counter() - started
        server1 = {pid: process_cpu(pid) for pid in target.pids}
        spent = [
            b - a for p, a in server0.items() if a is not None and (b := server1[p]) is not None
        ]
        if spent and result["connect_wall_s"] > 0:
            result["connect_server_cpu"] = sum(spent) / result["connect_wall_s"]
        n = sum(c["connected"] for c in connected)
        elapsed = max(c["elapsed"] for c in connected)
        result["receivers"] = n
        result["receivers_attempted"] = config.receivers
        result["connect_per_s"] = n / elapsed if elapsed > 0 else math.nan
        result["connect_load_cpu"] = max(c["cpu"] / c["elapsed"] for c in connected if c["elapsed"])
        handshakes = summarize(v for c in connected for v in c["handshake_ms"])
        result["handshake_ms"] = handshakes
        log(
            f"[{target.name}] {n}/{config.receivers} receivers connected in {elapsed:.2f}s "
            f"({result['connect_per_s']:,.0f}/s)"
        )
        if config.rooms > 0 and n:
            joins = await _all(workers, "join")
            members: Counter[int] = Counter()
            procs_in_room: Counter[int] = Counter()
            for j in joins:
                for room, count in j["members"].items():
                    members[room] += count
                    procs_in_room[room] += 1
            await workers[0].call("set_parts", dict(procs_in_room))
            result["joined"] = sum(members.values())
            settle = max(await _all(workers, "settle"))
            log(f"[{target.name}] {result['joined']} joined; quiet after {settle:.1f}s")
        if config.hold > 0:
            await asyncio.sleep(config.hold)
        rss_after = {pid: process_rss_kib(pid) for pid in target.pids}
        _memory(result, rss_before, rss_after, n)
        if config.rooms > 0 and config.duration > 0 and n:
            await _all(workers, "start_sending")
            await _sleep_with_progress(workers, progress, "warm-up", config.warmup)
            cpu0 = {pid: process_cpu(pid) for pid in target.pids}
            edge0 = await _all(workers, "record", True)
            await _sleep_with_progress(workers, progress, "measure", config.duration)
            edge1 = await _all(workers, "record", False)
            cpu1 = {pid: process_cpu(pid) for pid in target.pids}
            progress.done()
            await _all(workers, "stop_sending", config.drain)
            results = await _all(workers, "results")
            _window(result, edge0, edge1, cpu0, cpu1, results)
        else:
            results = await _all(workers, "results")
            result["errors"] = dict(sum((Counter(r["errors"]) for r in results), Counter()))
            result["disconnects"] = sum(sum(r["disconnects"].values()) for r in results)
    finally:
        await asyncio.gather(*(w.call("close") for w in workers), return_exceptions=True)
        for worker in workers:
            worker.join_process()
    result["warnings"] = _warnings(result)
    result["void"] = void_measures(result)
    for name in result["void"]:
        log(f"[{target.name}] VOID: the load tool was saturated: its {name} figures are its own")
    for warning in result["warnings"]:
        log(f"[{target.name}] warning: {warning}")
    return result


def _memory(
    result: dict[str, Any], before: dict[int, int | None], after: dict[int, int | None], n: int
) -> None:
    if not before:
        return
    known = [(before[p], after[p]) for p in before if before[p] is not None and after[p]]
    result["server_rss_kib"] = sum(a for _, a in known)  # type: ignore[misc]
    if known and n:
        delta = sum(a - b for b, a in known)  # type: ignore[operator]
        result["rss_kib_per_connection"] = delta / n


def _window(
    result: dict[str, Any],
    edge0: list[dict[str, Any]],
    edge1: list[dict[str, Any]],
    cpu0: dict[int, float | None],
    cpu1: dict[int, float | None],
    results: list[dict[str, Any]],
) -> None:
    span = edge1[0]["time"] - edge0[0]["time"]
    result["window_s"] = span
    delivered = sum(b["delivered"] - a["delivered"] for a, b in zip(edge0, edge1, strict=True))
    result["deliveries_per_s"] = delivered / span
    result["messages_per_s"] = sum(b["sent"] - a["sent"] for a, b in zip(edge0, edge1)) / span  # noqa: B905
    latency = summarize(
        (v for r in results for v in r["latency_ms"]), max(r["latency_max"] for r in results)
    )
    latency["timed_deliveries"] = float(sum(r["latency_seen"] for r in results))
    result["latency_ms"] = latency
    result["latency_samples"] = [v for r in results for v in r["latency_ms"]]
    result["complete_ms"] = summarize(
        (v for r in results for v in r["complete_ms"]), max(r["complete_max"] for r in results)
    )
    loads = [
        (b["cpu"] - a["cpu"]) / (b["time"] - a["time"]) for a, b in zip(edge0, edge1, strict=True)
    ]
    result["load_cpu"] = max(loads)
    result["load_cpu_total"] = sum(loads)
    result["load_max_lag_ms"] = max(r["max_lag_ms"] for r in results)
    server = {
        str(pid): (cpu1[pid] - cpu0[pid]) / span  # type: ignore[operator]
        for pid in cpu0
        if cpu0[pid] is not None and cpu1.get(pid) is not None
    }
    if server:
        result["server_cpu"] = server
    expected = received = duplicates = 0
    members: Counter[int] = Counter()
    sent: Counter[int] = Counter()
    for r in results:
        members.update(r["expected"])
        sent.update(r["sent_by_room"])
        for got, dup in r["by_room"].values():
            received += got
            duplicates += dup
    expected = sum(sent[room] * members[room] for room in sent)
    result["messages_sent"] = sum(sent.values())
    result["deliveries_expected"] = expected
    result["lost"] = max(0, expected - (received - duplicates))
    result["duplicates"] = duplicates
    result["timeouts"] = sum(r["timeouts"] for r in results)
    result["errors"] = dict(sum((Counter(r["errors"]) for r in results), Counter()))
    result["disconnects"] = sum(sum(r["disconnects"].values()) for r in results)


IDLE_CPU = 0.05
"""A server below this share of a core is idle enough for the next target's run."""


async def wait_idle(
    pids: list[int], quiet: float = 0.3, limit: float = 30.0, threshold: float = IDLE_CPU
) -> float:
    """Wait (at most ``limit`` s) until the local servers ``pids`` together use less than
    ``threshold`` of a core over ``quiet`` s; returns the seconds waited.

    Side by side, the servers share one core: one still closing the previous run's
    thousands of connections takes that core from the next target while it connects and
    sends, and the second target read half the connect rate it reads first.
    """
    started = time.perf_counter()
    while pids and time.perf_counter() - started < limit:
        before = {pid: process_cpu(pid) for pid in pids}
        await asyncio.sleep(quiet)
        spent = [
            after - cpu
            for pid, cpu in before.items()
            if cpu is not None and (after := process_cpu(pid)) is not None
        ]
        if sum(spent) / quiet < threshold:
            break
    return time.perf_counter() - started


def void_measures(result: dict[str, Any]) -> list[str]:
    """The measures this run cannot tell: the load tool, not the server, set them.

    ``flow`` (deliveries/s, latency) when a load process passed :data:`SATURATED_CPU` during
    the window; ``connect`` (connections/s) when it did while connecting. Memory per
    connection does not depend on how fast the tool is, so it is never void.
    """
    out = []
    if (result.get("load_cpu") or 0) > SATURATED_CPU:
        out.append("flow")
    if (result.get("connect_load_cpu") or 0) > SATURATED_CPU:
        out.append("connect")
    return out


def _warnings(result: dict[str, Any]) -> list[str]:
    out = []
    if result.get("receivers", 0) < result.get("receivers_attempted", 0):
        out.append(f"only {result['receivers']}/{result['receivers_attempted']} connected")
    cpu = result.get("load_cpu")
    if cpu is not None and cpu > SATURATED_CPU:
        out.append(
            f"a load process used {cpu:.0%} of a core: the load tool may be the bottleneck "
            "(use --procs on more cores)"
        )
    if result.get("connect_load_cpu", 0) > SATURATED_CPU:
        out.append(
            f"the load tool used {result['connect_load_cpu']:.0%} of a core while connecting: "
            "the connect rate may be the tool's"
        )
    if result.get("load_max_lag_ms", 0) > SATURATED_LAG_MS:
        out.append(f"the load tool's event loop lagged {result['load_max_lag_ms']:.0f} ms")
    if result.get("lost"):
        out.append(f"{result['lost']} deliveries lost")
    return out
