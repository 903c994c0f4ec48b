"""The Helm chart, rendered by Helm's own engine and validated object by object."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from k8s_bundle import (
    CHART,
    CRD_GROUPS,
    RELEASE,
    VALUE_SETS,
    container,
    find,
    helm_python,
    objects_for,
    one,
    parse,
    pod_specs,
    render,
    validate_strict,
    values_for,
)

pytestmark = pytest.mark.k8s

FULLNAME = f"{RELEASE}-socketio-service"
REDIS = f"{FULLNAME}-redis"
APP_SELECTOR = {
    "app.kubernetes.io/name": "socketio-service",
    "app.kubernetes.io/instance": RELEASE,
    "app.kubernetes.io/component": "server",
}
REQUIRED_ENV = {
    "REDIS_URL",
    "JWT_SECRET",
    "JWT_ALGORITHMS",
    "CORS_ALLOWED_ORIGINS",
    "RATE_LIMIT_EVENTS",
    "RATE_LIMIT_WINDOW_SECONDS",
    "HISTORY_SIZE",
    "HISTORY_TTL_SECONDS",
    "MAX_MESSAGE_BYTES",
    "MAX_CONNECTIONS",
    "PING_INTERVAL",
    "PING_TIMEOUT",
    "SHUTDOWN_DRAIN_SECONDS",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "INSTANCE_ID",
    "PORT",
}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def app_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Environment of the service container: ConfigMap keys (envFrom) plus explicit env."""
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    server = container(spec, "server")
    env: dict[str, Any] = {}
    for source in server.get("envFrom", []):
        cm = one(docs, "ConfigMap", source["configMapRef"]["name"])
        env.update(cm["data"])
    for item in server.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


# ---- every value set renders, parses and validates strictly ----


def test_value_sets_are_discovered() -> None:
    assert {"default", "external-redis", "traefik", "gateway", "full"} <= set(VALUE_SETS)


def test_every_object_validates_strictly(objects: list[dict[str, Any]]) -> None:
    assert objects, "nothing rendered"
    validated = 0
    for doc in objects:
        versions = validate_strict(doc)
        if versions:
            validated += 1
        else:
            assert doc["apiVersion"].rpartition("/")[0] in CRD_GROUPS
    assert validated >= 6


def test_strict_validation_catches_a_misspelled_field() -> None:
    """Negative control: the validator really is strict."""
    deployment = one(objects_for("default"), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(AssertionError, match="livenessProbes"):
        validate_strict(deployment)


def test_removed_core_api_is_not_skipped_as_a_crd() -> None:
    legacy = {
        "apiVersion": "policy/v1beta1",
        "kind": "PodSecurityPolicy",
        "metadata": {"name": "x"},
    }
    kv = pytest.importorskip("kubernetes_validate")
    with pytest.raises(kv.SchemaNotFoundError):
        validate_strict(legacy)


def test_names_are_unique_per_kind(objects: list[dict[str, Any]]) -> None:
    keys = [(d["kind"], d["metadata"]["name"]) for d in objects]
    assert len(keys) == len(set(keys))


def test_standard_labels_everywhere(objects: list[dict[str, Any]]) -> None:
    for doc in objects:
        labels = doc["metadata"].get("labels", {})
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "helm.sh/chart"):
            assert key in labels, f"{doc['kind']}/{doc['metadata']['name']} lacks {key}"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_defaults_render_the_documented_objects() -> None:
    docs = objects_for("default")
    kinds = {d["kind"] for d in docs}
    assert {
        "Deployment",
        "Service",
        "Ingress",
        "StatefulSet",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceAccount",
        "Secret",
        "NetworkPolicy",
        "ConfigMap",
        "Pod",
    } <= kinds
    assert not find(docs, "ServiceMonitor") and not find(docs, "PrometheusRule")
    assert not find(docs, "HTTPRoute")
    redis = one(docs, "StatefulSet")
    assert redis["spec"]["volumeClaimTemplates"], "Redis needs a PVC by default"
    assert one(docs, "Service", REDIS)["spec"]["clusterIP"] == "None"
    assert find(docs, "Secret", f"{FULLNAME}-jwt") and find(docs, "Secret", REDIS)


