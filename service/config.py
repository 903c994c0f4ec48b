"""Settings: the only place that reads the environment.

Every setting has an environment variable; the CLI turns its flags into the same names, so
one parser validates both and an invalid value stops start-up with one line naming it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
REDIS_SCHEMES = (
    "redis://",
    "rediss://",
    "redis+sentinel://",
    "redis+cluster://",
    "rediss+cluster://",
    "unix://",
)
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
"""Redis Cluster: stores on RedisCluster, room channels on sharded pub/sub."""
PRIVATE_NETWORKS = (
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "::1/128",
    "fc00::/7",
)
"""Default TRUSTED_PROXIES: in-cluster ingress controllers and load balancers."""


MIN_ADMIN_PASSWORD_CHARS = 16
"""The admin UI's password is guessed online: long enough that the login limit makes
guessing hopeless."""


class ConfigError(ValueError):
    """An invalid setting; the message names the variable."""


Num = TypeVar("Num", int, float)


def _number(
    cast: Callable[[str], Num], kind: str, lo: Num, hi: Num | None = None
) -> Callable[[str], Num]:
    def parse(raw: str) -> Num:
        try:
            value = cast(raw.strip())
        except ValueError:
            raise ValueError(f"expected {kind}, got {raw!r}") from None
        if value < lo or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise ValueError(f"expected {kind} {bound}, got {value}")
        return value

    return parse


def _int(lo: int, hi: int | None = None) -> Callable[[str], int]:
    return _number(int, "an integer", lo, hi)


def _float(lo: float, hi: float | None = None) -> Callable[[str], float]:
    return _number(float, "a number", lo, hi)


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _redis_url(raw: str) -> str:
    value = raw.strip()
    if value and not value.startswith(REDIS_SCHEMES):
        raise ValueError(f"expected a URL starting with one of {', '.join(REDIS_SCHEMES)}")
    return value


def _http_url(raw: str) -> str:
    value = raw.strip()
    if value and not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        raise ValueError("expected an http:// or https:// URL")
    return value


def _redis_prefix(raw: str) -> str:
    value = raw.strip()
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", value):
        raise ValueError("expected 1-32 characters of [A-Za-z0-9_.-]")
    return value


def _origins(raw: str) -> tuple[str, ...]:
    origins = _list(raw)
    for origin in origins:
        if origin != "*" and not re.match(r"^https?://[^/\s]+$", origin):
            raise ValueError(f"expected * or origins like https://chat.example.com: {origin!r}")
    return origins


def _networks(raw: str) -> tuple[str, ...]:
    networks = _list(raw)
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ValueError(f"expected IP networks like 10.0.0.0/8: {network!r}") from None
    return networks


def _algorithms(raw: str) -> tuple[str, ...]:
    algorithms = tuple(a.upper() if a.lower() != "eddsa" else "EdDSA" for a in _list(raw))
    unknown = [a for a in algorithms if a not in HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS]
    if unknown or not algorithms:
        raise ValueError(f"unsupported algorithm(s) {unknown or raw!r} ('none' is never allowed)")
    return algorithms


def _public_key(raw: str) -> str:
    """A PEM text, or the path of a PEM file (how Kubernetes mounts secrets)."""
    value = raw.strip()
    if not value or value.startswith("-----BEGIN"):
        return value.replace("\\n", "\n")
    path = Path(value)
    if not path.is_file():
        raise ValueError("expected a PEM public key or the path of a PEM file")
    return path.read_text()


@dataclass(frozen=True)
class Settings:
    """Validated configuration; build it with :meth:`from_env`."""

    host: str = "0.0.0.0"
    port: int = 3000
    redis_url: str = field(default="", repr=False)  # may carry a password
    jwt_secret: str = field(default="", repr=False)
    jwt_public_key: str = field(default="", repr=False)
    jwt_algorithms: tuple[str, ...] = ()
    jwt_audience: str = ""
    jwt_issuer: str = ""
    jwt_leeway_seconds: float = 5.0
    cors_allowed_origins: tuple[str, ...] = ()
    rate_limit_events: int = 100
    rate_limit_window_seconds: float = 60.0
    history_size: int = 100
    history_ttl_seconds: int = 7 * 24 * 3600
    max_message_bytes: int = 4096
    max_connections: int = 10_000
    max_rooms_per_socket: int = 100
    max_sockets_per_user: int = 20
    handshake_rate_per_address: float = 20.0
    handshake_burst_per_address: int = 60
    trusted_proxies: tuple[str, ...] = PRIVATE_NETWORKS
    send_buffer_bytes: int = 1024 * 1024
    connect_timeout_seconds: float = 10.0
    http_header_timeout_seconds: float = 10.0
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    shutdown_delay_seconds: float = 3.0
    shutdown_drain_seconds: float = 10.0
    redis_timeout_seconds: float = 2.0
    redis_prefix: str = "sio"
    redis_cluster: bool = False
    presence_ttl_seconds: float = 30.0
    pubsub_heartbeat_seconds: float = 1.0
    redis_password: str = field(default="", repr=False)
    redis_outage_buffer_seconds: float = 5.0
    redis_wait_replicas: int = 0
    log_level: str = "info"
    log_format: str = "json"
    instance_id: str = ""
    websocket_compression: bool = False
    websocket_driver: str = "fast"
    admin_ui: bool = False
    admin_username: str = "admin"
    admin_password: str = field(default="", repr=False)
    admin_allowed_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    demo_client_js_dir: str = ""
    dev: bool = False
    room_access: str = "open"
    room_auth_url: str = ""
    room_auth_timeout_seconds: float = 2.0
    room_auth_cache_seconds: float = 10.0
    connection_state_recovery_seconds: float = 120.0

    @property
    def cluster(self) -> bool:
        """True when Redis carries fan-out, history, presence and rate limits."""
        return bool(self.redis_url)

    @property
    def redis_cluster_mode(self) -> bool:
        """True when REDIS_URL names a Redis Cluster (``REDIS_CLUSTER=true`` or a
        ``redis+cluster://``/``rediss+cluster://`` URL)."""
        return bool(self.redis_url) and (
            self.redis_cluster or self.redis_url.startswith(CLUSTER_SCHEMES)
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read and validate every variable of :data:`VARIABLES` from ``env``."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, (attr, parse) in VARIABLES.items():
            raw = env.get(name)
            if raw is None:
                continue
            try:
                values[attr] = parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
        values.update(overrides)
        if "log_format" not in values:
            values["log_format"] = "json" if not _stderr_is_tty() else "text"
        if not values.get("instance_id"):
            values["instance_id"] = socket.gethostname()
        settings = cls(**values)
        settings._check()
        return settings

    def replace(self, **changes: Any) -> Settings:
        settings = dataclasses.replace(self, **changes)
        settings._check()
        return settings

    def _check(self) -> None:
        """Cross-field rules: which keys fit which algorithms."""
        if not self.jwt_secret and not self.jwt_public_key:
            raise ConfigError(
                "JWT_SECRET: required (or JWT_PUBLIC_KEY); run with --dev for an ephemeral one"
            )
        algorithms = set(self.jwt_algorithms)
        if self.jwt_secret and len(self.jwt_secret) < 32 and not self.dev:
            raise ConfigError("JWT_SECRET: must be at least 32 characters")
        if algorithms & HMAC_ALGORITHMS and not self.jwt_secret:
            raise ConfigError("JWT_ALGORITHMS: HMAC algorithms need JWT_SECRET")
        if algorithms & ASYMMETRIC_ALGORITHMS and not self.jwt_public_key:
            raise ConfigError("JWT_ALGORITHMS: RS/PS/ES/EdDSA algorithms need JWT_PUBLIC_KEY")
        if self.ping_timeout <= 0 or self.ping_interval <= 0:
            raise ConfigError("PING_INTERVAL: PING_INTERVAL and PING_TIMEOUT must be > 0")
        if self.admin_ui and not self.admin_password:
            raise ConfigError("ADMIN_PASSWORD: required when ADMIN_UI is on")
        if self.admin_ui and len(self.admin_password) < MIN_ADMIN_PASSWORD_CHARS:
            raise ConfigError(
                f"ADMIN_PASSWORD: must be at least {MIN_ADMIN_PASSWORD_CHARS} characters"
            )

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The allow-list, defaulting to what the configured keys can verify."""
        if self.jwt_algorithms:
            return self.jwt_algorithms
        if self.jwt_public_key:
            return ("RS256", "ES256")
        return ("HS256",)


def _stderr_is_tty() -> bool:
    try:
        return os.isatty(2)
    except OSError:
        return False


VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "HOST": ("host", str.strip),
    "PORT": ("port", _int(0, 65535)),
    "REDIS_URL": ("redis_url", _redis_url),
    "JWT_SECRET": ("jwt_secret", str.strip),
    "JWT_PUBLIC_KEY": ("jwt_public_key", _public_key),
    "JWT_ALGORITHMS": ("jwt_algorithms", _algorithms),
    "JWT_AUDIENCE": ("jwt_audience", str.strip),
    "JWT_ISSUER": ("jwt_issuer", str.strip),
    "JWT_LEEWAY_SECONDS": ("jwt_leeway_seconds", _float(0, 300)),
    "CORS_ALLOWED_ORIGINS": ("cors_allowed_origins", _origins),
    "RATE_LIMIT_EVENTS": ("rate_limit_events", _int(1)),
    "RATE_LIMIT_WINDOW_SECONDS": ("rate_limit_window_seconds", _float(0.001)),
    "HISTORY_SIZE": ("history_size", _int(0, 100_000)),
    "HISTORY_TTL_SECONDS": ("history_ttl_seconds", _int(1)),
    "MAX_MESSAGE_BYTES": ("max_message_bytes", _int(1, 16 * 1024 * 1024)),
    "MAX_CONNECTIONS": ("max_connections", _int(1)),
    "MAX_ROOMS_PER_SOCKET": ("max_rooms_per_socket", _int(1)),
    "MAX_SOCKETS_PER_USER": ("max_sockets_per_user", _int(1)),
    "HANDSHAKE_RATE_PER_ADDRESS": ("handshake_rate_per_address", _float(0)),
    "HANDSHAKE_BURST_PER_ADDRESS": ("handshake_burst_per_address", _int(1)),
    "TRUSTED_PROXIES": ("trusted_proxies", _networks),
    "SEND_BUFFER_BYTES": ("send_buffer_bytes", _int(4096)),
    "CONNECT_TIMEOUT_SECONDS": ("connect_timeout_seconds", _float(0.1, 3600)),
    "HTTP_HEADER_TIMEOUT_SECONDS": ("http_header_timeout_seconds", _float(0, 3600)),
    "PING_INTERVAL": ("ping_interval", _float(0.1)),
    "PING_TIMEOUT": ("ping_timeout", _float(0.1)),
    "SHUTDOWN_DELAY_SECONDS": ("shutdown_delay_seconds", _float(0, 5)),
    "SHUTDOWN_DRAIN_SECONDS": ("shutdown_drain_seconds", _float(0)),
    "REDIS_TIMEOUT_SECONDS": ("redis_timeout_seconds", _float(0.05, 60)),
    "REDIS_PREFIX": ("redis_prefix", _redis_prefix),
    "REDIS_CLUSTER": ("redis_cluster", _bool),
    "PRESENCE_TTL_SECONDS": ("presence_ttl_seconds", _float(1, 3600)),
    "PUBSUB_HEARTBEAT_SECONDS": ("pubsub_heartbeat_seconds", _float(0.05, 60)),
    "REDIS_PASSWORD": ("redis_password", str.strip),
    "REDIS_OUTAGE_BUFFER_SECONDS": ("redis_outage_buffer_seconds", _float(0, 60)),
    "REDIS_WAIT_REPLICAS": ("redis_wait_replicas", _int(0, 16)),
    "LOG_LEVEL": ("log_level", _choice(*LOG_LEVELS)),
    "LOG_FORMAT": ("log_format", _choice("json", "text")),
    "INSTANCE_ID": ("instance_id", str.strip),
    "WEBSOCKET_COMPRESSION": ("websocket_compression", _bool),
    "WEBSOCKET_DRIVER": ("websocket_driver", _choice("fast", "stock")),
    "ADMIN_UI": ("admin_ui", _bool),
    "ADMIN_USERNAME": ("admin_username", str.strip),
    "ADMIN_PASSWORD": ("admin_password", str.strip),
    "ADMIN_ALLOWED_NETWORKS": ("admin_allowed_networks", _networks),
    "DEMO_CLIENT_JS_DIR": ("demo_client_js_dir", str.strip),
    "ROOM_ACCESS": ("room_access", _choice("open", "claims")),
    "ROOM_AUTH_URL": ("room_auth_url", _http_url),
    "ROOM_AUTH_TIMEOUT_SECONDS": ("room_auth_timeout_seconds", _float(0.05, 60)),
    "ROOM_AUTH_CACHE_SECONDS": ("room_auth_cache_seconds", _float(0, 3600)),
    "CONNECTION_STATE_RECOVERY_SECONDS": ("connection_state_recovery_seconds", _float(0, 86400)),
}
"""Environment variable -> (Settings attribute, parser)."""
