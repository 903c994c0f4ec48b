"""The chart's edge (Ingress controllers, Gateway API, TLS), autoscaling glue and the server
NetworkPolicy, rendered by Helm's engine; Gateway API objects are validated against the pinned
upstream CRD schemas (tests/k8s/crds)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from crd_schema import crd_errors, httproute_crd
from k8s_bundle import (
    CHART,
    K8S,
    RELEASE,
    VALUE_SETS,
    find,
    helm_python,
    objects_for,
    one,
    parse,
    render,
    validate_strict,
    values_for,
)

pytestmark = pytest.mark.k8s

FULLNAME = f"{RELEASE}-socketio-service"
GATEWAY_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
"""The Gateway API's Duration pattern (GEP-2257), as in the vendored CRDs."""


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def rendered(values: dict[str, Any]) -> list[dict[str, Any]]:
    return parse(render(values))


def notes(values: dict[str, Any]) -> str:
    return render(values)["socketio-service/templates/NOTES.txt"]


def refused(values: dict[str, Any]) -> str:
    """The message Helm stops with: a schema error or a template ``fail``."""
    hp = helm_python()
    with pytest.raises((hp.HelmValuesError, hp.HelmRenderError)) as exc:
        render(values)
    return str(exc.value)


def gateway(**extra: Any) -> dict[str, Any]:
    values = values_for("gateway")
    for key, value in extra.items():
        values.setdefault(key, {}).update(value)
    return values


# ---- Gateway API: the HTTPRoute against the pinned CRDs ----


@pytest.mark.parametrize("value_set", [v for v in VALUE_SETS if v in {"gateway", "full"}])
def test_httproute_validates_against_the_experimental_crd(value_set: str) -> None:
    route = one(objects_for(value_set), "HTTPRoute")
    assert crd_errors(route, httproute_crd("experimental")) == []


def test_crd_validation_is_strict_and_checks_durations() -> None:
    """Negative controls: what the chart rendered before (seconds past 5 digits) and a
    misspelled field are both errors, so the check above can fail."""
    route = one(objects_for("gateway"), "HTTPRoute")
    rule = route["spec"]["rules"][0]
    rule["sessionPersistence"]["absoluteTimeout"] = "172800s"
    rule["timeouts"]["requets"] = "1h"
    errors = crd_errors(route, httproute_crd("experimental"))
    assert any("absoluteTimeout" in e and "does not match" in e for e in errors), errors
    assert any("requets" in e for e in errors), errors


def test_session_persistence_needs_the_experimental_channel() -> None:
    """The standard channel has no sessionPersistence: installed with standard CRDs, the API
    server drops it and long-polling loses its session. Without stickiness the route is
    standard-channel valid."""
    sticky = one(objects_for("gateway"), "HTTPRoute")
    errors = crd_errors(sticky, httproute_crd("standard"))
    assert errors and all("sessionPersistence" in e for e in errors), errors
    plain = one(rendered(gateway(stickySessions={"enabled": False})), "HTTPRoute")
    assert "sessionPersistence" not in plain["spec"]["rules"][0]
    assert crd_errors(plain, httproute_crd("standard")) == []


def test_session_persistence_follows_sticky_sessions() -> None:
    [rule] = one(rendered(gateway(stickySessions={"cookieMaxAgeSeconds": 0})), "HTTPRoute")["spec"][
        "rules"
    ]
    assert rule["sessionPersistence"] == {
        "sessionName": "SIOSTICKY",
        "type": "Cookie",
        "cookieConfig": {"lifetimeType": "Session"},
    }
    # CEL rule of the CRD (not evaluated by jsonschema): Permanent requires absoluteTimeout.
    for value_set in ("gateway", "full"):
        persistence = one(objects_for(value_set), "HTTPRoute")["spec"]["rules"][0][
            "sessionPersistence"
        ]
        assert persistence["cookieConfig"] == {"lifetimeType": "Permanent"}
        assert persistence["absoluteTimeout"] == "48h"


@pytest.mark.parametrize(
    ("seconds", "duration"),
    [
        (0, "0s"),
        (26, "26s"),
        (90, "1m30s"),
        (3600, "1h"),
        (3661, "1h1m1s"),
        (172800, "48h"),
        (31536000, "8760h"),
    ],
)
def test_durations_are_gateway_api_durations(seconds: int, duration: str) -> None:
    """Seconds become the largest units, never more than 5 digits each (172800 -> 48h)."""
    timeout = seconds if seconds == 0 or 25 < seconds <= 86400 else 3600
    max_age = seconds or 60
    values = gateway(
        stickySessions={"cookieMaxAgeSeconds": max_age},
        httpRoute={"requestTimeoutSeconds": timeout},
    )
    [rule] = one(rendered(values), "HTTPRoute")["spec"]["rules"]
    request, absolute = rule["timeouts"]["request"], rule["sessionPersistence"]["absoluteTimeout"]
    assert GATEWAY_DURATION.fullmatch(request) and GATEWAY_DURATION.fullmatch(absolute)
    if timeout == seconds:
        assert request == duration
    if max_age == seconds:
        assert absolute == duration


