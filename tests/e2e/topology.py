"""The production topology on one machine: what ``helm install`` runs, with real processes.

* Redis (one server, like the chart's StatefulSet);
* three ``python -m service`` processes (the pods), each with ``REDIS_URL`` and its own
  ``INSTANCE_ID``; the last one reaches Redis through a :class:`~tests.faultproxy.FaultProxy`
  (transparent until muted) so a test can make exactly that pod deaf;
* HAProxy in front (the Ingress), configured from the chart's values (:mod:`.lb`);
* Prometheus scraping the pods and evaluating the chart's alert rules (:mod:`.prom`).

Everything here is synchronous so the session-scoped fixture needs no event loop; tests call
the blocking parts through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..faultproxy import FaultProxy
from ..helpers import SECRET, free_port
from ..redis_server import RedisServer
from .lb import Backend, HAProxy
from .prom import Prometheus, Target

INSTANCES = 3
DEAF_CANDIDATE = INSTANCES - 1
"""The instance whose Redis connections go through the fault proxy."""

INSTANCE_ENV = {
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "info",
    "PYTHONUNBUFFERED": "1",
    # a shorter, still realistic lifecycle: 1 s for "endpoints" (the LB's check) to notice,
    # then the drain spread over 2 s
    "SHUTDOWN_DELAY_SECONDS": "1",
    "SHUTDOWN_DRAIN_SECONDS": "2",
    # the suite chats faster than the default 100 events/min per user, and keeps every message
    "RATE_LIMIT_EVENTS": "100000",
    "HISTORY_SIZE": "10000",
    "PING_INTERVAL": "5",
    "PING_TIMEOUT": "5",
    "PUBSUB_HEARTBEAT_SECONDS": "1",
}


def id_key(message_id: str) -> tuple[int, int]:
    """Message ids are ``<ms>-<seq>`` (Redis Stream ids): their order as numbers."""
    ms, seq = message_id.split("-")
    return int(ms), int(seq)


def http_json(url: str, timeout: float = 2) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


@dataclass
class Instance:
    """One service process (a pod) on a fixed port, so a restart comes back at one address."""

    instance_id: str
    redis_url: str
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    env: dict[str, str] = field(default_factory=dict)
    """Settings on top of :data:`INSTANCE_ENV` (e.g. the Sentinel topology's)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Instance:
        assert not self.running
        self.starts += 1
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / f"{self.instance_id}.{self.starts}.log").open("wb")
        env = {
            **os.environ,
            **INSTANCE_ENV,
            "JWT_SECRET": SECRET,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "REDIS_URL": self.redis_url,
            "INSTANCE_ID": self.instance_id,
            **self.env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        return self

    def readyz(self) -> int:
        try:
            return http_json(f"{self.url}/readyz", timeout=1)[0]
        except (urllib.error.URLError, OSError, ValueError):
            return 0

    def health(self) -> dict[str, Any]:
        return http_json(f"{self.url}/health")[1]

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while self.readyz() != 200:
            if not self.running:
                raise RuntimeError(f"{self.instance_id} exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.instance_id} not ready in {timeout}s")
            time.sleep(0.05)

    def terminate(self, timeout: float = 20) -> int:
        """SIGTERM (what the kubelet sends after preStop) and the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, chars: int = 3000) -> str:
        path = self.workdir / f"{self.instance_id}.{self.starts}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


class ThreadedFaultProxy:
    """A :class:`FaultProxy` on its own event loop thread, so it outlives any test's loop."""

    def __init__(self, target_port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.proxy = FaultProxy(target_port)
        self.loop.set_exception_handler(self._quiet_when_redis_is_down)

    @staticmethod
    def _quiet_when_redis_is_down(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """While Redis is killed the proxy cannot reach it: expected, not worth a traceback."""
        if isinstance(context.get("exception"), ConnectionRefusedError):
            return
        loop.default_exception_handler(context)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def start(self) -> ThreadedFaultProxy:
        self.thread.start()
        self._run(self.proxy.start())
        return self

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def muted(self) -> bool:
        return self.proxy.muted

    def mute_subscribers(self) -> None:
        async def mute() -> None:
            self.proxy.mute_subscribers()

        self._run(mute())

    def restore(self) -> None:
        async def restore() -> None:
            self.proxy.restore()

        self._run(restore())

    def close(self) -> None:
        self._run(self.proxy.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class Topology:
    redis: RedisServer
    proxy: ThreadedFaultProxy
    instances: list[Instance]
    lb: HAProxy
    prometheus: Prometheus
    workdir: Path

    @classmethod
    def start(cls, workdir: Path) -> Topology:
        redis = RedisServer(workdir / "redis").start()
        proxy = ThreadedFaultProxy(redis.port).start()
        instances = [
            Instance(f"sio-{n}", proxy.url if n == DEAF_CANDIDATE else redis.url, workdir / "pods")
            for n in range(INSTANCES)
        ]
        try:
            lb = HAProxy(
                workdir / "lb", [Backend(i.instance_id, f"127.0.0.1:{i.port}") for i in instances]
            )
            prometheus = Prometheus(
                workdir / "prometheus",
                [Target(f"127.0.0.1:{i.port}", i.instance_id) for i in instances],
            )
            for instance in instances:
                instance.start()
            for instance in instances:
                instance.wait_ready()
            lb.start()
            prometheus.start()
        except BaseException:
            for instance in instances:
                instance.kill()
            proxy.close()
            redis.stop()
            raise
        return cls(redis, proxy, instances, lb, prometheus, workdir)

    @property
    def url(self) -> str:
        """The public URL: the load balancer."""
        return self.lb.url

    def by_id(self, instance_id: str) -> Instance:
        return next(i for i in self.instances if i.instance_id == instance_id)

    def connections(self) -> dict[str, int]:
        """Socket.IO connections per instance, from each pod's ``/health``."""
        return {i.instance_id: i.health()["connections"] for i in self.instances}

    def heal(self, timeout: float = 30) -> None:
        """Undo whatever a failed test left behind: Redis up, proxy transparent, every pod
        running and ready, and the LB seeing all of them."""
        if not self.redis.ping():
            self.redis.kill()
            self.redis.start()
        if self.proxy.muted:
            self.proxy.restore()
        for instance in self.instances:
            if not instance.running:
                instance.start()
        for instance in self.instances:
            instance.wait_ready(timeout)
        self.lb.wait_all_up(timeout)

    def stop(self) -> None:
        self.prometheus.stop()
        self.lb.stop()
        running = [i for i in self.instances if i.running]
        for instance in running:  # SIGTERM all at once: the drains overlap
            assert instance.proc is not None
            instance.proc.send_signal(signal.SIGTERM)
        for instance in running:
            try:
                assert instance.proc is not None
                instance.proc.wait(15)
            except subprocess.TimeoutExpired:
                instance.kill()
        self.proxy.close()
        self.redis.stop()
