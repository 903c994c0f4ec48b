"""Latency samples, percentiles and process accounting for the load tool."""

from __future__ import annotations

import math
import os
import random
import resource
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

PERCENTILES = (50.0, 95.0, 99.0)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (``nan`` when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class Reservoir:
    """At most ``capacity`` samples, uniformly chosen among all offered (Algorithm R)."""

    capacity: int = 200_000
    values: list[float] = field(default_factory=list)
    seen: int = 0
    maximum: float = 0.0
    _rng: random.Random = field(default_factory=lambda: random.Random(1), repr=False)

    def add(self, value: float) -> None:
        self.seen += 1
        if value > self.maximum:
            self.maximum = value
        if len(self.values) < self.capacity:
            self.values.append(value)
            return
        slot = self._rng.randrange(self.seen)
        if slot < self.capacity:
            self.values[slot] = value

    def clear(self) -> None:
        self.values.clear()
        self.seen = 0
        self.maximum = 0.0


def summarize(values: Iterable[float], maximum: float | None = None) -> dict[str, float]:
    """``{count, p50, p95, p99, max}`` of ``values`` (milliseconds in, milliseconds out)."""
    ordered = sorted(values)
    out: dict[str, float] = {"count": float(len(ordered))}
    for q in PERCENTILES:
        out[f"p{q:g}"] = percentile(ordered, q)
    top = ordered[-1] if ordered else math.nan
    out["max"] = max(top, maximum) if maximum is not None and ordered else top
    return out


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of another local process, from /proc; None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        return None


def process_rss_kib(pid: int) -> int | None:
    """Resident set size of a local process in KiB, from /proc; None if unknown."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None
