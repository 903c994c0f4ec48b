"""Every Prometheus metric of the service, declared once against a registry passed in.

Labels are bounded: event names outside the protocol are counted as ``unknown``; no sid,
user or room ever becomes a label value.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from . import __version__
from .protocol import CLIENT_EVENTS, DISCONNECT_REASONS, ERROR_CODES, SERVER_EVENTS

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
CONNECT_ERROR_CODES = ("unauthorized", "overloaded", "draining", "rate_limited")
HANDSHAKE_REFUSALS = ("rate_limited", "overloaded")
EVICTION_REASONS = ("slow_consumer", "protocol_error", "connect_timeout", "stalled")
ROOM_AUTH_RESULTS = ("allow", "deny", "error")
"""Outcomes of the ROOM_AUTH_URL hook (``error`` covers timeouts and malformed answers)."""
RECOVERY_RESULTS = ("recovered", "unknown", "incomplete")
"""Reconnects that brought a pid: restored; no session for it (expired, unknown, another
user's); or a session that could not be restored (gap not kept, room refused, Redis down)."""


def event_label(event: str) -> str:
    """The bounded label value for a client event name."""
    return event if event in CLIENT_EVENTS else "unknown"


class Metrics:
    """Holds every metric; each app builds one against its own fresh registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        r = registry
        self.connected_clients = Gauge(
            "socketio_connected_clients", "Sockets connected to this instance", registry=r
        )
        self.max_connections = Gauge(
            "socketio_max_connections", "MAX_CONNECTIONS of this instance", registry=r
        )
        self.connections = Counter(
            "socketio_connections", "Accepted connections", ["transport"], registry=r
        )
        self.connect_errors = Counter(
            "socketio_connect_errors", "Refused handshakes", ["code"], registry=r
        )
        self.disconnections = Counter(
            "socketio_disconnections", "Disconnections", ["reason"], registry=r
        )
        self.events_received = Counter(
            "socketio_events_received", "Client events received", ["event"], registry=r
        )
        self.messages_sent = Counter(
            "socketio_messages_sent",
            "Server events handed to local sockets (one per recipient)",
            ["event"],
            registry=r,
        )
        self.event_errors = Counter(
            "socketio_event_errors",
            "Client events answered with an error",
            ["event", "code"],
            registry=r,
        )
        self.event_duration = Histogram(
            "socketio_event_duration_seconds",
            "Time to handle a client event",
            ["event"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.delivery_latency = Histogram(
            "socketio_delivery_latency_seconds",
            "Message creation to hand-off to local sockets",
            ["scope"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rooms = Gauge("socketio_rooms", "Chat rooms with members on this instance", registry=r)
        self.redis_up = Gauge(
            "socketio_redis_up", "1 when Redis answers (0 in embedded mode)", registry=r
        )
        self.pubsub_deaf = Gauge(
            "socketio_pubsub_deaf",
            "1 when this instance stopped hearing its own pub/sub heartbeat",
            registry=r,
        )
        self.redis_command_duration = Histogram(
            "socketio_redis_command_duration_seconds",
            "Redis round trips",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.event_loop_lag = Histogram(
            "socketio_event_loop_lag_seconds",
            "How late the event loop runs a timer",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.draining = Gauge("socketio_draining", "1 while shutting down", registry=r)
        self.messages_stored = Counter(
            "socketio_messages_stored", "Messages appended to history", registry=r
        )
        self.handshakes_refused = Counter(
            "socketio_handshakes_refused",
            "Engine.IO handshakes refused before a session was allocated",
            ["reason"],
            registry=r,
        )
        self.clients_evicted = Counter(
            "socketio_clients_evicted",
            "Connections closed by the server's protections",
            ["reason"],
            registry=r,
        )
        self.engineio_sessions = Gauge(
            "socketio_engineio_sessions",
            "Engine.IO sessions held, connected to a namespace or not",
            registry=r,
        )
        self.at_capacity = Gauge(
            "socketio_at_capacity",
            "1 while new handshakes are refused as overloaded (Engine.IO or Socket.IO)",
            registry=r,
        )
        self.http_header_timeouts = Counter(
            "socketio_http_header_timeouts",
            "Connections aborted for sending request headers too slowly",
            registry=r,
        )
        self.room_auth_duration = Histogram(
            "socketio_room_auth_duration_seconds",
            "Round trips to the ROOM_AUTH_URL join hook (cached answers are not counted)",
            ["result"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.recoveries = Counter(
            "socketio_connection_recoveries",
            "Reconnects that asked for connection state recovery, by outcome",
            ["result"],
            registry=r,
        )
        self.build_info = Gauge(
            "socketio_build_info", "Version of the running service", ["version"], registry=r
        )
        self.build_info.labels(version=__version__).set(1)
        self._precreate()

    @contextmanager
    def redis_op(self, op: str) -> Iterator[None]:
        """Time one Redis round trip (failures included) under ``op``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.redis_command_duration.labels(op=op).observe(time.perf_counter() - started)

    def _precreate(self) -> None:
        """Known label values exist from the start, so rate() works on the first increment."""
        for transport in ("websocket", "polling"):
            self.connections.labels(transport=transport)
        for code in CONNECT_ERROR_CODES:
            self.connect_errors.labels(code=code)
        for event in (*CLIENT_EVENTS, "unknown"):
            self.events_received.labels(event=event)
            self.event_duration.labels(event=event)
        for reason in (*DISCONNECT_REASONS.values(), "other"):
            self.disconnections.labels(reason=reason)
        for event in SERVER_EVENTS:
            self.messages_sent.labels(event=event)
        for code in ERROR_CODES:
            self.event_errors.labels(event="message:send", code=code)
        for scope in ("local", "remote"):
            self.delivery_latency.labels(scope=scope)
        for reason in HANDSHAKE_REFUSALS:
            self.handshakes_refused.labels(reason=reason)
        for reason in EVICTION_REASONS:
            self.clients_evicted.labels(reason=reason)
        for code in ERROR_CODES:
            self.event_errors.labels(event="join:room", code=code)
        for result in ROOM_AUTH_RESULTS:
            self.room_auth_duration.labels(result=result)
        for result in RECOVERY_RESULTS:
            self.recoveries.labels(result=result)
