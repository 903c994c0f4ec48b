"""The final table (targets side by side, ratios to the first), medians, JSON and a plot."""

from __future__ import annotations

import math
import statistics
from typing import Any

Row = tuple[str, str, str, bool]
"""(label, key path, format, higher is better)."""

ROWS: tuple[Row, ...] = (
    ("receivers connected", "receivers", "{:,.0f}", True),
    ("connect rate (conn/s)", "connect_per_s", "{:,.0f}", True),
    ("handshake p50 (ms)", "handshake_ms.p50", "{:,.1f}", False),
    ("handshake p99 (ms)", "handshake_ms.p99", "{:,.1f}", False),
    ("server RSS (KiB)", "server_rss_kib", "{:,.0f}", False),
    ("RSS per connection (KiB)", "rss_kib_per_connection", "{:,.1f}", False),
    ("messages sent/s", "messages_per_s", "{:,.0f}", True),
    ("deliveries/s", "deliveries_per_s", "{:,.0f}", True),
    ("latency p50 (ms)", "latency_ms.p50", "{:,.1f}", False),
    ("latency p95 (ms)", "latency_ms.p95", "{:,.1f}", False),
    ("latency p99 (ms)", "latency_ms.p99", "{:,.1f}", False),
    ("latency max (ms)", "latency_ms.max", "{:,.1f}", False),
    ("all-receivers p99 (ms)", "complete_ms.p99", "{:,.1f}", False),
    ("lost deliveries", "lost", "{:,.0f}", False),
    ("duplicates", "duplicates", "{:,.0f}", False),
    ("disconnects", "disconnects", "{:,.0f}", False),
    ("errors", "error_count", "{:,.0f}", False),
    ("server CPU (cores)", "server_cpu_total", "{:.2f}", False),
    ("load CPU, busiest process", "load_cpu", "{:.0%}", False),
)


def value(result: dict[str, Any], path: str) -> float | None:
    """A number at ``a.b`` in ``result`` (derived keys included), or None."""
    if path == "error_count":
        return float(sum(result.get("errors", {}).values()))
    if path == "deliveries_per_core":  # deliveries per second of server CPU
        rate, cpu = value(result, "deliveries_per_s"), value(result, "server_cpu_total")
        return rate / cpu if rate and cpu else None
    if path == "server_cpu_total":
        cpu = result.get("server_cpu")
        if cpu and "total" in cpu:  # a median result: per pid plus their total
            return float(cpu["total"])
        return float(sum(cpu.values())) if cpu else None
    node: Any = result
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if isinstance(node, int | float) and not (isinstance(node, float) and math.isnan(node)):
        return float(node)
    return None


def median_result(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-metric medians of repeated runs, plus the spread of each metric."""
    if len(runs) == 1:
        return {**runs[0], "runs": 1}
    out: dict[str, Any] = {"target": runs[0]["target"], "runs": len(runs), "spread": {}}
    for _label, path, _fmt, _ in ROWS:
        values = [v for r in runs if (v := value(r, path)) is not None]
        if not values:
            continue
        mid = statistics.median(values)
        node = out
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = mid
        if mid:
            out["spread"][path] = (max(values) - min(values)) / abs(mid)
    out["errors"] = {}
    for r in runs:
        for code, count in r.get("errors", {}).items():
            out["errors"][code] = out["errors"].get(code, 0) + count
    total = out.pop("server_cpu_total", None)
    if total is not None:
        out["server_cpu"] = {**per_pid_cpu(runs), "total": total}
    out.pop("error_count", None)
    out["warnings"] = sorted({w for r in runs for w in r.get("warnings", [])})
    return out


def per_pid_cpu(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Each server pid's CPU (cores), the median over runs."""
    by_pid: dict[str, list[float]] = {}
    for r in runs:
        for pid, cores in (r.get("server_cpu") or {}).items():
            if pid != "total":
                by_pid.setdefault(pid, []).append(cores)
    return {pid: statistics.median(v) for pid, v in by_pid.items()}


def cpu_line(result: dict[str, Any]) -> str | None:
    """``name server CPU by pid: 1234=0.52 1235=0.01`` when the target has several pids."""
    cpu = {k: v for k, v in (result.get("server_cpu") or {}).items() if k != "total"}
    if len(cpu) < 2:
        return None
    cells = " ".join(f"{pid}={cores:.2f}" for pid, cores in cpu.items())
    return f"{result['target']} server CPU by pid (cores): {cells}"


def table(results: list[dict[str, Any]]) -> str:
    """Targets side by side; with two or more, each next one's ratio to the first."""
    names = [r["target"] for r in results]
    header = ["metric", *names]
    if len(results) > 1:
        header += [f"{n}/{names[0]}" for n in names[1:]]
    lines = [header]
    for label, path, fmt, _ in ROWS:
        values = [value(r, path) for r in results]
        if all(v is None for v in values):
            continue
        cells = [label] + ["-" if v is None else fmt.format(v) for v in values]
        base = values[0]
        for v in values[1:]:
            ok = v is not None and base not in (None, 0)
            cells.append(f"{v / base:.2f}x" if ok else "-")  # type: ignore[operator]
        lines.append(cells)
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = []
    for n, row in enumerate(lines):
        text.append(
            "  ".join(
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                for i, cell in enumerate(row)
            )
        )
        if n == 0:
            text.append("  ".join("-" * w for w in widths))
    for r in results:
        spread = r.get("spread", {}).get("deliveries_per_s")
        if spread is not None:
            text.append(
                f"{r['target']}: median of {r['runs']} runs, deliveries/s spread {spread:.0%}"
            )
        line = cpu_line(r)
        if line is not None:
            text.append(line)
        if r.get("errors"):
            codes = ", ".join(f"{k}={v}" for k, v in sorted(r["errors"].items()))
            text.append(f"{r['target']} errors: {codes}")
        for warning in r.get("warnings", []):
            text.append(f"{r['target']} warning: {warning}")
    return "\n".join(text)


def plot(runs: dict[str, list[dict[str, Any]]], path: str) -> str | None:
    """A latency CDF per target as a PNG; returns why not when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot"
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, results in runs.items():
        samples = sorted(v for r in results for v in r.get("latency_samples", []))
        if not samples:
            continue
        n = len(samples)
        ax.plot(samples, [(i + 1) / n for i in range(n)], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("delivery latency (ms)")
    ax.set_ylabel("fraction of deliveries")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
