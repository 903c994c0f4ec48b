"""Cluster mode: cross-instance fan-out through Redis (the manager), stored messages in order
(the sequencer), short outages bridged (the outbox) and Redis health (the monitor)."""

from .manager import RedisManager, connect_redis
from .monitor import RedisMonitor
from .outbox import Outbox
from .sequencer import Sequencer

__all__ = ["Outbox", "RedisManager", "RedisMonitor", "Sequencer", "connect_redis"]
