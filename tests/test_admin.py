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


def test_a_weak_admin_password_refuses_to_start_with_one_clear_line():
    with pytest.raises(RuntimeError) as refused:
        spawn_service({"ADMIN_UI": "true", "ADMIN_PASSWORD": "hunter2-hunter2"})  # 15 chars
    lines = [line for line in str(refused.value).splitlines() if line.strip()]
    assert lines[-1].endswith("error: ADMIN_PASSWORD: must be at least 16 characters"), lines


async def raw_admin_attempts(url: str, passwords: list[str], headers: dict[str, str]) -> list[str]:
    """Many ``40/admin,{...}`` on one Engine.IO session, as an attacker would: the code
    of each refusal ("ok" when accepted)."""
    import json

    from .rawclient import Closed, RawWebSocket

    codes = []
    async with aiohttp.ClientSession(headers=headers) as http:
        raw = await RawWebSocket(url, http).open()
        try:
            for password in passwords:
                try:
                    await raw.connect({"username": "ops", "password": password}, namespace="/admin")
                except Closed as exc:
                    body = str(exc).split("44/admin,", 1)[1]
                    codes.append(json.loads(body)["data"]["code"])
                else:
                    codes.append("ok")
        finally:
            await raw.close()
    return codes


async def test_failed_admin_logins_are_limited_and_logged():
    env = {"ADMIN_UI": "true", "ADMIN_USERNAME": "ops", "ADMIN_PASSWORD": PASSWORD}
    guesses = [f"guess-{n:04d}-not-it" for n in range(40)]
    with service(env) as proc:
        codes = await raw_admin_attempts(proc.url, [*guesses, PASSWORD], {})
        accepted, error = await admin_connect(proc.url, {"username": "ops", "password": PASSWORD})
        proc.stop()
        logs = proc.output()
    assert codes[:10] == ["unauthorized"] * 10
    assert set(codes[10:]) == {"rate_limited"}  # the right password too, once spent
    assert not accepted and error["data"]["code"] == "rate_limited"
    assert logs.count("admin_login_failed") == 10
    assert logs.count("admin_login_rate_limited") >= 31
    assert not any(guess in logs for guess in guesses) and PASSWORD not in logs


async def test_the_admin_namespace_is_off_the_public_route():
    """Through an ingress (a trusted proxy that adds X-Forwarded-For) the admin namespace
    refuses every client, right password or not; from this host (kubectl port-forward)
    it answers."""
    env = {"ADMIN_UI": "true", "ADMIN_USERNAME": "ops", "ADMIN_PASSWORD": PASSWORD}
    with service(env) as proc:
        public = {"X-Forwarded-For": "203.0.113.9"}
        codes = await raw_admin_attempts(proc.url, [PASSWORD], public)
        assert codes == ["forbidden"]
        accepted, error = await admin_connect(
            proc.url, {"username": "ops", "password": PASSWORD}, headers=public
        )
        assert not accepted and error["data"]["code"] == "forbidden"
        # a spoofed loopback hop left of the proxy's entry changes nothing
        spoofed = {"X-Forwarded-For": "127.0.0.1, 203.0.113.9"}
        assert await raw_admin_attempts(proc.url, [PASSWORD], spoofed) == ["forbidden"]
        # the chat itself is reachable through the proxy
        sio = socketio.AsyncClient(reconnection=False)
        await sio.connect(
            proc.url, auth={"token": token()}, transports=["websocket"], headers=public
        )
        await sio.disconnect()
        accepted, _ = await admin_connect(proc.url, {"username": "ops", "password": PASSWORD})
        assert accepted
