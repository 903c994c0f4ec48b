"""A bound on the time a client may take to send a request's headers (slowloris).

aiohttp 3.14 has no header timeout: its ``keepalive_timeout`` (default 3630 s) is the only
timer on a connection that has not sent a complete request, and it must stay longer than
the load balancer's idle timeout or the proxy races the server closing its idle
connections. So a client sending one header line every few seconds holds a connection
(and a file descriptor) for an hour.

Here each connection's HTTP parser is wrapped: the clock starts when the connection opens
and when the first byte of a new request arrives between requests, stops when the parser
returns a complete request head, and at ``timeout`` the connection is aborted. Idle
keep-alive connections (no byte of a next request yet) and request bodies are not timed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .. import keys

log = logging.getLogger(__name__)


class _TimedParser:
    """Forwards to aiohttp's request parser; times each request head."""

    __slots__ = ("_armed_at", "_handler", "_inner", "_on_timeout", "_timeout", "_timer")

    def __init__(
        self, inner: Any, handler: Any, timeout: float, on_timeout: Callable[[], None]
    ) -> None:
        self._inner = inner
        self._handler = handler
        self._timeout = timeout
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = -1
        self._on_timeout = on_timeout

    def arm(self) -> None:
        if self._timer is None:
            self._armed_at = self._handler._request_count
            self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expired)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _between_requests(self) -> bool:
        handler = self._handler
        return handler._current_request is None and not handler._messages

    def feed_data(self, data: bytes) -> Any:
        if data and self._between_requests():
            self.arm()  # the first bytes of a request head
        result = self._inner.feed_data(data)
        if result[0]:
            self.disarm()  # a complete request head
        return result

    def _expired(self) -> None:
        self._timer = None
        handler = self._handler
        # a request completed since the clock started: that one was not slow
        if handler._request_count != self._armed_at or not self._between_requests():
            return
        transport = handler.transport
        if transport is not None and not transport.is_closing():
            self._on_timeout()
            log.info("request headers timed out", extra={"event": "header_timeout"})
            transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def install_header_timeout(runner: web.AppRunner) -> None:
    """Time every new connection's request heads (``HTTP_HEADER_TIMEOUT_SECONDS``; 0 leaves
    aiohttp as it is); call after ``runner.setup()``. Timeouts are counted in
    ``socketio_http_header_timeouts_total``."""
    app = runner.app
    timeout = app[keys.SETTINGS].http_header_timeout_seconds
    time_request_heads(runner.server, timeout, app[keys.METRICS].http_header_timeouts.inc)


@functools.cache
def _warn_untimed() -> None:
    """Once: aiohttp changed, request heads are not timed (tests/test_engine_shape.py says
    what moved)."""
    log.warning(
        "aiohttp's request handler has no parser to time: HTTP_HEADER_TIMEOUT_SECONDS is off",
        extra={"event": "header_timeout_unavailable"},
    )


def time_request_heads(
    server: web.Server | None, timeout: float, on_timeout: Callable[[], None] = lambda: None
) -> None:
    """Time every new connection's request heads on ``server`` (``AppRunner.server``)."""
    if server is None or timeout <= 0:
        return
    made = server.connection_made

    def connection_made(handler: Any, transport: asyncio.Transport) -> None:
        made(handler, transport)
        parser = getattr(handler, "_parser", None)
        if parser is None:
            _warn_untimed()
        elif not isinstance(parser, _TimedParser):
            timed = _TimedParser(parser, handler, timeout, on_timeout)
            handler._parser = timed
            timed.arm()  # a connection that sends nothing at all is timed too

    server.connection_made = connection_made  # type: ignore[method-assign]


__all__ = ["install_header_timeout", "time_request_heads"]
