"""kustomize overlays: they build, validate strictly, and agree with the Helm chart."""

from __future__ import annotations

from typing import Any

import pytest
from k8s_bundle import (
    CRD_GROUPS,
    K8S,
    container,
    find,
    kustomize,
    objects_for,
    one,
    pod_specs,
    validate_strict,
)

pytestmark = pytest.mark.k8s


def env_names(docs: list[dict[str, Any]]) -> set[str]:
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    server = container(spec, "server")
    names = {e["name"] for e in server["env"]}
    for source in server["envFrom"]:
        names |= set(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    return names


def essentials(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """What must be identical whichever way the system is deployed."""
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    server = container(spec, "server")
    redis = container(one(docs, "StatefulSet")["spec"]["template"]["spec"], "redis")
    ingress = one(docs, "Ingress")
    sticky = {
        k: v
        for k, v in ingress["metadata"]["annotations"].items()
        if k.startswith("nginx.ingress.kubernetes.io/")
    }
    return {
        "image": server["image"].rpartition(":")[0],
        "redisImage": redis["image"],
        "ports": server["ports"],
        "liveness": server["livenessProbe"],
        "readiness": server["readinessProbe"],
        "preStop": server["lifecycle"]["preStop"],
        "grace": spec["terminationGracePeriodSeconds"],
        "securityContext": server["securityContext"],
        "podSecurityContext": spec["securityContext"],
        "resources": server["resources"],
        "redisProbes": (redis["livenessProbe"], redis["readinessProbe"]),
        "redisCommand": redis["command"],
        "redisSecurityContext": redis["securityContext"],
        "env": env_names(docs),
        "stickyAnnotations": sticky,
        "ingressPaths": [p["path"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]],
        "servicePorts": one(docs, "Service", deployment["metadata"]["name"])["spec"]["ports"],
        "topologyKeys": [t["topologyKey"] for t in spec["topologySpreadConstraints"]],
    }


def test_overlays_build_and_validate_strictly(kustomized: list[dict[str, Any]]) -> None:
    assert kustomized
    validated = 0
    for doc in kustomized:
        if validate_strict(doc):
            validated += 1
        else:
            assert doc["apiVersion"].rpartition("/")[0] in CRD_GROUPS
    assert validated >= 8


def test_helm_and_kustomize_agree(kustomized: list[dict[str, Any]], overlay: str) -> None:
    # prod runs Redis with Sentinel replication, like the chart's replication value set.
    helm = essentials(objects_for("replication" if overlay == "prod" else "default"))
    kust = essentials(kustomized)
    if overlay == "prod":
        # The public overlay marks the cookie Secure (TLS); everything else is identical.
        assert (
            kust["stickyAnnotations"].pop("nginx.ingress.kubernetes.io/session-cookie-secure")
            == "true"
        )
        helm["stickyAnnotations"].pop("nginx.ingress.kubernetes.io/session-cookie-secure")
    for key in helm:
        assert kust[key] == helm[key], f"{overlay}: {key} differs from the Helm chart"


def test_config_values_agree_with_chart_defaults() -> None:
    helm_cm = next(c for c in find(objects_for("default"), "ConfigMap") if "PORT" in c["data"])
    base = dict(
        line.partition("=")[::2]
        for line in (K8S / "base" / "config.env").read_text().splitlines()
        if line.strip()
    )
    assert base == helm_cm["data"]


def test_hpa_agrees_with_chart() -> None:
    helm = one(objects_for("default"), "HorizontalPodAutoscaler")["spec"]
    kust = one(kustomize("prod"), "HorizontalPodAutoscaler")["spec"]
    helm["scaleTargetRef"]["name"] = kust["scaleTargetRef"]["name"]
    assert kust == helm


def test_pods_are_locked_down(kustomized: list[dict[str, Any]]) -> None:
    for where, spec in pod_specs(kustomized):
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"], where


def test_wiring(kustomized: list[dict[str, Any]], overlay: str) -> None:
    deployment = one(kustomized, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one(kustomized, "Service", "socketio-service")
    assert all(pod_labels.get(k) == v for k, v in service["spec"]["selector"].items())
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "server"
    sts = one(kustomized, "StatefulSet")
    redis_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert not all(redis_labels.get(k) == v for k, v in service["spec"]["selector"].items())
    policy = one(kustomized, "NetworkPolicy")
    assert all(
        redis_labels.get(k) == v for k, v in policy["spec"]["podSelector"]["matchLabels"].items()
    )
    peer = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert all(pod_labels.get(k) == v for k, v in peer.items())
    # Generated ConfigMaps/Secrets are referenced by their hashed names.
    names = {(d["kind"], d["metadata"]["name"]) for d in kustomized}
    spec = deployment["spec"]["template"]["spec"]
    for source in container(spec, "server")["envFrom"]:
        assert ("ConfigMap", source["configMapRef"]["name"]) in names
    refs = [
        e["valueFrom"]["secretKeyRef"]
        for _, s in pod_specs(kustomized)
        for c in s["containers"]
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    secrets = {d["metadata"]["name"]: d for d in find(kustomized, "Secret")}
    if overlay == "dev":
        for ref in refs:
            assert ref["key"] in secrets[ref["name"]]["data"], ref
    else:
        assert not secrets, "prod secrets are created out of band, never committed"
        assert {r["name"] for r in refs} == {"socketio-service-jwt", "socketio-service-redis"}
        hpa = one(kustomized, "HorizontalPodAutoscaler")
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert "replicas" not in deployment["spec"]
        assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
        monitor = one(kustomized, "ServiceMonitor", "socketio-service")
        assert all(
            service["metadata"]["labels"].get(k) == v
            for k, v in monitor["spec"]["selector"]["matchLabels"].items()
        )
    dashboard = one(kustomized, "ConfigMap", "socketio-service-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
