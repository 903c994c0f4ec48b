"""A real Prometheus scrapes the three instances: every Grafana panel has data after traffic,
every alert rule evaluates, and the Redis-down and deaf-pod alerts go off when those faults
are caused for real (Redis killed; one pod's pub/sub muted by the fault proxy)."""

from __future__ import annotations

import asyncio
import math
import re
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest

from ..helpers import Client, connect, connect_error
from .prom import (
    NAMESPACE,
    RATE_WINDOW,
    Prometheus,
    alert_rules,
    concrete,
    dashboard,
    panel_queries,
    template_variables,
    threshold_operand,
)
from .topology import DEAF_CANDIDATE, Topology

pytestmark = pytest.mark.slow


def resolve_variables(prom: Prometheus) -> dict[str, str]:
    """What Grafana puts in each template variable: ``label_values(selector, label)`` asked
    of Prometheus (it must list something, or the dropdown is empty), then the "All" value
    (``.*``) for multi-value variables and the first value for single-value ones."""
    values: dict[str, str] = {}
    for variable in template_variables():
        query = variable["query"]
        query = query.get("query", "") if isinstance(query, dict) else query
        match = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\s*\)\s*", query)
        assert match, f"${variable['name']}: unsupported variable query {query!r}"
        selector = concrete(match.group(1), values)
        found = prom.label_values(match.group(2), selector)
        assert found, f"${variable['name']}: {query} lists nothing"
        if variable.get("includeAll"):
            values[variable["name"]] = variable.get("allValue") or ".*"
        else:
            values[variable["name"]] = found[0]
    return values


