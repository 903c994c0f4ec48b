"""A real Prometheus scraping the instances, and the queries the project ships for it.

The scrape config reproduces what the ServiceMonitor gives Prometheus in a cluster: one
target per pod with the ``namespace`` and ``pod`` target labels the dashboard and the alerts
group by. The alert rules are the ``spec`` of ``k8s/components/monitoring/prometheusrule.yaml``
(the single source the chart also reads), loaded as a rule file so Prometheus itself
evaluates them and reports pending/firing alerts.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..helpers import ROOT, free_port, require_tool, terminate

DASHBOARD = ROOT / "k8s" / "base" / "dashboards" / "socketio-service.json"
PROMETHEUS_RULE = ROOT / "k8s" / "components" / "monitoring" / "prometheusrule.yaml"
NAMESPACE = "e2e"
RATE_WINDOW = "30s"
"""What Grafana's $__rate_interval / $__interval stand for here (scrape interval 1 s)."""

PROMETHEUS_HINT = "apt-get install -y --no-install-recommends prometheus"


# -- what the project ships -----------------------------------------------------------------


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref: str
    expr: str
    """As written in the dashboard, Grafana variables and all."""


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows nest their panels


def panel_queries(board: dict[str, Any] | None = None) -> list[PanelQuery]:
    board = board or dashboard()
    return [
        PanelQuery(panel.get("title", "?"), target.get("refId", "?"), target["expr"])
        for panel in _panels(board.get("panels", []))
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def template_variables(board: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    board = board or dashboard()
    return [v for v in board.get("templating", {}).get("list", []) if v.get("type") == "query"]


def alert_rules() -> list[dict[str, Any]]:
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    return [r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r]


def write_rule_file(path: Path) -> Path:
    """The PrometheusRule's ``spec`` is a plain Prometheus rule file."""
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    return path


GRAFANA_INTERVALS = ("$__rate_interval", "$__interval", "$interval", "$__range")


def concrete(expr: str, variables: dict[str, str]) -> str:
    """The query Grafana would send: built-in intervals become :data:`RATE_WINDOW`, template
    variables (``$x``, ``${x}``, ``[[x]]``) their value."""
    for name in GRAFANA_INTERVALS:
        expr = expr.replace("${" + name[1:] + "}", RATE_WINDOW).replace(name, RATE_WINDOW)

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in variables:
            raise KeyError(f"unknown dashboard variable ${name} in {expr!r}")
        return variables[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", value, expr)


def threshold_operand(expr: str) -> str | None:
    """``<operand> <cmp> <number>`` → the operand; ``None`` when there is no final threshold."""
    match = re.fullmatch(r"(.*?)\s*(?:==|!=|>=|<=|>|<)\s*-?[0-9.eE+]+\s*", expr.strip(), re.S)
    return match.group(1) if match else None


# -- the server ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    address: str
    pod: str


class Prometheus:
    """``prometheus`` in the foreground with a private TSDB, 1 s scrapes and rule evaluation."""

    def __init__(self, workdir: Path, targets: list[Target]) -> None:
        self.binary = require_tool("prometheus", PROMETHEUS_HINT)
        self.promtool = require_tool("promtool", PROMETHEUS_HINT)
        self.workdir = workdir
        self.targets = targets
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self, rule_file: Path) -> dict[str, Any]:
        return {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "900ms",
                "evaluation_interval": "1s",  # alerts turn pending within a second
            },
            "rule_files": [str(rule_file)],
            "scrape_configs": [
                {
                    "job_name": "socketio-service",
                    "metrics_path": "/metrics",
                    "static_configs": [
                        # the labels the ServiceMonitor's relabelling gives every pod target
                        {
                            "targets": [t.address],
                            "labels": {
                                "namespace": NAMESPACE,
                                "pod": t.pod,
                                "service": "socketio-service",
                                "container": "socketio-service",
                            },
                        }
                        for t in self.targets
                    ],
                }
            ],
        }

    def start(self, timeout: float = 30) -> Prometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        rules = write_rule_file(self.workdir / "rules.yml")
        checked = subprocess.run(
            [self.promtool, "check", "rules", str(rules)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0, f"promtool check rules:\n{checked.stdout}{checked.stderr}"
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(self.config(rules)))
        log = (self.workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={cfg}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"prometheus exited: {self.log_tail()}"
            try:
                up = self.query("up")
                if len(up) == len(self.targets) and all(s["value"][1] == "1" for s in up):
                    return self
            except (urllib.error.URLError, OSError, AssertionError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus never scraped every target: {self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text()[-2000:] if path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` of a success, an AssertionError otherwise."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; the vector (a scalar comes back as one unlabelled sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def label_values(self, label: str, match: str) -> list[str]:
        return self.api(f"label/{label}/values", **{"match[]": match})

    def alerts(self) -> list[dict[str, Any]]:
        return self.api("alerts")["alerts"]

    def stop(self) -> None:
        terminate(self.proc, 10)
