"""Soak: connect/join/send/disconnect churn against two service processes sharing one Redis.

RSS and open file descriptors of both processes are sampled; after the churn the least-
squares slope over the second half of the run (after warm-up) is reported, the processes
must come back near their warmed-up footprint, and Redis must hold no leaked keys.

``SOAK_SECONDS`` sets the churn duration (120 s by default; run 900 for the full soak).
Figures go to stdout and, with ``RELIABILITY_REPORT_DIR`` set, to ``soak.json`` there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
import socketio

from .helpers import ServiceProcess, spawn_service, token

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "120"))
WORKERS = int(os.environ.get("SOAK_WORKERS", "40"))
SAMPLE_SECONDS = 2.0
ROOMS = [f"soak-{n}" for n in range(20)]


def proc_stats(pid: int) -> tuple[int, int]:
    """(RSS bytes, open file descriptors) of a process."""
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def fd_breakdown(pid: int, service_port: int, redis_port: int) -> dict[str, int]:
    """Open descriptors of a process by kind: client connections, Redis connections, other."""
    sockets: dict[str, tuple[int, int]] = {}
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as lines:
            for line in list(lines)[1:]:
                cols = line.split()
                local, remote, inode = cols[1], cols[2], cols[9]
                sockets[inode] = (
                    int(local.rsplit(":", 1)[1], 16),
                    int(remote.rsplit(":", 1)[1], 16),
                )
    counts = {"clients": 0, "redis": 0, "other": 0}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            inode = target[len("socket:[") : -1] if target.startswith("socket:[") else ""
            ports = sockets.get(inode)
            if ports and ports[0] == service_port and ports[1] != 0:
                counts["clients"] += 1
            elif ports and ports[1] == redis_port:
                counts["redis"] += 1
            else:
                counts["other"] += 1
    return counts


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t, y) points, per second."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (y - my) for t, y in points) / var if var else 0.0


@dataclass
class Churn:
    urls: list[str]
    stop_at: float
    counts: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def count(self, key: str, table: dict[str, int] | None = None) -> None:
        table = self.counts if table is None else table
        table[key] = table.get(key, 0) + 1

    async def worker(self, n: int) -> None:
        rng = random.Random(n)
        while time.monotonic() < self.stop_at:
            try:
                await self.session(rng, f"user{n % 25}")
            except Exception as exc:  # counted, reported; the run goes on
                self.count(type(exc).__name__, self.errors)
                await asyncio.sleep(0.2)

    async def session(self, rng: random.Random, user: str) -> None:
        sio = socketio.AsyncClient(reconnection=False)
        transport = "polling" if rng.random() < 0.2 else "websocket"
        await sio.connect(
            rng.choice(self.urls),
            auth={"token": token(user)},
            transports=[transport],
            wait_timeout=10,
        )
        self.count("connects")
        try:
            for room in rng.sample(ROOMS, rng.randint(1, 3)):
                ack = await sio.call("join:room", room, timeout=10)
                self.count("joins" if ack.get("ok") else "join_refused")
                for _ in range(rng.randint(1, 5)):
                    ack = await sio.call(
                        "message:send", {"roomId": room, "message": "soak"}, timeout=10
                    )
                    self.count("messages" if ack.get("ok") else "send_refused")
                if rng.random() < 0.5:
                    await sio.call("leave:room", room, timeout=10)
            await sio.call("presence:get", rng.choice(ROOMS), timeout=10)
            await asyncio.sleep(rng.random() * 0.5)
        finally:
            if rng.random() < 0.2:
                await sio.eio.disconnect(abort=True)  # vanish without a goodbye
                self.count("aborts")
            else:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(sio.disconnect(), 10)
            self.count("sessions")


class Sampler:
    def __init__(self, procs: list[ServiceProcess]) -> None:
        self.procs = procs
        self.samples: list[tuple[float, list[tuple[int, int]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_SECONDS)

    def sample(self) -> list[tuple[int, int]]:
        stats = [proc_stats(p.proc.pid) for p in self.procs]
        self.samples.append((time.monotonic() - self.started, stats))
        return stats

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)


def write_report(name: str, data: dict[str, Any]) -> None:
    """Figures for docs/reliability.md, when RELIABILITY_REPORT_DIR is set."""
    directory = os.environ.get("RELIABILITY_REPORT_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"{name}.json"), "w") as out:
            json.dump(data, out, indent=1)


def drain_output(proc: ServiceProcess) -> None:
    """Read a process's output in a thread (a full pipe would block it)."""

    def run() -> None:
        assert proc.proc.stdout is not None
        for _ in proc.proc.stdout:
            pass

    threading.Thread(target=run, daemon=True).start()


