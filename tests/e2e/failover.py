"""Highly available Redis on one machine, with three pods behind the sticky load balancer.

``sentinel`` mode is what the chart's ``redis.architecture: replication`` deploys: three
``redis-server`` (one master, two ``--replicaof`` it) and three Sentinels (``redis-server
--sentinel``, quorum 2, ``down-after-milliseconds 1000``, ``failover-timeout 4000``); the pods
use ``redis+sentinel://`` and ``REDIS_WAIT_REPLICAS=1``. ``standalone`` mode is one
``redis-server`` (the chart's default architecture). Every server runs with the chart's AOF
settings (``appendfsync always``: with ``everysec`` a SIGKILL while the disk is slow loses
writes Redis had already answered, see docs/reliability.md). Pods run with the production
``PING_TIMEOUT`` (20 s) and the default ``REDIS_OUTAGE_BUFFER_SECONDS`` (5).

Synchronous like :mod:`.topology`; tests call the blocking parts through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from ..helpers import free_port, terminate
from ..redis_server import RedisServer, server_binary
from .lb import Backend, HAProxy
from .topology import Instance

MASTER_NAME = "mymaster"
PODS = 3
POD_ENV = {
    "PING_TIMEOUT": "20",  # the production default (the main e2e topology shortens it)
    "PING_INTERVAL": "5",
    "REDIS_OUTAGE_BUFFER_SECONDS": "5",
    "PRESENCE_TTL_SECONDS": "30",
}


@dataclass
class Sentinel:
    """One ``redis-server --sentinel`` with its own writable config file (it rewrites it)."""

    workdir: Path
    master_port: int
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sentinel:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
            f"sentinel failover-timeout {MASTER_NAME} 4000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        log = (self.workdir / "sentinel.log").open("wb")
        self.proc = subprocess.Popen(
            [server_binary(), str(conf), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
        )
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=1, decode_responses=True)

    def stop(self) -> None:
        terminate(self.proc, 5)


def _redis(workdir: Path, port: int | None, *extra: str) -> RedisServer:
    return RedisServer(workdir, port, "--appendonly", "yes", "--appendfsync", "always", *extra)


@dataclass
class FailoverTopology:
    mode: str
    servers: list[RedisServer]
    sentinels: list[Sentinel]
    pods: list[Instance]
    lb: HAProxy
    workdir: Path

    @classmethod
    def start(cls, workdir: Path, mode: str) -> FailoverTopology:
        master = _redis(workdir / "redis0", None).start()
        servers = [master]
        sentinels: list[Sentinel] = []
        pods: list[Instance] = []
        lb: HAProxy | None = None
        try:
            if mode == "sentinel":
                for n in (1, 2):
                    servers.append(
                        _redis(
                            workdir / f"redis{n}",
                            None,
                            "--replicaof",
                            "127.0.0.1",
                            str(master.port),
                        ).start()
                    )
                sentinels = [
                    Sentinel(workdir / f"sentinel{n}", master.port).start() for n in range(3)
                ]
                hosts = ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
                url = f"redis+sentinel://{hosts}/0/{MASTER_NAME}"
                env = {**POD_ENV, "REDIS_WAIT_REPLICAS": "1"}
            else:
                url, env = master.url, dict(POD_ENV)
            pods = [Instance(f"{mode}-{n}", url, workdir / "pods", env=env) for n in range(PODS)]
            lb = HAProxy(
                workdir / "lb", [Backend(p.instance_id, f"127.0.0.1:{p.port}") for p in pods]
            )
            topology = cls(mode, servers, sentinels, pods, lb, workdir)
            topology.wait_settled()
            for pod in pods:
                pod.start()
            for pod in pods:
                pod.wait_ready()
            lb.start()
        except BaseException:
            for pod in pods:
                pod.kill()
            if lb is not None:
                lb.stop()
            for sentinel in sentinels:
                sentinel.stop()
            for server in servers:
                server.stop()
            raise
        return topology

    @property
    def url(self) -> str:
        return self.lb.url

    def master_port(self) -> int:
        """The master's port, as the Sentinels say (standalone: the one server)."""
        if self.mode != "sentinel":
            return self.servers[0].port
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                _, port = sentinel.client().sentinel_get_master_addr_by_name(MASTER_NAME)
                return int(port)
        raise RuntimeError("no Sentinel answers")

    def master(self) -> RedisServer:
        port = self.master_port()
        return next(s for s in self.servers if s.port == port)

    def wait_settled(self, timeout: float = 30) -> None:
        """Every Sentinel agrees on a master that answers, sees both replicas with their
        link up and the two other Sentinels."""
        deadline = time.monotonic() + timeout
        while not self._settled():
            if time.monotonic() > deadline:
                raise TimeoutError("the Redis topology did not settle")
            time.sleep(0.1)

    def _settled(self) -> bool:
        try:
            if self.mode != "sentinel":
                return self.servers[0].ping()
            ports = set()
            for sentinel in self.sentinels:
                state = sentinel.client().sentinel_master(MASTER_NAME)
                if "s_down" in state["flags"] or "o_down" in state["flags"]:
                    return False
                if state["num-other-sentinels"] != 2 or state["num-slaves"] != 2:
                    return False
                replicas = sentinel.client().sentinel_slaves(MASTER_NAME)
                if any(r["master-link-status"] != "ok" or "s_down" in r["flags"] for r in replicas):
                    return False
                ports.add(int(state["port"]))
            if len(ports) != 1:
                return False
            info = redis.Redis(port=ports.pop(), socket_timeout=1).info("replication")
            return info["role"] == "master" and info["connected_slaves"] == 2
        except (redis.RedisError, OSError, KeyError):
            return False

    def restart(self, server: RedisServer) -> RedisServer:
        """Start a killed server again on its port and data: as a replica of the current
        master in sentinel mode (as the chart's pod would come back)."""
        extra = (
            () if self.mode != "sentinel" else ("--replicaof", "127.0.0.1", str(self.master_port()))
        )
        again = _redis(server.workdir, server.port, *extra).start()
        self.servers[self.servers.index(server)] = again
        return again

    def heal(self, timeout: float = 40) -> None:
        """Undo a failed test: every server running and unpaused, the topology settled,
        every pod running and ready behind the LB, no memory cap left."""
        for server in list(self.servers):
            if server.proc is not None and server.proc.poll() is None:
                server.resume()
                with contextlib.suppress(redis.RedisError):
                    redis.Redis(port=server.port, socket_timeout=1).config_set("maxmemory", 0)
            else:
                self.restart(server)
        self.wait_settled(timeout)
        for pod in self.pods:
            if not pod.running:
                pod.start()
        for pod in self.pods:
            pod.wait_ready(timeout)
        self.lb.wait_all_up(timeout)

    def stop(self) -> None:
        self.lb.stop()
        for pod in self.pods:
            if pod.running:
                pod.terminate(20)
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()