def test_full_value_set_renders_every_optional_object() -> None:
    docs = objects_for("full")
    for kind in ("ServiceMonitor", "PrometheusRule", "HTTPRoute", "Ingress"):
        one(docs, kind, FULLNAME)
    hpa = one(docs, "HorizontalPodAutoscaler")
    pods_metric = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods_metric[0]["pods"]["metric"]["name"] == "socketio_connected_clients"
    assert pods_metric[0]["pods"]["target"] == {"type": "AverageValue", "averageValue": "1500"}


# ---- pod security, probes, lifecycle ----


def test_pod_security(objects: list[dict[str, Any]]) -> None:
    specs = list(pod_specs(objects))
    assert specs
    for where, spec in specs:
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, where
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is False, where
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, where
            assert isinstance(sc["runAsUser"], int) and sc["runAsUser"] > 0, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in sc["capabilities"], where
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
            assert c["resources"]["requests"] and c["resources"]["limits"], where
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), where
            assert "memory" in c["resources"]["limits"], where
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp, f"{where}: read-only root needs a writable /tmp"
            volume = next(v for v in spec["volumes"] if v["name"] == tmp[0]["name"])
            assert "emptyDir" in volume
            assert ":" in c["image"] or "@" in c["image"]
            assert not c["image"].endswith(":latest"), where


def test_service_pods(objects: list[dict[str, Any]], value_set: str) -> None:
    deployment = one(objects, "Deployment")
    assert deployment["metadata"]["name"] == FULLNAME
    template = deployment["spec"]["template"]
    spec = template["spec"]
    server = container(spec, "server")
    assert server["securityContext"]["runAsUser"] == 10001
    assert server["ports"] == [{"name": "http", "containerPort": 3000, "protocol": "TCP"}]
    assert server["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert server["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    if value_set == "full":
        assert server["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    else:
        assert "startupProbe" not in server
    pre_stop = server["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    sleep = int(pre_stop[1])
    assert sleep > 0
    cm = one(objects, "ConfigMap", FULLNAME)
    drain = float(cm["data"]["SHUTDOWN_DRAIN_SECONDS"])
    assert spec["terminationGracePeriodSeconds"] > drain + sleep + 5
    assert re.fullmatch(r"[0-9a-f]{64}", template["metadata"]["annotations"]["checksum/config"])
    hostname_spread = [
        t for t in spec["topologySpreadConstraints"] if t["topologyKey"] == "kubernetes.io/hostname"
    ]
    assert hostname_spread and hostname_spread[0]["labelSelector"]["matchLabels"] == APP_SELECTOR
    if value_set == "full":
        assert server["image"].startswith("ghcr.io/example/socketio-service@sha256:")
    else:
        assert server["image"] == "ghcr.io/example/socketio-service:0.1.0"
    assert "args" not in server and "command" not in server, "the image's entrypoint runs"


def test_checksum_follows_the_config() -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = one(parse(render(values)), "Deployment")
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"config": {"logLevel": "debug"}})


def test_grace_period_must_outlive_the_drain() -> None:
    hp = helm_python()
    docs = parse(render({"config": {"shutdownDrainSeconds": 50}, "preStopSleepSeconds": 5}))
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > 50 + 5 + 5
    with pytest.raises(hp.HelmRenderError, match="terminationGracePeriodSeconds"):
        render({"config": {"shutdownDrainSeconds": 50}, "terminationGracePeriodSeconds": 55})


def test_env_wiring(objects: list[dict[str, Any]], value_set: str) -> None:
    env = app_env(objects)
    assert REQUIRED_ENV <= set(env), REQUIRED_ENV - set(env)
    assert env["PORT"] == "3000"
    assert env["LOG_FORMAT"] == "json"
    assert env["INSTANCE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "secretKeyRef" in env["JWT_SECRET"]
    if value_set == "external-redis":
        assert env["REDIS_URL"] == {"secretKeyRef": {"name": "chat-redis-url", "key": "url"}}
        assert env["JWT_SECRET"] == {"secretKeyRef": {"name": "chat-jwt", "key": "hs256-key"}}
        assert "REDIS_PASSWORD" not in env
        return
    # The password is its own variable: nothing to URL-encode, nothing spliced in.
    assert env["REDIS_PASSWORD"]["secretKeyRef"]["name"] == REDIS
    if value_set == "replication":
        assert env["REDIS_URL"].startswith(f"redis+sentinel://{REDIS}-0.{REDIS}:26379,")
        assert env["REDIS_WAIT_REPLICAS"] == "1"
    else:
        assert env["REDIS_URL"] == f"redis://{REDIS}:6379/0"


# Variables of service/config.py VARIABLES that deliberately have no config.* key, and why.
SET_ELSEWHERE = {
    "HOST": "the image's default (all interfaces) is what a pod needs",
    "PORT": "containerPort, shared with the probes and the Service",
    "INSTANCE_ID": "the pod name, through the downward API",
    "REDIS_URL": "derived from redis.*, or externalRedis.existingSecret",
    "REDIS_PASSWORD": "a Secret: redis.auth.existingSecret or the generated one",
    "JWT_SECRET": "a Secret: jwt.existingSecret or the generated one",
    "JWT_PUBLIC_KEY": "a Secret mounted as a file: jwt.publicKeySecret",
    "ADMIN_PASSWORD": "a Secret: admin.existingSecret",
    "DEMO_CLIENT_JS_DIR": "the demo page exists only in --dev, never in a cluster",
}


def service_variables() -> dict[str, Any]:
    try:
        from service.config import VARIABLES
    except ImportError as exc:  # the package is written alongside the chart
        import os

        if os.environ.get("CI"):
            raise
        pytest.skip(f"service.config not importable: {exc}")
    return VARIABLES


def env_name(key: str) -> str:
    """config.maxConnections -> MAX_CONNECTIONS (the chart's rule, sprig's snakecase)."""
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).upper()


def config_keys() -> list[str]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    return [k for k in values["config"] if k != "extraEnv"]


def test_every_service_variable_has_a_config_key_and_back() -> None:
    """One config.* key per environment variable of the service, named after it; the
    variables the chart sets another way are listed in SET_ELSEWHERE with the reason."""
    variables = service_variables()
    keys = {env_name(k): k for k in config_keys()}
    assert not set(keys) - set(variables), "config keys the service does not read"
    assert not set(keys) & set(SET_ELSEWHERE)
    assert not set(SET_ELSEWHERE) - set(variables), "stale exceptions"
    assert set(variables) - set(SET_ELSEWHERE) - set(keys) == set(), "variables without a key"
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["properties"]["config"]["properties"]) == {*keys.values(), "extraEnv"}


