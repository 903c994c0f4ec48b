"""``python -m service.bench.summary FILE.json...``: the scenarios' Markdown table.

Files are the ``--json`` outputs of runs named ``<scenario>-<run>.json``; each metric is the
median over runs, and the ratio is ours/anchor (the first two targets) with its target.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from .report import value

SCENARIOS = {
    "s1-200": "S1 one server, 1 room of 200",
    "s1-1000": "S1 one server, 1 room of 1000",
    "s2": "S2 two servers via Redis, 1 room of 1000",
    "s3": "S3 5,000 idle connections",
}
METRICS: dict[str, list[tuple[str, str, str, str, str]]] = {
    "flow": [
        ("deliveries/s", "deliveries_per_s", "{:,.0f}", ">= 1.0x", "flow"),
        ("latency p50 ms", "latency_ms.p50", "{:,.1f}", "", "flow"),
        ("latency p99 ms", "latency_ms.p99", "{:,.1f}", "<= 1.0x", "flow"),
        ("server CPU (cores)", "server_cpu_total", "{:.2f}", "", ""),
        ("deliveries per server CPU-second", "deliveries_per_core", "{:,.0f}", "", ""),
        ("load tool CPU", "load_cpu", "{:.0%}", "", ""),
        ("lost deliveries", "lost", "{:,.0f}", "", ""),
    ],
    "idle": [
        ("conn/s", "connect_per_s", "{:,.0f}", ">= 1.0x", "connect"),
        ("server CPU while connecting (cores)", "connect_server_cpu", "{:.2f}", "", ""),
        ("RSS KiB per idle connection", "rss_kib_per_connection", "{:,.1f}", "<= 16 KiB", ""),
        ("load tool CPU while connecting", "connect_load_cpu", "{:.0%}", "", ""),
    ],
}
"""label, key, format, goal, and the measure (see ``runner.void_measures``) whose void runs
are left out of the median: a metric with only void runs reads ``void``."""


def _scenario(path: Path) -> str:
    return path.stem.rsplit("-", 1)[0]


def rows(files: list[Path]) -> list[list[str]]:
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in sorted(files):
        runs[_scenario(path)].append(json.loads(path.read_text())["targets"])
    out = []
    for scenario, docs in runs.items():
        names = list(docs[0])
        kind = "idle" if scenario == "s3" else "flow"
        for label, key, fmt, goal, measure in METRICS[kind]:
            cells = [SCENARIOS.get(scenario, scenario), label]
            medians = []
            for name in names:
                runs_of = [run for doc in docs for run in doc.get(name, {}).get("runs", [])]
                valid = [r for r in runs_of if not measure or measure not in r.get("void", [])]
                values = [v for run in valid if (v := value(run, key)) is not None]
                mid = statistics.median(values) if values else None
                medians.append(mid)
                spread = ""
                if values and mid and len(values) > 1:
                    spread = f" (±{(max(values) - min(values)) / 2 / abs(mid):.0%})"
                if len(valid) < len(runs_of):
                    spread += f" ({len(runs_of) - len(valid)} void)"
                if mid is None:
                    cells.append("void" if runs_of and not valid else "-")
                else:
                    cells.append(fmt.format(mid) + spread)
            ratio = "-"
            if len(medians) > 1 and medians[0] is not None and medians[1]:
                ratio = f"{medians[0] / medians[1]:.2f}x"
            cells += [ratio, goal, str(len(docs))]
            out.append(cells)
    return out


def main(argv: list[str]) -> int:
    files = [Path(a) for a in argv if a.endswith(".json")]
    if not files:
        print("usage: python -m service.bench.summary RUN.json...", file=sys.stderr)
        return 2
    first = json.loads(files[0].read_text())["targets"]
    names = list(first)
    header = ["scenario", "metric", *names, "/".join(names[:2]) if len(names) > 1 else "", "goal"]
    header.append("runs")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for cells in rows(files):
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