def test_request_timeout_must_outlast_a_held_long_poll() -> None:
    """Envoy-based gateways cut a request at 15 s by default; the server holds a poll for up
    to the ping interval (25 s)."""
    assert one(objects_for("gateway"), "HTTPRoute")["spec"]["rules"][0]["timeouts"] == {
        "request": "1h"
    }
    assert "must exceed config.pingInterval" in refused(
        gateway(httpRoute={"requestTimeoutSeconds": 15})
    )
    assert "must exceed" in refused(gateway(httpRoute={"requestTimeoutSeconds": 25}))
    assert "cookieMaxAgeSeconds" in refused(
        gateway(stickySessions={"cookieMaxAgeSeconds": 99999 * 3600})
    )


# ---- Ingress controllers ----


def test_haproxy_cookie_persistence_on_the_service() -> None:
    """The HAProxy Kubernetes Ingress Controller reads cookie-persistence from the Service
    (an Ingress annotation is ignored)."""
    docs = objects_for("haproxy")
    service = one(docs, "Service", FULLNAME)
    assert service["metadata"]["annotations"] == {"haproxy.org/cookie-persistence": "SIOSTICKY"}
    ingress = one(docs, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "haproxy"
    assert not any(
        k.startswith(("nginx.", "traefik.", "haproxy.")) for k in ingress["metadata"]["annotations"]
    )
    off = rendered({**values_for("haproxy"), "stickySessions": {"enabled": False}})
    assert not one(off, "Service", FULLNAME)["metadata"].get("annotations")


def test_haproxy_refuses_a_same_site_none_cookie() -> None:
    values = {
        **values_for("haproxy"),
        "stickySessions": {"cookieSameSite": "None", "cookieSecure": True},
    }
    assert "SameSite=None" in refused(values)


def test_every_edge_is_sticky_by_default() -> None:
    """Whichever edge is chosen, the defaults give the affinity cookie to the long-polling
    requests (the Service or Ingress annotation, or the HTTPRoute's sessionPersistence)."""
    for controller, where, key in (
        ("nginx", "Ingress", "nginx.ingress.kubernetes.io/session-cookie-name"),
        ("traefik", "Service", "traefik.ingress.kubernetes.io/service.sticky.cookie.name"),
        ("haproxy", "Service", "haproxy.org/cookie-persistence"),
    ):
        docs = rendered({"ingress": {"controller": controller}})
        obj = one(docs, where, FULLNAME)
        assert obj["metadata"]["annotations"][key] == "SIOSTICKY", controller
    route = one(
        rendered({"ingress": {"enabled": False}, "httpRoute": {"enabled": True}}), "HTTPRoute"
    )
    assert route["spec"]["rules"][0]["sessionPersistence"]["sessionName"] == "SIOSTICKY"


# ---- TLS ----


def test_tls_without_a_host_is_refused() -> None:
    """ingress-nginx drops a TLS block without hosts; the chart refuses it instead of
    printing an https URL that does not answer."""
    assert "host" in refused({"ingress": {"tlsSecretName": "chat-tls"}})


def test_same_site_none_requires_secure() -> None:
    """Browsers drop a SameSite=None cookie that is not Secure: cross-site polling would
    lose its stickiness."""
    assert refused({"stickySessions": {"cookieSameSite": "None"}})
    assert refused({"stickySessions": {"cookieSameSite": "None", "cookieSecure": False}})
    ok = rendered({"stickySessions": {"cookieSameSite": "None", "cookieSecure": True}})
    annotations = one(ok, "Ingress")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/session-cookie-samesite"] == "None"


@pytest.mark.parametrize("controller", ["nginx", "traefik"])
def test_tls_makes_the_cookie_secure(controller: str) -> None:
    tls = {"controller": controller, "host": "chat.example.com", "tlsSecretName": "chat-tls"}
    key = {
        "nginx": ("Ingress", "nginx.ingress.kubernetes.io/session-cookie-secure"),
        "traefik": ("Service", "traefik.ingress.kubernetes.io/service.sticky.cookie.secure"),
    }[controller]
    secure = one(rendered({"ingress": tls}), key[0], FULLNAME)["metadata"]["annotations"][key[1]]
    assert secure == "true"
    plain = one(rendered({"ingress": {"controller": controller}}), key[0], FULLNAME)
    assert plain["metadata"]["annotations"][key[1]] == "false"


def test_notes_print_what_really_answers() -> None:
    text = notes({"ingress": {"host": "chat.example.com", "tlsSecretName": "chat-tls"}})
    assert "https://chat.example.com/socket.io" in text and "Secure" in text
    text = notes({"ingress": {"host": "chat.example.com"}})
    assert "http://chat.example.com/socket.io" in text and "https://" not in text
    text = notes({})
    assert "https://" not in text and "get ingress chat-socketio-service" in text
    assert "ingress-nginx is retired" in text
    assert "retired" not in notes({"ingress": {"controller": "traefik"}})
    text = notes(values_for("gateway"))
    assert "experimental-channel" in text and "get httproute" in text
    assert 'listener "https"' in text


def test_cert_manager_example_renders() -> None:
    """The documented cert-manager setup: the issuer annotation plus the Secret it fills."""
    ingress = one(objects_for("haproxy"), "Ingress")
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert ingress["spec"]["tls"] == [
        {"hosts": ["chat.example.com"], "secretName": "chat-example-com-tls"}
    ]
    docs = (K8S.parent / "docs" / "kubernetes.md").read_text()
    assert "cert-manager.io/cluster-issuer" in docs


# ---- autoscaling: HPA or KEDA, never both ----


def test_keda_owns_the_autoscaler() -> None:
    docs = objects_for("keda")
    assert not find(docs, "HorizontalPodAutoscaler")
    scaled = one(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    deployment = one(docs, "Deployment")
    assert "replicas" not in deployment["spec"]
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 10)
    hpa_default = one(objects_for("default"), "HorizontalPodAutoscaler")["spec"]
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa_default["behavior"]
    cpu, prom = spec["triggers"]
    assert cpu == {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "70"}}
    assert prom["type"] == "prometheus" and prom["metricType"] == "AverageValue"
    assert prom["metadata"]["serverAddress"] == "http://prometheus-operated.monitoring.svc:9090"
    assert prom["metadata"]["threshold"] == "5000"
    assert prom["metadata"]["query"] == (
        'sum(socketio_connected_clients{namespace="realtime",service="chat-socketio-service"})'
    )
    # KEDA's metadata values are all strings (its CRD: additionalProperties string).
    assert all(isinstance(v, str) for t in spec["triggers"] for v in t["metadata"].values())