def test_env_names_are_known_to_the_service(objects: list[dict[str, Any]]) -> None:
    """Every variable the chart sets is one the service reads (typos would be ignored), and
    every plain value parses with the service's own parser."""
    variables = service_variables()
    env = app_env(objects)
    unknown = set(env) - set(variables) - {"PYTHONFAULTHANDLER"}  # full: config.extraEnv
    assert not unknown
    for name, value in env.items():
        if isinstance(value, str) and name in variables and name not in SET_ELSEWHERE:
            variables[name][1](value)  # raises ValueError like start-up would


# Values unlike every default, each of a type the schema allows.
NON_DEFAULT_CONFIG = {
    "jwtAlgorithms": "HS256,ES256",
    "jwtAudience": "chat",
    "jwtIssuer": "https://auth.example.com",
    "jwtLeewaySeconds": 2.5,
    "corsAllowedOrigins": "https://chat.example.com",
    "rateLimitEvents": 250,
    "rateLimitWindowSeconds": 30,
    "historySize": 500,
    "historyTtlSeconds": 2592000,
    "maxMessageBytes": 16384,
    "maxConnections": 12000,
    "maxRoomsPerSocket": 50,
    "maxSocketsPerUser": 5,
    "handshakeRatePerAddress": 5.5,
    "handshakeBurstPerAddress": 30,
    "trustedProxies": "10.0.0.0/8,100.64.0.0/10",
    "sendBufferBytes": 2097152,
    "connectTimeoutSeconds": 5,
    "httpHeaderTimeoutSeconds": 15,
    "pingInterval": 20,
    "pingTimeout": 15,
    "shutdownDelaySeconds": 4,
    "shutdownDrainSeconds": 30,
    "redisTimeoutSeconds": 1.5,
    "redisPrefix": "chat2",
    "redisCluster": True,
    "presenceTtlSeconds": 60,
    "pubsubHeartbeatSeconds": 2,
    "redisOutageBufferSeconds": 8,
    "redisWaitReplicas": 2,
    "logLevel": "warning",
    "logFormat": "text",
    "websocketCompression": True,
    "websocketDriver": "stock",
    "adminUi": True,
    "adminUsername": "ops",
    "adminAllowedNetworks": "127.0.0.1/32",
    "roomAccess": "claims",
    "roomAuthUrl": "http://rooms-auth.chat.svc:8080/can-join",
    "roomAuthTimeoutSeconds": 0.5,
    "roomAuthCacheSeconds": 0,
    "connectionStateRecoverySeconds": 600,
}


