"""python-socketio's admin UI: off by default; when on, ``/admin`` demands the credentials.

Each test runs the service as its own process: ``instrument()`` patches python-engineio's
socket class process-wide, which must not leak into other tests' servers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import socketio

from .helpers import ServiceProcess, spawn_service, token

PASSWORD = "admin-password-for-tests-0123"
ADMIN_ORIGIN = "https://admin.socket.io"


@contextlib.contextmanager
def service(env: dict[str, str]) -> Iterator[ServiceProcess]:
    proc = spawn_service({"SHUTDOWN_DELAY_SECONDS": "0", "SHUTDOWN_DRAIN_SECONDS": "0.2", **env})
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.output()


async def admin_connect(url: str, auth: Any, **kwargs: Any) -> tuple[bool, Any]:
    """Try the ``/admin`` namespace; (accepted, connect_error data or first server_stats)."""
    sio = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    stats: list[Any] = []
    sio.on("connect_error", lambda data: errors.append(data), namespace="/admin")
    sio.on("server_stats", lambda data: stats.append(data), namespace="/admin")
    with contextlib.suppress(socketio.exceptions.ConnectionError):
        await sio.connect(
            url,
            namespaces=["/admin"],
            auth=auth,
            transports=["websocket"],
            wait_timeout=5,
            **kwargs,
        )
    accepted = "/admin" in sio.namespaces
    await sio.disconnect()
    return accepted, errors[-1] if errors else None


@pytest.mark.parametrize("env", [{}, {"ADMIN_UI": "false", "ADMIN_PASSWORD": PASSWORD}])
async def test_admin_namespace_does_not_exist_when_off(env):
    with service(env) as proc:
        accepted, error = await admin_connect(proc.url, {"username": "admin", "password": PASSWORD})
        assert not accepted and error is not None
        # the chat namespace is unaffected
        sio = socketio.AsyncClient(reconnection=False)
        await sio.connect(proc.url, auth={"token": token()}, transports=["websocket"])
        await sio.disconnect()


async def test_admin_namespace_requires_the_credentials():
    env = {"ADMIN_UI": "true", "ADMIN_USERNAME": "ops", "ADMIN_PASSWORD": PASSWORD}
    with service(env) as proc:
        for auth in (
            None,
            {},
            {"username": "ops"},
            {"username": "ops", "password": "wrong"},
            {"username": "admin", "password": PASSWORD},
            {"username": "ops", "password": PASSWORD + "x"},
            {"username": ["ops"], "password": [PASSWORD]},
            "ops:" + PASSWORD,
            {"token": token()},
        ):
            accepted, error = await admin_connect(proc.url, auth)
            assert not accepted, f"accepted {auth!r}"
            assert error is not None
        accepted, _ = await admin_connect(proc.url, {"username": "ops", "password": PASSWORD})
        assert accepted
        # the hosted admin UI's origin may reach the server; other foreign origins may not
        accepted, _ = await admin_connect(
            proc.url,
            {"username": "ops", "password": PASSWORD},
            headers={"Origin": ADMIN_ORIGIN},
        )
        assert accepted
        async with aiohttp.ClientSession() as http:
            url = f"{proc.url}/socket.io/?EIO=4&transport=polling"
            async with http.get(url, headers={"Origin": "https://evil.example"}) as response:
                assert response.status == 400
            async with http.get(url, headers={"Origin": ADMIN_ORIGIN}) as response:
                assert response.status == 200


def test_admin_ui_without_password_refuses_to_start():
    with pytest.raises(RuntimeError, match="ADMIN_PASSWORD"):
        spawn_service({"ADMIN_UI": "true", "ADMIN_PASSWORD": ""})
