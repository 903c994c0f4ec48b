"""The autoscaling queries the project ships, asked of the real Prometheus that scrapes the
three instances: the prometheus-adapter rule (as the adapter expands it for the HPA) and the
KEDA trigger query the chart renders must both count the clients really connected."""

from __future__ import annotations

import asyncio
import os
from contextlib import AsyncExitStack
from typing import Any

import pytest
import yaml

from ..helpers import ROOT, Client, connect
from .prom import NAMESPACE, Prometheus
from .test_monitoring import until
from .topology import Topology

pytestmark = pytest.mark.slow

ADAPTER_RULES = ROOT / "k8s" / "components" / "prometheus-adapter" / "adapter-rules.yaml"
CHART = ROOT / "helm" / "socketio-service"
SERVICE = "socketio-service"
"""The ``service`` target label the topology's scrape config gives (the ServiceMonitor's)."""


def adapter_rule() -> dict[str, Any]:
    [rule] = yaml.safe_load(ADAPTER_RULES.read_text())["rules"]
    return rule


def expand(template: str, series: str, matchers: str, group_by: str) -> str:
    """What prometheus-adapter sends for a Pods metric request of the HPA: the rule's
    ``metricsQuery`` with the series name, the namespace/pod matchers and the group-by label."""
    return (
        template.replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", matchers)
        .replace("<<.GroupBy>>", group_by)
    )


def keda_query(namespace: str, release: str) -> str:
    """The Prometheus trigger's query of the ScaledObject the chart renders for a release."""
    try:
        import helm_python
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("helm-python-sdk is not installed (required when CI is set)")
        pytest.skip("helm-python-sdk is not installed")
    helm_python.disable_logging()
    values = {"autoscaling": {"keda": {"enabled": True}, "connections": {"enabled": True}}}
    rendered = helm_python.Chart.load(CHART).render(values, name=release, namespace=namespace)
    scaled = yaml.safe_load(rendered["socketio-service/templates/scaledobject.yaml"])
    assert scaled["metadata"]["name"] == SERVICE, "release name chosen so fullname == Service"
    [trigger] = [t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"]
    return trigger["metadata"]["query"]


def per_pod(prom: Prometheus, expr: str) -> dict[str, float]:
    return {s["metric"].get("pod", ""): float(s["value"][1]) for s in prom.query(expr)}


async def test_adapter_rule_and_keda_query_count_connected_clients(topology: Topology) -> None:
    prom = topology.prometheus
    rule = adapter_rule()
    pods = [i.instance_id for i in topology.instances]
    async with AsyncExitStack() as stack:
        clients: list[Client] = []
        # an uneven spread (1, 2, 3 clients), straight to each instance
        for n, instance in enumerate(topology.instances):
            for k in range(n + 1):
                client = await connect(instance.url, f"scale-{n}-{k}")
                stack.push_async_callback(client.close)
                clients.append(client)
        live = await asyncio.to_thread(topology.connections)
        assert all(live[pod] >= n + 1 for n, pod in enumerate(pods)), live

        # the adapter's discovery: one series per pod, with the labels it maps to resources
        series = await asyncio.to_thread(prom.api, "series", **{"match[]": rule["seriesQuery"]})
        found = {(s["namespace"], s["pod"]) for s in series}
        assert found == {(NAMESPACE, pod) for pod in pods}
        assert all(s["__name__"] == rule["name"]["as"] for s in series)

        # the HPA asks for the pods of its target: the adapter expands the rule like this
        matchers = f'namespace="{NAMESPACE}",pod=~"{"|".join(pods)}"'
        expr = expand(rule["metricsQuery"], rule["name"]["as"], matchers, "pod")

        def adapter_agrees() -> dict[str, float] | None:
            """Prometheus has scraped the current counts: the rule answers them per pod."""
            live = {pod: float(n) for pod, n in topology.connections().items()}
            got = per_pod(prom, expr)
            return got if got == live else None

        got = await until(adapter_agrees, what="the adapter rule to return every pod's clients")
        assert all(got[pod] >= n + 1 for n, pod in enumerate(pods)), got

        # KEDA: the same metric summed over the release's pods, divided by replicas by KEDA
        query = keda_query(NAMESPACE, SERVICE)
        assert "socketio_connected_clients" in query
        [total] = await asyncio.to_thread(prom.query, query)
        assert float(total["value"][1]) == sum(got.values())