def test_keda_without_the_connections_metric_scales_on_cpu_only() -> None:
    docs = rendered({"autoscaling": {"keda": {"enabled": True}}})
    [trigger] = one(docs, "ScaledObject")["spec"]["triggers"]
    assert trigger["type"] == "cpu"
    off = rendered({"autoscaling": {"enabled": False, "keda": {"enabled": True}}})
    assert not find(off, "ScaledObject") and not find(off, "HorizontalPodAutoscaler")
    assert one(off, "Deployment")["spec"]["replicas"] == 2


# ---- kube-prometheus-stack glue ----


def test_monitoring_objects_carry_the_release_label() -> None:
    """kube-prometheus-stack selects ServiceMonitors and PrometheusRules by
    ``release: <its release>``; the default matches its usual name and can be changed."""
    on = {"metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}}
    for kind in ("ServiceMonitor", "PrometheusRule"):
        objects = find(rendered(on), kind)  # the service's and Redis's
        assert objects
        assert {o["metadata"]["labels"]["release"] for o in objects} == {"kube-prometheus-stack"}
    other = {
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
            "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
        }
    }
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert {o["metadata"]["labels"]["release"] for o in find(rendered(other), kind)} == {"prom"}


def dashboard_of(docs: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    [cm] = [c for c in find(docs, "ConfigMap") if "grafana_dashboard" in c["metadata"]["labels"]]
    [(key, text)] = cm["data"].items()
    return key, json.loads(text)


def test_two_releases_get_their_own_dashboard() -> None:
    """The Grafana sidecar keys dashboards by file name and Grafana by uid: two releases in
    one Grafana must differ in both (and in title, unique per folder)."""
    hp = helm_python()
    chart = hp.Chart.load(CHART)
    boards = []
    for name, namespace in (("chat", "realtime"), ("chat", "staging"), ("support", "realtime")):
        docs = parse(chart.render({}, name=name, namespace=namespace, is_install=True))
        boards.append(dashboard_of(docs))
    assert len({key for key, _ in boards}) == 2  # file names are per release name
    assert len({board["uid"] for _, board in boards}) == 3
    assert len({board["title"] for _, board in boards}) == 3
    long = parse(chart.render({}, name="x" * 40, namespace="y" * 40, is_install=True))
    uid = dashboard_of(long)[1]["uid"]
    assert len(uid) <= 40 and re.fullmatch(r"[A-Za-z0-9_-]+", uid)
    fixed = dashboard_of(rendered({"dashboard": {"uid": "chat-prod"}}))[1]
    assert fixed["uid"] == "chat-prod"


# ---- the server NetworkPolicy ----


def server_policy(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "NetworkPolicy", FULLNAME)


def test_server_network_policy_is_off_by_default() -> None:
    assert not find(objects_for("default"), "NetworkPolicy", FULLNAME)


def test_server_network_policy() -> None:
    docs = objects_for("full")
    policy = server_policy(docs)
    app = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    redis = one(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    test_pod = one(docs, "Pod")["metadata"]["labels"]
    spec = policy["spec"]
    assert matches(spec["podSelector"]["matchLabels"], app)
    assert not matches(spec["podSelector"]["matchLabels"], redis)
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    [inbound] = spec["ingress"]
    assert inbound["ports"] == [{"port": "http", "protocol": "TCP"}]
    namespaces = [
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for p in inbound["from"]
        if "namespaceSelector" in p
    ]
    assert namespaces == ["traefik", "monitoring"]  # the controller's and Prometheus'
    pods = [p["podSelector"]["matchLabels"] for p in inbound["from"] if "podSelector" in p]
    assert pods and all(matches(sel, test_pod) for sel in pods), "helm test must get through"
    assert not any(matches(sel, app) for sel in pods)
    dns, to_redis, to_hook = spec["egress"]
    assert to_hook["ports"] == [{"port": 8080, "protocol": "TCP"}], "full: the room-auth hook"
    assert dns["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    [peer] = to_redis["to"]
    assert set(peer) == {"podSelector"}
    assert matches(peer["podSelector"]["matchLabels"], redis)
    assert not matches(peer["podSelector"]["matchLabels"], app)
    redis_port = one(docs, "Service", f"{FULLNAME}-redis")["spec"]["ports"][0]["port"]
    assert redis_port in {p["port"] for p in to_redis["ports"]}


def test_server_network_policy_lets_the_room_auth_hook_through() -> None:
    """The hook fails closed: a policy that blocks it refuses every join, so the chart
    insists on an egress rule for it."""
    values = {
        "config": {"roomAuthUrl": "https://auth.example.com/rooms"},
        "networkPolicy": {"server": {"enabled": True}},
    }
    assert "config.roomAuthUrl" in refused(values)


def test_server_network_policy_with_an_external_redis() -> None:
    values = {**values_for("external-redis"), "networkPolicy": {"server": {"enabled": True}}}
    assert "extraEgress" in refused(values)
    egress = [{"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"port": 6380}]}]
    values["networkPolicy"]["server"]["extraEgress"] = egress
    policy = server_policy(rendered(values))
    assert policy["spec"]["egress"][1:] == egress
    assert len(policy["spec"]["egress"]) == 2, "DNS and the external Redis only"


# ---- prometheus-adapter rule: one rule, shipped twice ----


def adapter_rules() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    component = K8S / "components" / "prometheus-adapter"
    config = yaml.safe_load((component / "adapter-rules.yaml").read_text())
    values = yaml.safe_load((component / "prometheus-adapter-values.yaml").read_text())
    return config["rules"], values["rules"]["custom"]


def test_adapter_rule_is_the_same_in_both_files() -> None:
    config, values = adapter_rules()
    assert config == values
    [rule] = config
    assert rule["name"]["as"] == "socketio_connected_clients"
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    hpa = one(objects_for("full"), "HorizontalPodAutoscaler")
    [pods] = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods["pods"]["metric"]["name"] == rule["name"]["as"]


def test_strict_validation_covers_the_httproute() -> None:
    """Every value set's HTTPRoute goes through the CRD check of validate_strict (which the
    general validation test runs for every object), so a bad route cannot hide there."""
    route = one(objects_for("gateway"), "HTTPRoute")
    route["spec"]["rules"][0]["timeouts"]["request"] = "3600000s"
    with pytest.raises(AssertionError, match="does not match"):
        validate_strict(route)