def has_number(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


async def until(
    check: Callable[[], Any], timeout: float = 30, what: str = "condition", every: float = 0.3
) -> Any:
    """Poll a blocking check (in a thread) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(every)


async def traffic(topology: Topology) -> None:
    """A bit of everything the dashboard plots, with users on all three instances."""
    room = f"metrics-{uuid.uuid4().hex[:8]}"
    async with AsyncExitStack() as stack:
        users: list[Client] = []
        for n in range(6):
            session = await stack.enter_async_context(
                aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
            )
            transports = ["polling", "websocket"] if n % 2 else ["websocket"]
            user = await connect(topology.url, f"u{n}", transports=transports, http_session=session)
            stack.push_async_callback(user.close)
            users.append(user)
        for user in users:
            assert (await user.call("join:room", room))["ok"]
        for n in range(5):
            for user in users:
                await user.call("message:send", {"roomId": room, "message": f"m{n}"})
        await users[0].call("message:private", {"targetUserId": "u1", "message": "psst"})
        await users[1].call("typing:start", room)
        await users[1].call("typing:stop", room)
        await users[2].call("history:get", {"roomId": room})
        await users[3].call("presence:get", room)
        await users[4].call("message:send", {"roomId": "elsewhere", "message": "x"})
        await users[5].call("leave:room", room)
        refused = await connect_error(topology.url, auth={"token": "not-a-jwt"})
        assert refused["code"] == "unauthorized"
        assert sum(topology.connections().values()) >= len(users)


async def test_every_dashboard_panel_has_data(topology: Topology) -> None:
    prom = topology.prometheus
    await traffic(topology)
    await asyncio.sleep(3)  # a few 1 s scrapes after the traffic
    variables = await asyncio.to_thread(resolve_variables, prom)
    assert variables["namespace"] == NAMESPACE
    queries = panel_queries()
    assert len(queries) >= 20, "the dashboard lost its panels?"
    titled = {p.get("title") for p in dashboard()["panels"] if p.get("type") != "row"}
    assert titled <= {q.panel for q in queries} | {None}, "a panel without a query"

    empty, errors = [], []
    for query in queries:
        expr = concrete(query.expr, variables)
        try:
            result = await asyncio.to_thread(prom.query, expr)
        except AssertionError as exc:
            errors.append(f"{query.panel} [{query.ref}]: {expr}\n    {exc}")
            continue
        if not has_number(result):
            empty.append(f"{query.panel} [{query.ref}]: {expr} -> {result}")
    assert not errors, "queries Prometheus rejects:\n" + "\n".join(errors)
    assert not empty, "panels left empty after traffic:\n" + "\n".join(empty)

    # spot checks that the numbers mean what the panels say
    replicas = await asyncio.to_thread(prom.query, 'count(socketio_build_info{namespace="e2e"})')
    assert float(replicas[0]["value"][1]) == len(topology.instances)
    remote = await asyncio.to_thread(
        prom.query,
        f'sum(rate(socketio_delivery_latency_seconds_count{{scope="remote"}}[{RATE_WINDOW}]))',
    )
    assert float(remote[0]["value"][1]) > 0, "no cross-instance delivery was measured"


async def test_every_alert_rule_loads_and_evaluates(topology: Topology) -> None:
    """Prometheus loaded the rule file healthy; each expression evaluates, and the part left
    of each threshold returns series, so no rule watches a metric that does not exist."""
    prom = topology.prometheus
    rules = alert_rules()
    assert {"SocketioRedisDown", "SocketioPubsubDeaf"} <= {r["alert"] for r in rules}
    loaded = await asyncio.to_thread(prom.api, "rules")
    by_name = {r["name"]: r for g in loaded["groups"] for r in g["rules"]}
    for rule in rules:
        state = by_name[rule["alert"]]
        assert state["health"] in ("ok", "unknown") and not state.get("lastError"), state
        await asyncio.to_thread(prom.query, rule["expr"])  # raises on a PromQL error
        if re.search(r"\bredis_\w+", rule["expr"]):
            # the Redis group watches redis_exporter's series: this topology runs no
            # exporter, so those rules are proven by promtool's unit tests instead
            continue
        operand = threshold_operand(rule["expr"])
        assert operand, f"{rule['alert']}: no threshold to strip in {rule['expr']!r}"
        # rate() needs two scrapes of a fresh topology: poll, then fail with the rule's name
        await until(
            lambda operand=operand: prom.query(operand),
            timeout=15,
            what=f"{rule['alert']}: {operand!r} to return series",
        )


def firing(prom: Prometheus, alert: str) -> set[str]:
    """Pods for which ``alert`` is pending or firing in Prometheus' own rule evaluation."""
    return {
        a["labels"].get("pod", "")
        for a in prom.alerts()
        if a["labels"].get("alertname") == alert and a["state"] in ("pending", "firing")
    }


def expr_of(alert: str) -> str:
    return next(r["expr"] for r in alert_rules() if r["alert"] == alert)


def pods_in(prom: Prometheus, expr: str) -> set[str]:
    return {sample["metric"].get("pod", "") for sample in prom.query(expr)}


async def test_redis_down_alert_goes_off_when_redis_dies(topology: Topology) -> None:
    prom = topology.prometheus
    pods = {i.instance_id for i in topology.instances}
    expr = expr_of("SocketioRedisDown")
    await until(lambda: pods_in(prom, expr) == set(), what="every pod on Redis before the fault")
    topology.redis.kill()
    try:
        await until(lambda: pods_in(prom, expr) == pods, what="socketio_redis_up == 0 everywhere")
        await until(lambda: firing(prom, "SocketioRedisDown") == pods, what="alert pending")
        stat = 'count(socketio_redis_up{namespace="e2e"} == 0) or vector(0)'
        assert float((await asyncio.to_thread(prom.query, stat))[0]["value"][1]) == len(pods)
        # the outage is shared: every pod stays ready, so the LB keeps all its backends
        assert await asyncio.to_thread(topology.lb.all_up)
        assert all(i.readyz() == 200 for i in topology.instances)
        assert all(i.health()["redis"]["connected"] is False for i in topology.instances)
        assert all("redis_unreachable" in i.health()["reasons"] for i in topology.instances)
    finally:
        await asyncio.to_thread(topology.redis.start)
    await asyncio.to_thread(topology.heal)
    await until(lambda: pods_in(prom, expr) == set(), what="redis_up back to 1")
    await until(lambda: not firing(prom, "SocketioRedisDown"), what="alert resolved")


async def test_deaf_pod_alert_names_the_deaf_pod(topology: Topology) -> None:
    prom = topology.prometheus
    deaf = topology.instances[DEAF_CANDIDATE]
    expr = expr_of("SocketioPubsubDeaf")
    # after a Redis restart every pod reports deaf for ~0.5 s until its first heartbeat
    # comes back (see docs/topology.md): start from a clean slate
    await until(lambda: pods_in(prom, expr) == set(), what="no deaf pod before the fault")
    topology.proxy.mute_subscribers()
    try:
        await until(lambda: pods_in(prom, expr) == {deaf.instance_id}, what="deaf pod in PromQL")
        await until(lambda: firing(prom, "SocketioPubsubDeaf") == {deaf.instance_id}, what="alert")
        assert deaf.readyz() == 503
        assert "pubsub_deaf" in deaf.health()["reasons"]
        assert not await asyncio.to_thread(topology.lb.all_up), "the LB still routes to it"
        others = [i for i in topology.instances if i is not deaf]
        assert all(i.readyz() == 200 for i in others)
        stat = 'sum(socketio_pubsub_deaf{namespace="e2e", pod=~".*"})'
        assert float((await asyncio.to_thread(prom.query, stat))[0]["value"][1]) == 1
    finally:
        topology.proxy.restore()
    await asyncio.to_thread(topology.heal)
    await until(lambda: pods_in(prom, expr) == set(), what="deaf pod recovered")
