"""Settings: every variable parses, invalid values name the variable, defaults are safe."""

from __future__ import annotations

import pytest

from service.config import VARIABLES, ConfigError, Settings

SECRET = {"JWT_SECRET": "s" * 32}


def test_defaults_are_the_contract():
    settings = Settings.from_env({**SECRET, "LOG_FORMAT": "json"})
    assert settings.port == 3000
    assert settings.history_size == 100
    assert settings.rate_limit_events == 100 and settings.rate_limit_window_seconds == 60
    assert settings.cors_allowed_origins == ()  # same origin only, never '*' by default
    assert settings.algorithms == ("HS256",)
    assert not settings.cluster and not settings.admin_ui and not settings.websocket_compression
    assert settings.websocket_driver == "fast"
    assert Settings.from_env({**SECRET, "WEBSOCKET_DRIVER": "Stock"}).websocket_driver == "stock"
    assert settings.instance_id  # the hostname, i.e. the pod name
    assert settings.room_access == "open" and not settings.room_auth_url
    assert settings.connection_state_recovery_seconds == 120


def test_every_documented_variable_is_read():
    for name in (
        "HOST",
        "PORT",
        "REDIS_URL",
        "JWT_SECRET",
        "JWT_PUBLIC_KEY",
        "JWT_ALGORITHMS",
        "JWT_AUDIENCE",
        "JWT_ISSUER",
        "CORS_ALLOWED_ORIGINS",
        "RATE_LIMIT_EVENTS",
        "RATE_LIMIT_WINDOW_SECONDS",
        "HISTORY_SIZE",
        "HISTORY_TTL_SECONDS",
        "MAX_MESSAGE_BYTES",
        "MAX_CONNECTIONS",
        "PING_INTERVAL",
        "PING_TIMEOUT",
        "SHUTDOWN_DRAIN_SECONDS",
        "LOG_LEVEL",
        "LOG_FORMAT",
        "INSTANCE_ID",
        "WEBSOCKET_DRIVER",
        "ROOM_ACCESS",
        "ROOM_AUTH_URL",
        "CONNECTION_STATE_RECOVERY_SECONDS",
    ):
        assert name in VARIABLES


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("REDIS_URL", "http://x"),
        ("RATE_LIMIT_EVENTS", "0"),
        ("HISTORY_SIZE", "-1"),
        ("LOG_LEVEL", "verbose"),
        ("LOG_FORMAT", "xml"),
        ("JWT_ALGORITHMS", "none"),
        ("CORS_ALLOWED_ORIGINS", "not a url"),
        ("MAX_CONNECTIONS", "1.5"),
        ("PING_INTERVAL", "-1"),
        ("WEBSOCKET_COMPRESSION", "maybe"),
        ("WEBSOCKET_DRIVER", "turbo"),
        ("SHUTDOWN_DELAY_SECONDS", "30"),
        ("JWT_PUBLIC_KEY", "/nonexistent.pem"),
        ("ROOM_ACCESS", "closed"),
        ("ROOM_AUTH_URL", "ftp://auth.example/can-join"),
        ("ROOM_AUTH_URL", "auth.example"),
        ("ROOM_AUTH_TIMEOUT_SECONDS", "0"),
        ("CONNECTION_STATE_RECOVERY_SECONDS", "-1"),
    ],
)
def test_invalid_values_name_the_variable(name, value):
    with pytest.raises(ConfigError) as excinfo:
        Settings.from_env({**SECRET, name: value})
    message = str(excinfo.value)
    assert message.startswith(f"{name}: ") and "\n" not in message


def test_values_parse():
    settings = Settings.from_env(
        {
            **SECRET,
            "PORT": "8080",
            "LOG_LEVEL": "DEBUG",
            "REDIS_URL": "rediss://:pw@redis:6380/1",
            "CORS_ALLOWED_ORIGINS": "https://a.example, http://localhost:5173",
            "RATE_LIMIT_WINDOW_SECONDS": "0.5",
            "WEBSOCKET_COMPRESSION": "true",
        }
    )
    assert settings.port == 8080 and settings.log_level == "debug" and settings.cluster
    assert settings.cors_allowed_origins == ("https://a.example", "http://localhost:5173")
    assert settings.rate_limit_window_seconds == 0.5 and settings.websocket_compression


def test_a_secret_is_required_and_long_enough():
    with pytest.raises(ConfigError, match=r"^JWT_SECRET: "):
        Settings.from_env({})
    with pytest.raises(ConfigError, match=r"^JWT_SECRET: "):
        Settings.from_env({"JWT_SECRET": "short"})


def test_admin_ui_needs_a_password():
    with pytest.raises(ConfigError, match=r"^ADMIN_PASSWORD: "):
        Settings.from_env({**SECRET, "ADMIN_UI": "true"})


def test_secrets_stay_out_of_repr():
    settings = Settings.from_env(
        {**SECRET, "ADMIN_UI": "1", "ADMIN_PASSWORD": "hunter2-pass-long-enough"}
    )
    assert "s" * 32 not in repr(settings) and "hunter2" not in repr(settings)


def test_redis_resilience_settings():
    settings = Settings.from_env(SECRET)
    assert settings.redis_outage_buffer_seconds == 5 and settings.redis_wait_replicas == 0
    tuned = Settings.from_env(
        {
            **SECRET,
            "REDIS_URL": "redis://:in-url@redis:6379/0",
            "REDIS_PASSWORD": "p/w@d#1",
            "REDIS_OUTAGE_BUFFER_SECONDS": "2.5",
            "REDIS_WAIT_REPLICAS": "1",
        }
    )
    assert tuned.redis_password == "p/w@d#1" and tuned.redis_wait_replicas == 1
    assert tuned.redis_outage_buffer_seconds == 2.5
    assert "p/w@d" not in repr(tuned) and "in-url" not in repr(tuned)
    for name, bad in (("REDIS_WAIT_REPLICAS", "-1"), ("REDIS_OUTAGE_BUFFER_SECONDS", "soon")):
        with pytest.raises(ConfigError, match=f"^{name}: "):
            Settings.from_env({**SECRET, name: bad})


def test_admin_password_must_be_long_and_admin_networks_valid():
    with pytest.raises(ConfigError, match="ADMIN_PASSWORD: must be at least 16 characters"):
        Settings.from_env({**SECRET, "ADMIN_UI": "1", "ADMIN_PASSWORD": "x" * 15})
    assert Settings.from_env({**SECRET, "ADMIN_UI": "1", "ADMIN_PASSWORD": "x" * 16}).admin_ui
    with pytest.raises(ConfigError, match="ADMIN_ALLOWED_NETWORKS"):
        Settings.from_env({**SECRET, "ADMIN_ALLOWED_NETWORKS": "everyone"})
    assert Settings.from_env({**SECRET}).admin_allowed_networks == ("127.0.0.0/8", "::1/128")
