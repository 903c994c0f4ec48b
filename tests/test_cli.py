"""The command line as a user runs it: dev mode, tokens, invalid settings, signals."""

from __future__ import annotations

import re
import subprocess
import sys

import jwt

from .helpers import SECRET, connect, free_port, spawn_service


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_token_command_mints_a_token_for_the_secret():
    result = run_cli("token", "--user", "alice", "--ttl", "1h", env={"JWT_SECRET": SECRET})
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 3600


def test_token_command_mints_a_rooms_claim():
    result = run_cli(
        "token", "--user", "alice", "--rooms", "support, team-42.*", env={"JWT_SECRET": SECRET}
    )
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["rooms"] == ["support", "team-42.*"] and claims["sub"] == "alice"


def test_token_command_without_secret_fails_clearly():
    result = run_cli("token", "--user", "alice")
    assert result.returncode == 2 and "JWT_SECRET" in result.stderr


def test_invalid_setting_stops_startup_with_one_line():
    result = run_cli(env={"JWT_SECRET": SECRET, "PORT": "not-a-port"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: PORT: ")
    result = run_cli("--history-size", "-5", env={"JWT_SECRET": SECRET})
    assert result.returncode == 2 and "HISTORY_SIZE" in result.stderr


def test_production_mode_requires_a_secret():
    result = run_cli()
    assert result.returncode == 2 and "JWT_SECRET" in result.stderr and "--dev" in result.stderr


async def test_dev_mode_prints_working_tokens_and_exits_zero_on_sigterm(clients):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service",
            "--dev",
            "--port",
            str(port),
            "--shutdown-delay-seconds",
            "0",
            "--shutdown-drain-seconds",
            "0.2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        assert f"http://127.0.0.1:{port}" in lines[0]
        tokens = dict(re.findall(r"dev token for '(\w+)'.*?: (\S+)", "".join(lines)))
        assert set(tokens) == {"alice", "bob"}
        client = await connect(f"http://127.0.0.1:{port}", None, auth={"token": tokens["bob"]})
        ack = await client.call("join:room", "dev")
        assert ack["ok"]
        await client.close()
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


async def test_flags_override_environment(clients):
    proc = spawn_service(env={"MAX_MESSAGE_BYTES": "1000"}, args=["--max-message-bytes", "5"])
    try:
        client = await connect(proc.url, "alice")
        clients.append(client)
        await client.call("join:room", "f")
        ack = await client.call("message:send", {"roomId": "f", "message": "123456"})
        assert ack["error"]["code"] == "too_large" and ack["error"]["maxBytes"] == 5
    finally:
        await clients.pop().close()
        assert proc.stop() == 0
