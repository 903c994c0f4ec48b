"""A long-polling client that idles past the ping interval behind the sticky HAProxy.

With the chart's defaults the server holds each poll for up to ``config.pingInterval`` (25 s)
before it sends a ping. Through a proxy configured like the chart's edge (cookie affinity,
``ingress.proxyTimeoutSeconds``) the idle client keeps its session; through the same proxy
with a 15 s request timeout (Envoy's default, what an HTTPRoute without ``timeouts.request``
gets) the held poll is cut and the client loses its connection: the reason the chart renders
a request timeout longer than the ping interval.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
import yaml

from ..helpers import Client, connect, running_server
from .lb import CHART, Backend, HAProxy, StickySettings

pytestmark = pytest.mark.slow

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
PING_INTERVAL = float(VALUES["config"]["pingInterval"])
PING_TIMEOUT = float(VALUES["config"]["pingTimeout"])
ENVOY_DEFAULT_TIMEOUT = 15


@asynccontextmanager
async def haproxy(workdir: Path, urls: list[str], settings: StickySettings) -> AsyncIterator[str]:
    lb = HAProxy(
        workdir,
        [Backend(f"s{n}", url.removeprefix("http://")) for n, url in enumerate(urls)],
        settings,
    )
    await asyncio.to_thread(lb.start)
    try:
        yield lb.url
    finally:
        await asyncio.to_thread(lb.stop)


async def idle_polling_client(stack: AsyncExitStack, url: str, user: str) -> Client:
    session = await stack.enter_async_context(
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    )
    client = await connect(url, user, transports=["polling"], http_session=session)
    stack.push_async_callback(client.close)
    assert client.sio.transport() == "polling"
    return client


async def test_polling_client_idles_past_the_ping_interval_through_the_lb(
    redis_url: str, tmp_path: Path
) -> None:
    assert PING_INTERVAL >= 25, "the chart's default ping interval is what is exercised"
    chart_settings = StickySettings.from_chart()
    assert chart_settings.timeout_seconds > PING_INTERVAL
    short = dataclasses.replace(chart_settings, timeout_seconds=ENVOY_DEFAULT_TIMEOUT)
    timing = {"ping_interval": PING_INTERVAL, "ping_timeout": PING_TIMEOUT}
    async with (
        running_server(redis_url=redis_url, instance_id="a", **timing) as a,
        running_server(redis_url=redis_url, instance_id="b", **timing) as b,
        haproxy(tmp_path / "chart-lb", [a.url, b.url], chart_settings) as chart_lb,
        haproxy(tmp_path / "short-lb", [a.url, b.url], short) as short_lb,
        AsyncExitStack() as stack,
    ):
        kept = await idle_polling_client(stack, chart_lb, "idle-alice")
        cut = await idle_polling_client(stack, short_lb, "idle-bob")
        sid = kept.sio.get_sid()
        await asyncio.sleep(PING_INTERVAL + 5)  # no traffic: one poll is held ~25 s

        assert kept.sio.connected and kept.sio.get_sid() == sid
        assert (await kept.call("join:room", "idle"))["ok"]
        assert (await kept.call("message:send", {"roomId": "idle", "message": "still here"}))["ok"]
        await kept.wait_for("message:received", lambda m: m["message"] == "still here")
        # negative control: a 15 s request timeout cuts the held poll and the session with it
        assert not cut.sio.connected
