"""Alerts (promtool) and the Grafana dashboard (@grafana/schema via tsc): single sources,
only real metrics."""

from __future__ import annotations

import json
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_bundle import CHART, K8S, missing, objects_for, one, run, tool

pytestmark = pytest.mark.k8s

RULES = K8S / "components" / "monitoring" / "prometheusrule.yaml"
DASHBOARD = K8S / "base" / "dashboards" / "socketio-service.json"
RULE_TESTS = Path(__file__).parent / "alerts" / "socketio-service.rules.test.yaml"
GRAFANA = Path(__file__).parent / "grafana"

# docs/protocol.md#metrics (the service's metrics) and the default process collector.
COUNTERS = {
    "socketio_connections_total",
    "socketio_connect_errors_total",
    "socketio_disconnections_total",
    "socketio_events_received_total",
    "socketio_messages_sent_total",
    "socketio_event_errors_total",
    "socketio_messages_stored_total",
    "socketio_handshakes_refused_total",
    "socketio_clients_evicted_total",
    "socketio_http_header_timeouts_total",
    "socketio_connection_recoveries_total",
}
GAUGES = {
    "socketio_connected_clients",
    "socketio_rooms",
    "socketio_redis_up",
    "socketio_draining",
    "socketio_build_info",
    "socketio_pubsub_deaf",
    "socketio_max_connections",
    "socketio_engineio_sessions",
    "socketio_at_capacity",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
}
HISTOGRAMS = {
    "socketio_event_duration_seconds",
    "socketio_delivery_latency_seconds",
    "socketio_redis_command_duration_seconds",
    "socketio_event_loop_lag_seconds",
    "socketio_room_auth_duration_seconds",
}
EXPORTED = COUNTERS | GAUGES | {f"{h}_{s}" for h in HISTOGRAMS for s in ("bucket", "sum", "count")}
# redis_exporter (oliver006/redis_exporter, the chart's pinned sidecar): the series the Redis
# alerts use, as named in its exporter/exporter.go.
REDIS_EXPORTER = {
    "redis_memory_used_bytes",
    "redis_memory_max_bytes",
    "redis_master_link_up",
    "redis_instance_info",
}
REQUIRED_ALERTS = {
    "SocketioRedisDown": "socketio_redis_up",
    "SocketioPubsubDeaf": "socketio_pubsub_deaf",
    "SocketioDeliveryLatencyHigh": "socketio_delivery_latency_seconds_bucket",
    "SocketioAuthFailureSurge": "socketio_connect_errors_total",
    "SocketioRateLimitSurge": "socketio_event_errors_total",
    "SocketioPodAtConnectionCapacity": "socketio_max_connections",
    "SocketioPodAtCapacity": "socketio_at_capacity",
    "SocketioRoomAuthHookFailing": "socketio_room_auth_duration_seconds_count",
    "SocketioRedisMemoryNearLimit": "redis_memory_max_bytes",
    "SocketioRedisReplicaLinkDown": "redis_master_link_up",
    "SocketioRedisFailover": "redis_instance_info",
}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and",
    "or", "unless", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (label matchers, groupings, ranges,
    strings and function calls removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\w+", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)\s*(\()?", expr):
        if match.group(2) or match.group(1).lower() in PROMQL_WORDS:
            continue
        names.add(match.group(1))
    return names


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, pod) (rate(a_bucket{x="y", z=~"$pod"}[5m])))'
        " / on (pod) group_left b > 0 or vector(0)"
    )
    assert metric_names(expr) == {"a_bucket", "b"}


def rules_spec() -> dict[str, Any]:
    return yaml.safe_load(RULES.read_text())["spec"]


def all_rules() -> list[dict[str, Any]]:
    return [rule for group in rules_spec()["groups"] for rule in group["rules"]]


