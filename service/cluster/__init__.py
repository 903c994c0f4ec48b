"""Cluster mode: cross-instance fan-out through Redis (the manager) and its health (the monitor)."""

from .manager import RedisManager, connect_redis
from .monitor import RedisMonitor

__all__ = ["RedisManager", "RedisMonitor", "connect_redis"]