def test_every_config_key_reaches_the_service_as_its_variable() -> None:
    """Each config.* value lands in the pod's environment under its variable, and the
    service parses it back to the value given (2592000 must not arrive as 2.592e+06)."""
    variables = service_variables()
    assert set(NON_DEFAULT_CONFIG) == set(config_keys())
    values = {
        "config": NON_DEFAULT_CONFIG,
        "redis": {"enabled": False},
        "externalRedis": {"existingSecret": "chat-redis-url"},
        "jwt": {"publicKeySecret": "chat-jwt-public-key"},
        "admin": {"existingSecret": "chat-admin"},
    }
    env = app_env(parse(render(values)))
    for key, given in NON_DEFAULT_CONFIG.items():
        name = env_name(key)
        assert name in env, f"config.{key} does not set {name}"
        _, parser = variables[name]
        parsed = parser(env[name])
        if isinstance(parsed, tuple):
            given = tuple(given.split(","))
        assert parsed == given, (key, env[name])


def test_derived_redis_settings_give_way_to_config() -> None:
    """With replication the chart implies REDIS_WAIT_REPLICAS=1 and an outage buffer that
    outlasts a failover; config.* values win, and standalone sets neither."""
    env = app_env(parse(render()))
    assert "REDIS_WAIT_REPLICAS" not in env and "REDIS_OUTAGE_BUFFER_SECONDS" not in env
    replication = {"redis": {"architecture": "replication"}}
    env = app_env(parse(render(replication)))
    assert (env["REDIS_WAIT_REPLICAS"], env["REDIS_OUTAGE_BUFFER_SECONDS"]) == ("1", "10")
    pinned = {**replication, "config": {"redisWaitReplicas": 2, "redisOutageBufferSeconds": 20}}
    env = app_env(parse(render(pinned)))
    assert (env["REDIS_WAIT_REPLICAS"], env["REDIS_OUTAGE_BUFFER_SECONDS"]) == ("2", "20")


@pytest.mark.parametrize("name", ["LOG_LEVEL", "REDIS_WAIT_REPLICAS", "JWT_SECRET", "REDIS_URL"])
def test_extra_env_cannot_shadow_what_the_chart_sets(name: str) -> None:
    """A duplicate would be a duplicate ConfigMap key, or silently lose to the explicit env."""
    hp = helm_python()
    with pytest.raises(hp.HelmRenderError, match=rf"config\.extraEnv\.{name}"):
        render({"config": {"extraEnv": {name: "x"}}})
    env = app_env(parse(render({"config": {"extraEnv": {"PYTHONFAULTHANDLER": "1"}}})))
    assert env["PYTHONFAULTHANDLER"] == "1"


def test_redis_cluster_needs_an_external_redis() -> None:
    hp = helm_python()
    with pytest.raises(hp.HelmRenderError, match=r"config\.redisCluster"):
        render({"config": {"redisCluster": True}})


# ---- admin UI: off by default, never reachable from the networks clients come from ----


def test_admin_ui_is_off_and_loopback_only_by_default() -> None:
    env = app_env(objects_for("default"))
    assert env["ADMIN_UI"] == "false" and "ADMIN_PASSWORD" not in env
    assert env["ADMIN_ALLOWED_NETWORKS"] == "127.0.0.0/8,::1/128"


