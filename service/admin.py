"""python-socketio's admin UI instrumentation: off by default, always behind credentials.

The ``/admin`` namespace rides on the same Engine.IO endpoint as the chat (``/socket.io``),
so whatever publishes the chat (an Ingress) would publish it too. Three locks keep it
private:

* only clients whose address (resolved like the handshake limit's, through
  ``TRUSTED_PROXIES``) is in ``ADMIN_ALLOWED_NETWORKS`` may try (loopback by default:
  ``kubectl port-forward``); anyone else is refused ``forbidden`` without a password check;
* failed logins are logged and limited per address and per instance (``rate_limited``
  once spent, correct password or not);
* ``ADMIN_PASSWORD`` must be at least ``MIN_ADMIN_PASSWORD_CHARS`` long (config.py).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import socketio

from .config import Settings
from .engine.guard import environ_client_address, parse_networks

log = logging.getLogger(__name__)

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


FAILED_LOGINS_PER_ADDRESS = 10
"""Failed admin logins one address may make at once; then one more per
``FAILED_LOGIN_REFILL_SECONDS``."""
FAILED_LOGINS_PER_INSTANCE = 100
"""Failed admin logins from all addresses together (against distributed guessing)."""
FAILED_LOGIN_REFILL_SECONDS = 6.0
MAX_TRACKED_ADDRESSES = 10_000


class FailedLogins:
    """Token buckets of failed logins, per address and for the whole instance."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    def _tokens(self, key: str, capacity: float, now: float) -> float:
        tokens, updated = self._buckets.get(key, (capacity, now))
        return min(capacity, tokens + (now - updated) / FAILED_LOGIN_REFILL_SECONDS)

    def allowed(self, address: str, now: float | None = None) -> bool:
        """Whether ``address`` may try a password now."""
        now = time.monotonic() if now is None else now
        return (
            self._tokens(address, FAILED_LOGINS_PER_ADDRESS, now) >= 1
            and self._tokens("*", FAILED_LOGINS_PER_INSTANCE, now) >= 1
        )

    def failed(self, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if len(self._buckets) >= MAX_TRACKED_ADDRESSES:
            self._buckets.clear()  # all refill within minutes; "*" restarts full
        for key, capacity in (
            (address, FAILED_LOGINS_PER_ADDRESS),
            ("*", FAILED_LOGINS_PER_INSTANCE),
        ):
            self._buckets[key] = (max(0.0, self._tokens(key, capacity, now) - 1), now)


def _refused(code: str, message: str) -> socketio.exceptions.ConnectionRefusedError:
    return socketio.exceptions.ConnectionRefusedError(message, {"code": code, "message": message})


def admin_gate(
    settings: Settings, admin_connect: Callable[..., Any], failures: FailedLogins | None = None
) -> Callable[..., Any]:
    """The ``/admin`` connect handler: address allow-list and failed-login limit, then
    python-socketio's own handler (which checks the credentials)."""
    allowed = parse_networks(settings.admin_allowed_networks)
    trusted = parse_networks(settings.trusted_proxies)
    failures = failures or FailedLogins()

    async def connect(sid: str, environ: Mapping[str, Any], client_auth: Any = None) -> Any:
        address = environ_client_address(environ, trusted)
        if not _inside(address, allowed):
            log.warning(
                "admin login from a refused address",
                extra={"event": "admin_login_refused", "address": address},
            )
            raise _refused("forbidden", "the admin UI is not reachable from this address")
        if not failures.allowed(address):
            log.warning(
                "admin login rate limited",
                extra={"event": "admin_login_rate_limited", "address": address},
            )
            raise _refused("rate_limited", "too many failed logins, retry later")
        try:
            return await admin_connect(sid, environ, client_auth)
        except socketio.exceptions.ConnectionRefusedError:
            failures.failed(address)
            log.warning(
                "admin login failed", extra={"event": "admin_login_failed", "address": address}
            )
            raise _refused("unauthorized", "authentication failed") from None

    return connect


def _inside(address: str, networks: tuple[Any, ...]) -> bool:
    """Whether ``address`` (an IPv4 address or, as the guard keys them, an IPv6 /64) lies
    entirely inside one of ``networks``."""
    try:
        net = ipaddress.ip_network(address, strict=False)
    except ValueError:
        return False
    return any(net.version == allowed.version and net.subnet_of(allowed) for allowed in networks)


def enable_admin_ui(sio: socketio.AsyncServer, settings: Settings) -> None:
    """Serve the ``/admin`` namespace for https://admin.socket.io (ADMIN_UI=true).

    Read-only and in production mode (no per-socket bookkeeping on the hot path); the UI's
    origin is added to the CORS policy so the hosted UI can reach the server.
    """
    if not settings.admin_password:
        raise ValueError("ADMIN_PASSWORD: required when ADMIN_UI is on")
    allow_origin(sio.eio, ADMIN_UI_ORIGIN)
    admin = sio.instrument(
        auth=credentials_check(settings.admin_username, settings.admin_password),
        mode="production",
        read_only=True,
        server_id=settings.instance_id,
        namespace=ADMIN_NAMESPACE,
    )
    # replaces the connect handler instrument() registered, wrapping it
    sio.on("connect", admin_gate(settings, admin.admin_connect), namespace=ADMIN_NAMESPACE)
