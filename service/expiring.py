"""Bounded in-process maps whose entries expire: one pruning rule for all of them."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


def prune(entries: OrderedDict[Any, tuple[float, Any]], now: float, limit: int) -> None:
    """Drop expired entries (``(deadline, value)``) and, past ``limit``, the oldest ones.

    Only the front is looked at: with one lifetime per map, insertion order is deadline order
    (re-insert an entry to renew it), and an OrderedDict reaches its front in O(1) however many
    entries were removed there, so a call costs O(1) amortized.
    """
    while entries:
        oldest = next(iter(entries))
        if entries[oldest][0] > now and len(entries) <= limit:
            return
        del entries[oldest]