def test_exported_metrics_match_the_service() -> None:
    """Our list of exported names is the service's (if the package is importable)."""
    try:
        from prometheus_client import CollectorRegistry

        from service.metrics import Metrics
    except ImportError as exc:
        import os

        if os.environ.get("CI"):
            raise
        pytest.skip(f"service.metrics not importable: {exc}")
    registry = CollectorRegistry()
    Metrics(registry)
    exported = set()
    for family in registry.collect():
        if family.type == "counter":
            exported.add(f"{family.name}_total")
        elif family.type == "histogram":
            exported |= {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
        else:
            exported.add(family.name)
    assert EXPORTED - exported == set()
    assert {n for n in exported if n.startswith("socketio_")} <= EXPORTED


def test_rules_are_the_single_source_for_helm() -> None:
    rendered = one(objects_for("full"), "PrometheusRule")
    assert rendered["spec"] == rules_spec()
    assert rendered["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert (CHART / "files" / "prometheusrule.yaml").resolve() == RULES.resolve()


def test_required_alerts_and_only_real_metrics() -> None:
    rules = {r["alert"]: r for r in all_rules()}
    for alert, metric in REQUIRED_ALERTS.items():
        assert alert in rules, alert
        assert metric in metric_names(rules[alert]["expr"]), alert
        assert rules[alert]["labels"]["severity"] in {"warning", "critical"}
        assert rules[alert]["annotations"]["summary"]
    assert 'scope="remote"' in rules["SocketioDeliveryLatencyHigh"]["expr"]
    assert 'code="unauthorized"' in rules["SocketioAuthFailureSurge"]["expr"]
    assert 'code="rate_limited"' in rules["SocketioRateLimitSurge"]["expr"]
    assert 'result="error"' in rules["SocketioRoomAuthHookFailing"]["expr"]
    for rule in rules.values():
        assert metric_names(rule["expr"]) <= EXPORTED | REDIS_EXPORTER, rule["alert"]


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "socketio-service.rules.yaml"
    path.write_text(yaml.safe_dump(rules_spec()))
    return path


def test_promtool_check_rules(rules_file: Path) -> None:
    promtool = tool("promtool")
    result = run([promtool, "check", "rules", str(rules_file)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(all_rules())} rules found" in result.stdout


def test_promtool_check_rules_rejects_a_broken_rule(tmp_path: Path) -> None:
    """Negative control for the check above."""
    promtool = tool("promtool")
    spec = rules_spec()
    spec["groups"][0]["rules"][0]["expr"] = "sum by (pod (socketio_redis_up)"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec))
    assert run([promtool, "check", "rules", str(bad)]).returncode != 0


def test_promtool_unit_tests(rules_file: Path, tmp_path: Path) -> None:
    promtool = tool("promtool")
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tests["rule_files"] = [str(rules_file)]
    tested = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"]}
    assert set(REQUIRED_ALERTS) <= tested
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump(tests))
    result = run([promtool, "test", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def test_dashboard_is_the_single_source_for_helm_and_kustomize() -> None:
    helm = one(objects_for("default"), "ConfigMap", "chat-socketio-service-dashboard")
    rendered = json.loads(helm["data"]["chat-socketio-service.json"])
    # Helm gives each release its own uid and title; everything else is the source file.
    source = dashboard()
    assert rendered.pop("uid") == "realtime-chat" and source.pop("uid")
    assert rendered.pop("title") == f"{source.pop('title')} (realtime/chat)"
    assert rendered == source
    link = CHART / "files" / "dashboards" / "socketio-service.json"
    assert link.resolve() == DASHBOARD.resolve()


def test_dashboard_queries_use_only_exported_metrics() -> None:
    exprs = [t["expr"] for p in panels(dashboard()) for t in p.get("targets", [])]
    assert len(exprs) >= 20
    used = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert names <= EXPORTED, (expr, names - EXPORTED)
        used |= names
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            inner = re.fullmatch(r"label_values\((.*), *\w+\)", query)
            assert inner, query
            assert metric_names(inner.group(1)) <= EXPORTED
    # Every metric of the service has a panel (a new metric without one fails here).
    for family in sorted(COUNTERS | GAUGES | HISTOGRAMS):
        if family.startswith("socketio_"):
            series = {family} | {f"{family}_{suffix}" for suffix in ("bucket", "count")}
            assert series & used, f"no panel shows {family}"
    # The panels the issue asks for.
    for needed in (
        "socketio_connected_clients",
        "socketio_connections_total",
        "socketio_disconnections_total",
        "socketio_events_received_total",
        "socketio_messages_sent_total",
        "socketio_event_duration_seconds_bucket",
        "socketio_delivery_latency_seconds_bucket",
        "socketio_event_errors_total",
        "socketio_redis_up",
        "socketio_redis_command_duration_seconds_bucket",
        "socketio_event_loop_lag_seconds_bucket",
        "socketio_draining",
        "socketio_build_info",
        "socketio_pubsub_deaf",
        "socketio_max_connections",
    ):
        assert needed in used, needed


def test_dashboard_layout() -> None:
    board = dashboard()
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"


def test_dashboard_type_checks_against_grafana_schema() -> None:
    """tsc --strict: the JSON must satisfy @grafana/schema's Dashboard (enums as their values),
    and a broken copy must not."""
    node_modules = GRAFANA / "node_modules"
    if (
        not (node_modules / "@grafana" / "schema").is_dir()
        or not (node_modules / "typescript").is_dir()
    ):
        missing("npm dependencies missing: run `npm ci --prefix tests/k8s/grafana`")
    node = shutil.which("node")
    if not node:
        missing("node is not installed")
    build = GRAFANA / "build" / uuid.uuid4().hex
    build.mkdir(parents=True)
    try:
        text = DASHBOARD.read_text()
        header = "import type { DashboardJson } from '../../dashboard-type.js';\n"
        good = build / "dashboard.ts"
        good.write_text(f"{header}export const d = (\n{text}) satisfies DashboardJson;\n")
        broken = json.loads(text)
        broken["panels"][1]["gridPoz"] = broken["panels"][1].pop("gridPos")
        broken["graphTooltip"] = "shared"
        bad = build / "broken.ts"
        bad.write_text(
            f"{header}export const d = (\n{json.dumps(broken)}) satisfies DashboardJson;\n"
        )
        tsc = node_modules / "typescript" / "bin" / "tsc"
        common = ["--noEmit", "--strict", "--skipLibCheck", "--target", "ES2022"]
        common += ["--module", "NodeNext", "--moduleResolution", "NodeNext"]
        ok = run([node, str(tsc), *common, str(good)], cwd=GRAFANA)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        ko = run([node, str(tsc), *common, str(bad)], cwd=GRAFANA)
        assert ko.returncode != 0
        assert "gridPoz" in ko.stdout and "DashboardCursorSync" in ko.stdout, ko.stdout
    finally:
        shutil.rmtree(build, ignore_errors=True)
