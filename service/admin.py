"""python-socketio's admin UI instrumentation: off by default, always behind credentials."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import Any

import socketio

from .config import Settings

ADMIN_UI_ORIGIN = "https://admin.socket.io"
ADMIN_NAMESPACE = "/admin"


def credentials_check(username: str, password: str) -> Callable[[Any], bool]:
    """``auth`` for ``instrument()``: constant-time comparison of both fields."""
    expected = (username.encode(), password.encode())

    def check(client_auth: Any) -> bool:
        if not isinstance(client_auth, Mapping):
            return False
        given = (client_auth.get("username"), client_auth.get("password"))
        if not all(isinstance(value, str) for value in given):
            return False
        user_ok = hmac.compare_digest(given[0].encode(), expected[0])
        password_ok = hmac.compare_digest(given[1].encode(), expected[1])
        return user_ok and password_ok

    return check


def _same_origins(environ: Mapping[str, Any]) -> set[str]:
    """What python-engineio accepts when no CORS origins are configured."""
    origins: set[str] = set()
    scheme, host = environ.get("wsgi.url_scheme"), environ.get("HTTP_HOST")
    if scheme and host:
        origins.add(f"{scheme}://{host}")
        forwarded_scheme = environ.get("HTTP_X_FORWARDED_PROTO", scheme).split(",")[0].strip()
        forwarded_host = environ.get("HTTP_X_FORWARDED_HOST", host).split(",")[0].strip()
        origins.add(f"{forwarded_scheme}://{forwarded_host}")
    return origins


def allow_origin(eio: Any, origin: str) -> None:
    """Add ``origin`` to the Engine.IO server's CORS policy, keeping what was allowed."""
    configured = eio.cors_allowed_origins
    if configured == "*" or (isinstance(configured, list | tuple) and "*" in configured):
        return
    if isinstance(configured, str):
        configured = [configured]
    if isinstance(configured, list | tuple):
        if origin not in configured:
            eio.cors_allowed_origins = [*configured, origin]
        return
    if configured is None:

        def same_origin_or(candidate: str | None, environ: Mapping[str, Any]) -> bool:
            return candidate == origin or candidate in _same_origins(environ)

        eio.cors_allowed_origins = same_origin_or


def enable_admin_ui(sio: socketio.AsyncServer, settings: Settings) -> None:
    """Serve the ``/admin`` namespace for https://admin.socket.io (ADMIN_UI=true).

    Read-only and in production mode (no per-socket bookkeeping on the hot path); the UI's
    origin is added to the CORS policy so the hosted UI can reach the server.
    """
    if not settings.admin_password:
        raise ValueError("ADMIN_PASSWORD: required when ADMIN_UI is on")
    allow_origin(sio.eio, ADMIN_UI_ORIGIN)
    sio.instrument(
        auth=credentials_check(settings.admin_username, settings.admin_password),
        mode="production",
        read_only=True,
        server_id=settings.instance_id,
        namespace=ADMIN_NAMESPACE,
    )
