"""The command line as a user runs it: dev mode, tokens, invalid settings, signals."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import jwt

from service.auth import TokenVerifier
from service.config import Settings

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


def test_token_command_refuses_what_the_server_would_refuse():
    """A token the server would reject is not minted: a short secret, a bad ``sub``, or a
    server that accepts no HMAC algorithm."""
    result = run_cli("token", "--user", "alice", "--jwt-secret", "short")
    assert result.returncode == 2 and result.stdout == ""
    assert "JWT_SECRET: must be at least 32 characters" in result.stderr
    for user in ("", "u" * 257):
        result = run_cli("token", "--user", user, env={"JWT_SECRET": SECRET})
        assert result.returncode == 2 and result.stdout == "", user
        assert "--user" in result.stderr
    result = run_cli(
        "token", "--user", "alice", env={"JWT_SECRET": SECRET, "JWT_ALGORITHMS": "RS256"}
    )
    assert result.returncode == 2 and result.stdout == ""
    assert "JWT_ALGORITHMS" in result.stderr


def test_token_command_mints_what_the_server_accepts():
    """The same environment configures both: algorithm, audience, issuer, a padded secret."""
    env = {
        "JWT_SECRET": f"  {SECRET * 2}\n",  # HS512 wants 64+ bytes
        "JWT_ALGORITHMS": "HS512",
        "JWT_AUDIENCE": "chat",
        "JWT_ISSUER": "https://id.example.com",
    }
    result = run_cli("token", "--user", "u" * 256, env=env)
    assert result.returncode == 0, result.stderr
    claims = TokenVerifier(Settings.from_env(env)).verify(result.stdout.strip())
    assert claims.user_id == "u" * 256


def test_port_in_use_is_one_line_and_a_non_zero_exit():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("--port", str(port), "--host", "127.0.0.1", env={"JWT_SECRET": SECRET})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: PORT {port}: address already in use"


def test_unreachable_redis_at_startup_is_logged_once_without_the_password():
    dead = free_port()
    proc = spawn_service(
        env={
            "REDIS_URL": f"redis://:hunter2-secret@127.0.0.1:{dead}/0",
            "LOG_FORMAT": "text",
            "SHUTDOWN_DELAY_SECONDS": "0",
        }
    )
    time.sleep(1.5)  # a few monitor rounds: still one line
    assert proc.stop() == 0
    out = proc.output()
    warnings = [line for line in out.splitlines() if "redis unreachable" in line]
    assert len(warnings) == 1, out
    assert "WARNING" in warnings[0] and f"127.0.0.1:{dead}" in warnings[0]
    assert "hunter2" not in out


NO_DELAY = ("--shutdown-delay-seconds", "0")


def dev_banner(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """Start ``--dev`` and return the process with its banner (up to the "connect with" line)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--dev", "--port", str(free_port()), *NO_DELAY],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", **env},
    )
    assert proc.stdout is not None
    lines = []
    while not lines or not lines[-1].startswith("connect with"):
        line = proc.stdout.readline()
        assert line, f"the banner ended early: {lines}"
        lines.append(line)
    return proc, "".join(lines)


def test_dev_banner_says_tokens_die_with_an_ephemeral_secret():
    proc, banner = dev_banner({})
    proc.terminate()
    assert proc.wait(15) == 0
    assert "stop working when this process stops" in banner
    assert "JWT_SECRET=" in banner and "make run" in banner
    # with a fixed secret the tokens survive a restart, and the hint is gone
    proc, banner = dev_banner({"JWT_SECRET": SECRET})
    proc.terminate()
    assert proc.wait(15) == 0
    assert "stop working" not in banner
    tokens = re.findall(r"dev token for '\w+'.*?: (\S+)", banner)
    assert len(tokens) == 2
    for minted in tokens:
        jwt.decode(minted, SECRET, algorithms=["HS256"])
