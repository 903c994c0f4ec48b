"""kustomize edge variants (Gateway API, Traefik), the server NetworkPolicy and the
connections metric as components: each builds, validates strictly (Gateway API objects
against the pinned CRD) and agrees with what the Helm chart renders for the same choice."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from crd_schema import crd_errors, httproute_crd
from k8s_bundle import (
    CRD_GROUPS,
    K8S,
    find,
    kustomize,
    objects_for,
    one,
    parse,
    render,
    run,
    tool,
    validate_strict,
)

pytestmark = pytest.mark.k8s


def build(tmp_path: Path, *components: str) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of an overlay holding the base plus ``components``."""
    rel = os.path.relpath(K8S, tmp_path)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [f"{rel}/base"],
        "components": [f"{rel}/components/{c}" for c in components],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    result = run([tool("kubectl"), "kustomize", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    for doc in docs:
        if not validate_strict(doc):
            assert doc["apiVersion"].rpartition("/")[0] in CRD_GROUPS
    return docs


def chart(values: dict[str, Any]) -> list[dict[str, Any]]:
    return parse(render(values))


def test_gateway_component_replaces_the_ingress(tmp_path: Path) -> None:
    docs = build(tmp_path, "gateway")
    assert not find(docs, "Ingress")
    route = one(docs, "HTTPRoute")
    assert crd_errors(route, httproute_crd("experimental")) == []
    helm = one(chart({"ingress": {"enabled": False}, "httpRoute": {"enabled": True}}), "HTTPRoute")
    [rule], [helm_rule] = route["spec"]["rules"], helm["spec"]["rules"]
    helm_rule["backendRefs"][0]["name"] = "socketio-service"
    assert rule == helm_rule, "kustomize and Helm route differently"
    assert route["spec"]["parentRefs"] == helm["spec"]["parentRefs"]


def test_traefik_component_moves_stickiness_to_the_service(tmp_path: Path) -> None:
    docs = build(tmp_path, "traefik")
    ingress = one(docs, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "traefik"
    assert not ingress["metadata"].get("annotations")
    service = one(docs, "Service", "socketio-service")
    helm = one(chart({"ingress": {"controller": "traefik"}}), "Service", "chat-socketio-service")
    assert service["metadata"]["annotations"] == helm["metadata"]["annotations"]
    assert [p["path"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]] == [
        "/socket.io"
    ]


def test_networkpolicy_component_matches_the_chart(tmp_path: Path) -> None:
    docs = build(tmp_path, "networkpolicy")
    policy = one(docs, "NetworkPolicy", "socketio-service")
    app = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    redis = one(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert all(app.get(k) == v for k, v in selector.items())
    assert not all(redis.get(k) == v for k, v in selector.items())
    helm = one(
        chart({"networkPolicy": {"server": {"enabled": True}}}),
        "NetworkPolicy",
        "chat-socketio-service",
    )
    # The chart also admits its `helm test` pod; kustomize has no test pod.
    helm_from = [p for p in helm["spec"]["ingress"][0]["from"] if "namespaceSelector" in p]
    assert policy["spec"]["ingress"][0]["from"] == helm_from
    assert policy["spec"]["ingress"][0]["ports"] == helm["spec"]["ingress"][0]["ports"]
    assert policy["spec"]["egress"][0] == helm["spec"]["egress"][0]  # DNS
    to_redis = policy["spec"]["egress"][1]
    assert to_redis["ports"] == helm["spec"]["egress"][1]["ports"]
    peer = to_redis["to"][0]["podSelector"]["matchLabels"]
    assert all(redis.get(k) == v for k, v in peer.items())
    assert policy["spec"]["policyTypes"] == helm["spec"]["policyTypes"]


def test_prometheus_adapter_component_adds_the_connections_metric(tmp_path: Path) -> None:
    docs = build(tmp_path, "hpa", "prometheus-adapter")
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    helm = one(
        chart({"autoscaling": {"connections": {"enabled": True}}}), "HorizontalPodAutoscaler"
    )["spec"]
    assert hpa["metrics"] == helm["metrics"]
    assert [m["type"] for m in hpa["metrics"]] == ["Resource", "Pods"]


def test_prod_overlay_is_selected_by_kube_prometheus_stack() -> None:
    docs = kustomize("prod")
    for kind in ("ServiceMonitor", "PrometheusRule"):
        objects = find(docs, kind)  # the service's and Redis's
        assert objects
        assert {o["metadata"]["labels"]["release"] for o in objects} == {"kube-prometheus-stack"}
    helm = objects_for("full")
    assert {o["metadata"]["labels"]["release"] for o in find(helm, "ServiceMonitor")} == {
        o["metadata"]["labels"]["release"] for o in find(docs, "ServiceMonitor")
    }