def test_admin_ui_password_comes_from_a_secret() -> None:
    hp = helm_python()
    with pytest.raises(hp.HelmRenderError, match=r"admin\.existingSecret"):
        render({"config": {"adminUi": True}})
    notes = next(t for p, t in render(values_for("full")).items() if p.endswith("NOTES.txt"))
    assert "port-forward deploy/chat-socketio-service 3000:3000" in notes
    assert "admin.socket.io" not in next(
        t for p, t in render().items() if p.endswith("NOTES.txt")
    ), "the admin UI is off by default"
    docs = objects_for("full")
    env = app_env(docs)
    assert env["ADMIN_UI"] == "true"
    assert env["ADMIN_PASSWORD"] == {
        "secretKeyRef": {"name": "chat-admin", "key": "admin-password"}
    }
    assert env["ADMIN_ALLOWED_NETWORKS"] == "127.0.0.0/8,::1/128"
    # The /admin namespace rides on /socket.io: the edge publishes nothing else.
    for ingress in find(docs, "Ingress"):
        paths = [p["path"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
        assert paths == ["/socket.io"]
    for route in find(docs, "HTTPRoute"):
        matches = [m["path"]["value"] for r in route["spec"]["rules"] for m in r["matches"]]
        assert matches == ["/socket.io"]


@pytest.mark.parametrize("networks", ["0.0.0.0/0", "127.0.0.0/8,::/0", "everyone"])
def test_schema_refuses_an_admin_ui_open_to_the_world(networks: str) -> None:
    hp = helm_python()
    with pytest.raises(hp.HelmValuesError):
        render({"config": {"adminAllowedNetworks": networks}})


def test_secret_references_exist(objects: list[dict[str, Any]], value_set: str) -> None:
    """Every secretKeyRef points at a Secret the chart renders with that key, or at an
    existing Secret the values name explicitly."""
    values = (
        yaml.safe_load((CHART / "ci" / f"{value_set}-values.yaml").read_text())
        if (value_set != "default")
        else {}
    )
    external = {
        (values.get("externalRedis") or {}).get("existingSecret"),
        (values.get("jwt") or {}).get("existingSecret"),
        (values.get("jwt") or {}).get("publicKeySecret"),
        (values.get("admin") or {}).get("existingSecret"),
    } - {None, ""}
    secrets = {s["metadata"]["name"]: s for s in find(objects, "Secret")}
    refs = []
    for _, spec in pod_specs(objects):
        for c in spec["containers"]:
            refs += [
                e["valueFrom"]["secretKeyRef"]
                for e in c.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            ]
        refs += [
            {"name": v["secret"]["secretName"], "key": i["key"]}
            for v in spec.get("volumes", [])
            if "secret" in v
            for i in v["secret"].get("items", [])
        ]
    assert refs
    for ref in refs:
        if ref["name"] in external:
            continue
        assert ref["name"] in secrets, f"Secret {ref['name']} is not rendered"
        assert ref["key"] in secrets[ref["name"]]["data"], f"{ref['name']} lacks {ref['key']}"
    for secret in secrets.values():
        for value in secret["data"].values():
            assert len(value) >= 40, "generated secrets must be long"


def test_generated_secrets_are_strong_and_random() -> None:
    first = {s["metadata"]["name"]: s["data"] for s in find(parse(render()), "Secret")}
    second = {s["metadata"]["name"]: s["data"] for s in find(parse(render()), "Secret")}
    import base64

    jwt_secret = base64.b64decode(first[f"{FULLNAME}-jwt"]["jwt-secret"])
    assert len(jwt_secret) >= 32  # the service refuses shorter HMAC keys
    assert first[f"{FULLNAME}-jwt"] != second[f"{FULLNAME}-jwt"], "randAlphaNum expected"
    assert first[REDIS] != second[REDIS]


# ---- wiring between objects ----


def test_service_selects_the_deployment_pods(objects: list[dict[str, Any]]) -> None:
    deployment = one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == APP_SELECTOR
    assert matches(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    service = one(objects, "Service", FULLNAME)
    assert service["spec"]["selector"] == APP_SELECTOR
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    for sts in find(objects, "StatefulSet"):
        redis_labels = sts["spec"]["template"]["metadata"]["labels"]
        assert not matches(service["spec"]["selector"], redis_labels), "Service must skip Redis"
        redis_service = one(objects, "Service", sts["spec"]["serviceName"])
        assert matches(redis_service["spec"]["selector"], redis_labels)
        assert matches(sts["spec"]["selector"]["matchLabels"], redis_labels)
        assert not matches(redis_service["spec"]["selector"], pod_labels)


def test_hpa_targets_the_deployment(objects: list[dict[str, Any]], value_set: str) -> None:
    deployment = one(objects, "Deployment")
    hpas = find(objects, "HorizontalPodAutoscaler")
    if value_set == "external-redis":
        assert not hpas
        assert deployment["spec"]["replicas"] == 3
        return
    if value_set == "keda":  # KEDA owns the HPA (tests/k8s/test_chart_edge.py)
        assert not hpas and "replicas" not in deployment["spec"]
        return
    hpa = hpas[0]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert cpu[0]["resource"]["name"] == "cpu"
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert hpa["spec"]["minReplicas"] >= 2


def test_pdb_selects_the_pods(objects: list[dict[str, Any]]) -> None:
    pdb = one(objects, "PodDisruptionBudget", FULLNAME)
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert matches(pdb["spec"]["selector"]["matchLabels"], labels)


def test_redis_network_policy(objects: list[dict[str, Any]], value_set: str) -> None:
    policies = find(objects, "NetworkPolicy")
    if value_set == "external-redis":
        assert not policies
        return
    policy = one(objects, "NetworkPolicy", REDIS)
    redis_labels = one(objects, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    app_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert matches(policy["spec"]["podSelector"]["matchLabels"], redis_labels)
    assert not matches(policy["spec"]["podSelector"]["matchLabels"], app_labels)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rule, *others = policy["spec"]["ingress"]
    values = values_for(value_set)
    if (values.get("redis") or {}).get("architecture") == "replication":
        # Redis pods replicate and run Sentinels among themselves.
        peers = others.pop(0)
        assert peers["from"] == [{"podSelector": {"matchLabels": redis_labels}}]
    if ((values.get("metrics") or {}).get("serviceMonitor") or {}).get("enabled"):
        # Monitoring on: the exporter port, and only that, is open to Prometheus.
        assert others.pop(0) == {"ports": [{"port": "metrics", "protocol": "TCP"}]}
    assert not others
    [peer] = rule["from"]
    assert set(peer) == {"podSelector"}, "no namespace or IP peers"
    assert matches(peer["podSelector"]["matchLabels"], app_labels)
    assert not matches(peer["podSelector"]["matchLabels"], redis_labels)
    sentinel = [{"port": "sentinel", "protocol": "TCP"}] if value_set == "replication" else []
    assert rule["ports"] == [{"port": "redis", "protocol": "TCP"}, *sentinel]


def test_redis_statefulset(objects: list[dict[str, Any]], value_set: str) -> None:
    if value_set == "external-redis":
        assert not find(objects, "StatefulSet")
        assert not find(objects, "ConfigMap", REDIS) and not find(objects, "Secret", REDIS)
        return
    sts = one(objects, "StatefulSet")
    spec = sts["spec"]["template"]["spec"]
    redis = container(spec, "redis")
    assert redis["livenessProbe"] and redis["readinessProbe"]
    assert redis["readinessProbe"]["exec"]["command"][-2:] == ["ready", "redis"]
    assert not redis["image"].endswith(":latest") and ":" in redis["image"]
    conf = one(objects, "ConfigMap", REDIS)["data"]["redis.conf"]
    assert "appendonly yes" in conf and "appendfsync always" in conf, "acks survive a crash"
    assert "requirepass" not in conf, "the password must not sit in a ConfigMap"
    assert "PASSWORD" not in " ".join(redis["command"]), "the password is in a file, not in ps"
    [secret] = [v["secret"] for v in spec["volumes"] if "secret" in v]
    assert secret["secretName"] == REDIS
    mounts = {m["name"]: m["mountPath"] for m in redis["volumeMounts"]}
    assert mounts["data"] == "/data"
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    if value_set == "full":
        assert claim["spec"]["storageClassName"] == "fast-ssd"
        assert "maxmemory 200mb" in conf
    else:
        assert "maxmemory 201326592" in conf  # 75 % of the 256Mi limit


# ---- ingress, sticky sessions, routes ----


def test_nginx_ingress_sticky_and_socketio_only(value_set: str, objects: list[dict]) -> None:
    ingresses = find(objects, "Ingress")
    if value_set == "gateway":
        assert not ingresses
        return
    [ingress] = ingresses
    paths = [p for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    assert [p["path"] for p in paths] == ["/socket.io"], "only /socket.io is public"
    assert all(p["pathType"] == "Prefix" for p in paths)
    assert all(p["backend"]["service"]["name"] == FULLNAME for p in paths)
    assert "/metrics" not in json.dumps(ingress)
    annotations = ingress["metadata"].get("annotations", {})
    if value_set in {"traefik", "haproxy"}:
        assert ingress["spec"]["ingressClassName"] == value_set
        assert not any(k.startswith("nginx.") for k in annotations)
        return
    assert ingress["spec"]["ingressClassName"] == "nginx"
    nginx = "nginx.ingress.kubernetes.io/"
    assert annotations[nginx + "affinity"] == "cookie"
    assert annotations[nginx + "affinity-mode"] == "persistent"
    assert annotations[nginx + "session-cookie-name"] == "SIOSTICKY"
    assert annotations[nginx + "session-cookie-path"] == "/socket.io"
    assert int(annotations[nginx + "proxy-read-timeout"]) >= 3600
    assert int(annotations[nginx + "proxy-send-timeout"]) >= 3600
    if value_set == "full":
        assert annotations["cert-manager.io/cluster-issuer"] == "letsencrypt"
        assert annotations[nginx + "session-cookie-samesite"] == "None"
        assert annotations[nginx + "session-cookie-secure"] == "true"
        assert ingress["spec"]["tls"] == [
            {"hosts": ["chat.example.com"], "secretName": "chat-example-com-tls"}
        ]


def test_traefik_sticky_cookie_on_the_service() -> None:
    docs = objects_for("traefik")
    annotations = one(docs, "Service", FULLNAME)["metadata"]["annotations"]
    prefix = "traefik.ingress.kubernetes.io/service.sticky.cookie"
    assert annotations[prefix] == "true"
    assert annotations[prefix + ".name"] == "chat_sticky"
    assert annotations[prefix + ".secure"] == "true"
    assert annotations[prefix + ".samesite"] == "lax"
    assert annotations[prefix + ".httponly"] == "true"
    assert annotations[prefix + ".maxage"] == "86400"
    default_service = one(objects_for("default"), "Service", FULLNAME)
    assert not default_service["metadata"].get("annotations")


def test_gateway_httproute() -> None:
    docs = objects_for("gateway")
    route = one(docs, "HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [
        {"name": "public", "namespace": "gateway-system", "sectionName": "https"}
    ]
    assert route["spec"]["hostnames"] == ["chat.example.com"]
    [rule] = route["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/socket.io"}}]
    assert rule["backendRefs"] == [{"name": FULLNAME, "port": 3000}]
    assert rule["sessionPersistence"] == {
        "sessionName": "SIOSTICKY",
        "type": "Cookie",
        "absoluteTimeout": "48h",
        "cookieConfig": {"lifetimeType": "Permanent"},
    }
    assert rule["timeouts"] == {"request": "1h"}


# ---- monitoring objects ----


def test_service_monitor_scrapes_the_service() -> None:
    docs = objects_for("full")
    monitor = one(docs, "ServiceMonitor", FULLNAME)
    service = one(docs, "Service", FULLNAME)
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert not matches(
        monitor["spec"]["selector"]["matchLabels"],
        one(docs, "Service", REDIS)["metadata"]["labels"],
    )
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboard_configmap() -> None:
    docs = objects_for("full")
    cm = one(docs, "ConfigMap", f"{FULLNAME}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Realtime"}
    dashboard = json.loads(cm["data"][f"{FULLNAME}.json"])
    assert dashboard["uid"] == "realtime-chat"
    forced = parse(render({"dashboard": {"labels": {"grafana_dashboard": "0", "team": "chat"}}}))
    labels = one(forced, "ConfigMap", f"{FULLNAME}-dashboard")["metadata"]["labels"]
    assert labels["grafana_dashboard"] == "1" and labels["team"] == "chat"


# ---- helm test hook ----


def test_helm_test_pod_round_trips_a_message(objects: list[dict[str, Any]]) -> None:
    pod = one(objects, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    [c] = pod["spec"]["containers"]
    deployment = one(objects, "Deployment")
    assert c["image"] == container(deployment["spec"]["template"]["spec"], "server")["image"]
    assert c["command"] == ["python", "-c"]
    script = c["args"][0]
    compile(script, "helm-test", "exec")  # valid Python
    for needle in (
        "socketio.AsyncClient",
        "jwt.encode",
        '"join:room"',
        '"message:send"',
        '"message:received"',
        "sys.exit",
    ):
        assert needle in script, needle
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["TARGET_URL"] == f"http://{FULLNAME}:3000"
    assert pod["spec"]["restartPolicy"] == "Never"
    jwt_volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "jwt")
    expected = one(objects, "Deployment")
    ref = next(
        e["valueFrom"]["secretKeyRef"]
        for e in container(expected["spec"]["template"]["spec"], "server")["env"]
        if e["name"] == "JWT_SECRET"
    )
    assert jwt_volume["secret"]["secretName"] == ref["name"]
    assert jwt_volume["secret"]["items"] == [{"key": ref["key"], "path": "jwt-secret"}]


def test_helm_test_skipped_without_an_hmac_algorithm() -> None:
    docs = parse(render({"config": {"jwtAlgorithms": "RS256"}, "jwt": {"publicKeySecret": "pub"}}))
    assert not find(docs, "Pod")


# ---- values.schema.json ----


def test_schema_forbids_unknown_keys_everywhere() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects = {"affinity"}  # Kubernetes pass-through structure

    def walk(node: dict[str, Any], path: str) -> None:
        if node.get("type") == "object" and path not in open_objects:
            assert "additionalProperties" in node, f"{path or 'root'} accepts unknown keys"
            if node["additionalProperties"] is not False:
                assert isinstance(node["additionalProperties"], dict), path
        for key, child in node.get("properties", {}).items():
            walk(child, f"{path}.{key}".lstrip("."))

    walk(schema, "")


@pytest.mark.parametrize(
    "values",
    [
        {"replicas": 3},
        {"image": {"tagg": "1.0"}},
        {"config": {"logLevel": "verbose"}},
        {"config": {"maxConnections": "many"}},
        {"autoscaling": {"connections": {"enable": True}}},
        {"ingress": {"proxyTimeoutSeconds": 60}},
        {"ingress": {"controller": "envoy"}},
        {"image": {"tag": "latest"}},
        {"stickySessions": {"enabled": "yes"}},
        {"redis": {"persistence": {"size": "lots"}}},
        {"config": {"corsAllowedOrigins": "chat.example.com"}},
        {"config": {"jwtAlgorithms": "none"}},
        {"config": {"websocketDriver": "turbo"}},
        {"config": {"roomAccess": "closed"}},
        {"config": {"roomAuthUrl": "ftp://auth.example.com"}},
        {"config": {"redisWaitReplicas": 17}},
        {"config": {"shutdownDelaySeconds": 10}},
        {"config": {"redisPrefix": "has space"}},
        {"config": {"connectionStateRecoverySeconds": -1}},
        {"admin": {"password": "in-values"}},
    ],
    ids=lambda v: json.dumps(v, sort_keys=True),
)
def test_schema_rejects_bad_values(values: dict[str, Any]) -> None:
    hp = helm_python()
    with pytest.raises(hp.HelmValuesError):
        render(values)


RESOURCE_MAPS = {
    "resources",
    "redis.resources",
    "redis.sentinel.resources",
    "redis.exporter.resources",
}


def test_every_value_is_documented_by_a_comment_starting_with_its_name() -> None:
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    comments = set(re.findall(r"^\s*# ([A-Za-z0-9.]+) ", text, re.MULTILINE))

    def leaves(node: Any, path: str) -> list[str]:
        if isinstance(node, dict) and node and path not in RESOURCE_MAPS:
            return [leaf for k, v in node.items() for leaf in leaves(v, f"{path}.{k}".lstrip("."))]
        return [path]

    undocumented = [p for p in leaves(values, "") if p not in comments]
    assert not undocumented
    for key in re.findall(r"^\s*([A-Za-z0-9_-]+):", text, re.MULTILINE):
        assert "_" not in key and "-" not in key, f"{key} is not camelCase"


# ---- helm lint ----


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint(value_set: str) -> None:
    hp = helm_python()
    values = (
        {}
        if value_set == "default"
        else yaml.safe_load((CHART / "ci" / f"{value_set}-values.yaml").read_text())
    )
    report = hp.lint(CHART, values, strict=True, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    infos = {m["error"] for m in report["messages"] if m["severity"] < 2}
    assert not problems and not report["errors"], problems or report["errors"]
    assert infos <= {"icon is recommended"}, infos


def test_dashboard_and_rules_are_symlinks_into_k8s() -> None:
    for link in ("files/dashboards/socketio-service.json", "files/prometheusrule.yaml"):
        path = CHART / link
        assert path.is_symlink(), f"{link} must be a symlink to its single source"
        assert "k8s" in path.resolve().parts
