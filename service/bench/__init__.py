"""The load tool behind ``socketio-service bench``.

It speaks Engine.IO v4 / Socket.IO v5 over aiohttp's websocket client (or long-polling)
directly, counts every frame and fully parses only a sample, so that it is not the
bottleneck; see ``socketio-service bench --help``.
"""

from __future__ import annotations

from .cli import main
from .runner import BenchConfig, Target, run_target

__all__ = ["BenchConfig", "Target", "main", "run_target"]
