"""Test helpers: free ports, real servers (in-process or as a subprocess), real clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import pytest
import socketio
from aiohttp import web

from service.app import create_app
from service.auth import mint_token
from service.config import Settings
from service.engine.headers import install_header_timeout

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-0123456789-abcdefghijklmnop"
WEBSOCKET_DRIVER = os.environ.get("WEBSOCKET_DRIVER", "fast").strip().lower() or "fast"


def terminate(proc: subprocess.Popen[Any] | None, timeout: float = 10) -> None:
    """Stop a helper process (a proxy, Prometheus, a Redis): SIGTERM, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_tool(name: str, hint: str) -> str:
    """The tool's path; a failure under CI (it must be installed), a skip elsewhere."""
    path = shutil.which(name)
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{name} is required in CI: {hint}")
    pytest.skip(f"{name} not installed: {hint}")


def tool_cannot(name: str, reason: str, hint: str) -> NoReturn:
    """The installed tool cannot do this test's job (e.g. a Redis built without TLS): a
    failure under CI, where the full tool must be installed, a skip with the reason elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{name} {reason}; CI needs the full tool: {hint}")
    pytest.skip(f"{name} {reason}: {hint}")


def token(user: str = "alice", ttl: float = 3600, secret: str = SECRET) -> str:
    return mint_token(secret, user, ttl)


def make_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "jwt_secret": SECRET,
        "host": "127.0.0.1",
        "port": 0,
        "log_format": "text",
        "instance_id": "test",
        "shutdown_delay_seconds": 0.0,
        "shutdown_drain_seconds": 0.5,
        # python-socketio's polling client waits for the pending GET on disconnect
        "ping_interval": 2.0,
        "ping_timeout": 5.0,
        # CI runs the protocol suite with both websocket drivers (subprocess services
        # inherit WEBSOCKET_DRIVER from the environment)
        "websocket_driver": WEBSOCKET_DRIVER,
    }
    base.update(overrides)
    return Settings.from_env({}, **base)


@dataclass
class RunningServer:
    url: str
    app: web.Application
    runner: web.AppRunner


@contextlib.asynccontextmanager
async def running_server(
    settings: Settings | None = None, **overrides: Any
) -> AsyncIterator[RunningServer]:
    """An in-process server on a free port, in the test's event loop."""
    settings = settings or make_settings(**overrides)
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
    await runner.setup()
    install_header_timeout(runner)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield RunningServer(f"http://{host}:{port}", app, runner)
    finally:
        await runner.cleanup()


@dataclass
class Client:
    """python-socketio's AsyncClient that records every event it receives."""

    sio: socketio.AsyncClient
    events: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    offsets: list[Any] = field(default_factory=list)
    """The extra last argument of each ``message:received`` (the recovery offset)."""
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def call(self, event: str, data: Any = None, timeout: float = 5) -> Any:
        return await self.sio.call(event, data, timeout=timeout)

    async def wait_for(
        self,
        event: str,
        predicate: Callable[[Any], bool] = lambda _: True,
        timeout: float = 5,
    ) -> Any:
        async def found() -> Any:
            async with self._changed:
                while True:
                    for item in self.events[event]:
                        if predicate(item):
                            return item
                    await self._changed.wait()

        return await asyncio.wait_for(found(), timeout)

    async def _record(self, event: str, *args: Any) -> None:
        # connection state recovery: room messages end with their offset and joined:room
        # with a null; the payload is what tests look at
        if event in ("message:received", "joined:room") and len(args) == 2:
            if event == "message:received":
                self.offsets.append(args[1])
            args = args[:1]
        async with self._changed:
            self.events[event].append(args[0] if len(args) == 1 else args)
            self._changed.notify_all()

    async def close(self) -> None:
        """Disconnect without waiting for a pending long-poll (python-engineio's client waits
        up to ping_interval + ping_timeout for it)."""
        if not self.sio.connected:
            await self.sio.disconnect()
            return
        for namespace in list(self.sio.namespaces):
            await self.sio.eio.send(
                self.sio.packet_class(socketio.packet.DISCONNECT, namespace=namespace).encode()
            )
        await self.sio.eio.disconnect(abort=True)


async def connect(
    url: str,
    user: str | None = "alice",
    *,
    auth: Any = None,
    transports: list[str] | None = None,
    headers: dict[str, str] | None = None,
    http_session: aiohttp.ClientSession | None = None,
) -> Client:
    """Connect a recording client; raises ``socketio.exceptions.ConnectionError`` if refused."""
    sio = socketio.AsyncClient(reconnection=False, http_session=http_session)
    client = Client(sio)

    async def catch_all(event: str, *args: Any) -> None:
        await client._record(event, *args)

    sio.on("*", catch_all)
    if auth is None and user is not None:
        auth = {"token": token(user)}
    await sio.connect(
        url,
        auth=auth,
        transports=transports or ["websocket"],
        headers=headers or {},
        wait_timeout=5,
    )
    return client


async def connect_error(url: str, **kwargs: Any) -> dict[str, Any]:
    """Connect expecting a refusal; return the refusal's ``data`` ({code, message})."""
    sio = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    sio.on("connect_error", lambda data: errors.append(data.get("data", data)))
    with contextlib.suppress(socketio.exceptions.ConnectionError):
        await sio.connect(url, transports=["websocket"], wait_timeout=5, **kwargs)
    connected = sio.connected
    await sio.disconnect()
    assert not connected, "the connection was accepted"
    assert errors, "no connect_error received"
    return errors[-1]


@dataclass
class ServiceProcess:
    """``python -m service`` as a real process, for signals, exit codes and the CLI."""

    proc: subprocess.Popen[str]
    url: str
    port: int

    def stop(self, sig: int = 15, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def output(self) -> str:
        out, _ = self.proc.communicate(timeout=30)
        return out


def spawn_service(
    env: dict[str, str] | None = None, args: list[str] | None = None, ready_timeout: float = 15
) -> ServiceProcess:
    port = free_port()
    full_env = {
        **os.environ,
        "JWT_SECRET": SECRET,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", *(args or [])],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited early: {proc.communicate()[0]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return ServiceProcess(proc, url, port)
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"service did not listen within {ready_timeout}s")
