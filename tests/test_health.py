"""docs/protocol.md#http-endpoints probes: /healthz (liveness), /readyz (the one readiness truth), /health (detail)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import aiohttp

from service.lifecycle import begin_drain

from .helpers import connect, connect_error, running_server, token


async def get(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.json()


async def test_live_and_ready_when_idle(server):
    assert await get(f"{server.url}/healthz") == (200, {"status": "ok"})
    assert await get(f"{server.url}/readyz") == (200, {"status": "ready"})


async def test_health_has_the_reference_detail(server, clients):
    clients.append(await connect(server.url, "alice"))
    before = int(time.time() * 1000)
    status, body = await get(f"{server.url}/health")
    assert status == 200
    assert body["status"] == "ok" and body["reasons"] == []
    assert before - 1000 <= body["timestamp"] <= int(time.time() * 1000) + 1000
    assert body["instance"] == "test"
    process = body["process"]
    assert process["pid"] == os.getpid()
    assert isinstance(process["uptime"], int | float) and process["uptime"] >= 0
    assert process["memory"]["rss"] > 1_000_000
    # embedded mode: the same shape as in cluster mode, saying there is no Redis
    assert body["redis"] == {"configured": False, "connected": False, "latency": None}
    assert body["connections"] == 1


async def test_not_ready_at_max_connections_and_ready_again_below(clients):
    async with running_server(max_connections=2) as server:
        first = await connect(server.url, "alice")
        clients.append(first)
        assert (await get(f"{server.url}/readyz"))[0] == 200
        clients.append(await connect(server.url, "bob"))
        status, body = await get(f"{server.url}/readyz")
        assert status == 503
        assert body == {"status": "not_ready", "reasons": ["at_max_connections"]}
        refused = await connect_error(server.url, auth={"token": token("carol")})
        assert refused["code"] == "overloaded"
        assert (await get(f"{server.url}/healthz"))[0] == 200
        status, detail = await get(f"{server.url}/health")
        assert status == 200 and detail["status"] == "degraded"
        assert detail["reasons"] == ["at_max_connections"]

        await first.sio.disconnect()
        deadline = time.monotonic() + 5
        while (await get(f"{server.url}/readyz"))[0] != 200:
            assert time.monotonic() < deadline, "never ready again after a disconnect"
            await asyncio.sleep(0.05)


async def test_draining_is_not_ready_but_alive(server):
    begin_drain(server.app)
    status, body = await get(f"{server.url}/readyz")
    assert status == 503 and body["reasons"] == ["draining"]
    assert await get(f"{server.url}/healthz") == (200, {"status": "ok"})
    assert (await connect_error(server.url, auth={"token": token()}))["code"] == "draining"


async def test_redis_detail_follows_redis_and_readiness_does_not(own_redis):
    async with running_server(redis_url=own_redis.url) as server:
        assert await get(f"{server.url}/readyz") == (200, {"status": "ready"})
        status, body = await get(f"{server.url}/health")
        assert status == 200 and body["status"] == "ok"
        redis = body["redis"]
        assert redis["configured"] is True and redis["connected"] is True
        assert isinstance(redis["latency"], int | float) and redis["latency"] >= 0

        own_redis.kill()
        deadline = time.monotonic() + 10
        while True:
            status, detail = await get(f"{server.url}/health")
            if detail["redis"]["connected"] is False:
                break
            assert time.monotonic() < deadline, "Redis still reported connected"
            await asyncio.sleep(0.1)
        assert status == 200 and detail["status"] == "degraded"
        assert detail["reasons"] == ["redis_unreachable"] and detail["redis"]["latency"] is None
        # an outage every instance shares is not a reason to take this one out of rotation
        assert await get(f"{server.url}/readyz") == (200, {"status": "ready"})
        assert await get(f"{server.url}/healthz") == (200, {"status": "ok"})