@pytest.mark.slow
@pytest.mark.timeout(int(SOAK_SECONDS) + 330)
async def test_soak_churn_two_instances(own_redis) -> None:
    env = {
        "REDIS_URL": own_redis.url,
        "RATE_LIMIT_EVENTS": "100000000",
        "HANDSHAKE_RATE_PER_ADDRESS": "0",
        "PRESENCE_TTL_SECONDS": "5",
        "HISTORY_SIZE": "50",
        "LOG_LEVEL": "warning",
        "SHUTDOWN_DELAY_SECONDS": "0",
        "SHUTDOWN_DRAIN_SECONDS": "1",
        "PING_INTERVAL": "5",
        "PING_TIMEOUT": "5",
    }
    procs = [spawn_service({**env, "INSTANCE_ID": f"soak-{n}"}) for n in range(2)]
    for proc in procs:
        drain_output(proc)
    redis = aioredis.Redis.from_url(own_redis.url)
    try:
        churn = Churn([p.url for p in procs], time.monotonic() + SOAK_SECONDS)
        with Sampler(procs) as sampler:
            await asyncio.gather(*(churn.worker(n) for n in range(WORKERS)))
            # abandoned sessions time out (ping interval + timeout), presence expires
            await asyncio.sleep(12)
            final = sampler.sample()
            breakdown = [fd_breakdown(p.proc.pid, p.port, own_redis.port) for p in procs]
            # an HTTP connection a vanished polling client left open lasts at most aiohttp's
            # keep-alive timeout (75 s): wait for it rather than call it a leak
            settle = time.monotonic()
            while any(b["clients"] for b in breakdown) and time.monotonic() - settle < 80:
                await asyncio.sleep(2)
                breakdown = [fd_breakdown(p.proc.pid, p.port, own_redis.port) for p in procs]
            lingering_s = round(time.monotonic() - settle, 1)
            final = sampler.sample()
        keys = sorted(k.decode() for k in await redis.keys("*"))
        ttls = {k: await redis.ttl(k) for k in keys}
        presence = [k for k in keys if ":presence:" in k]
        live_presence = sum([await redis.zcard(k) for k in presence])
    finally:
        await redis.aclose()
        codes = [p.stop() for p in procs]
    assert codes == [0, 0]

    warm = [s for s in sampler.samples if s[0] >= min(30.0, SOAK_SECONDS / 4)]
    half = [s for s in sampler.samples if s[0] >= SOAK_SECONDS / 2 and s[0] <= SOAK_SECONDS]
    report: dict[str, Any] = {
        "seconds": SOAK_SECONDS,
        "workers": WORKERS,
        "counts": churn.counts,
        "errors": churn.errors,
        "samples": len(sampler.samples),
        "instances": [],
        "redis_keys": len(keys),
        "redis_keys_without_ttl": [k for k, t in ttls.items() if t == -1],  # -2: expired
        "presence_entries_left": live_presence,
        "fds_final_by_kind": breakdown,
        "client_sockets_closed_within_s": 12 + lingering_s,
    }
    for i in range(len(procs)):
        rss_half = [(t, s[i][0] / 2**20) for t, s in half]
        fds_half = [(t, float(s[i][1])) for t, s in half]
        warm_rss = max(s[i][0] for _, s in warm) if warm else final[i][0]
        report["instances"].append(
            {
                "rss_start_mib": round(sampler.samples[0][1][i][0] / 2**20, 1),
                "rss_warm_peak_mib": round(warm_rss / 2**20, 1),
                "rss_final_mib": round(final[i][0] / 2**20, 1),
                "rss_slope_mib_per_min": round(slope(rss_half) * 60, 3),
                "fds_start": sampler.samples[0][1][i][1],
                "fds_max": max(s[i][1] for _, s in sampler.samples),
                "fds_final": final[i][1],
                "fds_slope_per_min": round(slope(fds_half) * 60, 3),
            }
        )
    print("\nsoak:", json.dumps(report, indent=1))
    write_report("soak", report)

    assert churn.counts.get("sessions", 0) > WORKERS
    assert sum(churn.errors.values()) <= churn.counts["sessions"] * 0.01, churn.errors
    for inst in report["instances"]:
        # back near the warmed-up footprint once the churn stops: no growth trend
        assert inst["rss_final_mib"] <= inst["rss_warm_peak_mib"] * 1.25 + 16, inst
    for kinds in breakdown:
        # every client connection is gone; Redis connections are a pool bounded by the
        # concurrency seen (redis-py keeps idle ones), not by the number of sessions
        assert kinds["clients"] == 0, breakdown
        assert kinds["redis"] <= WORKERS + 4, breakdown
        assert kinds["other"] <= 16, breakdown
    # no leaked keys: every key expires, presence holds nobody, one history per room at most
    assert report["redis_keys_without_ttl"] == []
    assert live_presence == 0
    # sessions of vanished clients, kept for connection state recovery, expire on their own
    sessions = [k for k in keys if ":session:" in k]
    # the soak's first sessions expire while we look: TTL rounds their last second to 0, and
    # -2 means the key expired between KEYS and TTL
    assert all(ttls[k] == -2 or 0 <= ttls[k] <= 120 for k in sessions), {
        k: ttls[k] for k in sessions
    }
    assert len(keys) - len(sessions) <= 2 * len(ROOMS) + 25 + len(ROOMS)
