"""Structured logs: JSON in containers, text on a terminal, instance id and event on each
record; never a token, never a message body (not even at debug level)."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys

import pytest

from .helpers import ROOT, SECRET, connect, connect_error, spawn_service, token

BODY = "body-canary-5e1f0c"
PRIVATE_BODY = "private-canary-9b2d44"


async def exercise(url: str, user_token: str) -> None:
    """Handshakes (accepted and refused), room and private messages, errors."""
    alice = await connect(url, auth={"token": user_token})
    bob = await connect(url, "bob", headers={"Authorization": f"Bearer {token('bob')}"})
    try:
        await alice.call("join:room", "lobby")
        await bob.call("join:room", "lobby")
        assert (await alice.call("message:send", {"roomId": "lobby", "message": BODY}))["ok"]
        await bob.wait_for("message:received")
        ack = await alice.call("message:private", {"targetUserId": "bob", "message": PRIVATE_BODY})
        assert ack["ok"]
        # refused and malformed events, which carry the body too
        await alice.call("message:send", {"roomId": "nowhere", "message": BODY})
        await alice.call("message:send", {"roomId": "lobby", "message": BODY * 300})
        await alice.call("no:such:event", {"message": BODY})
    finally:
        await alice.sio.disconnect()
        await bob.sio.disconnect()
    refused = await connect_error(url, auth={"token": user_token + "tampered"})
    assert refused["code"] == "unauthorized"
    expired = token("carol", ttl=-3600)
    assert (await connect_error(url, auth={"token": expired}))["code"] == "unauthorized"


@pytest.mark.parametrize("level", ["info", "debug", "DEBUG"])
async def test_no_token_and_no_message_body_in_the_logs(level):
    proc = spawn_service(
        {
            "LOG_LEVEL": level,
            "INSTANCE_ID": "pod-7",
            "SHUTDOWN_DELAY_SECONDS": "0",
            "SHUTDOWN_DRAIN_SECONDS": "0.2",
        }
    )
    user_token = token("alice")
    try:
        await exercise(proc.url, user_token)
    finally:
        assert proc.stop(signal.SIGTERM) == 0
    output = proc.output()
    signature = user_token.rsplit(".", 1)[1]
    for secret in (user_token, signature, SECRET, BODY, PRIVATE_BODY):
        assert secret not in output, f"{secret[:12]}... leaked into the logs"

    records = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert records, "no log output"
    for record in records:
        assert record["instance"] == "pod-7"
        assert {"ts", "level", "logger", "msg"} <= set(record)
    events = {record.get("event") for record in records}
    assert {"listening", "connect_error", "shutdown", "drain_start", "stopped"} <= events
    refusals = [r for r in records if r.get("event") == "connect_error"]
    assert {r.get("code") for r in refusals} == {"unauthorized"}
    if level.lower() == "debug":
        assert any(r["level"] == "debug" for r in records)
    else:
        assert not any(r["level"] == "debug" for r in records)


async def test_text_format_carries_instance_and_event():
    proc = spawn_service(
        {
            "LOG_FORMAT": "text",
            "INSTANCE_ID": "pod-9",
            "SHUTDOWN_DELAY_SECONDS": "0",
            "SHUTDOWN_DRAIN_SECONDS": "0.2",
        }
    )
    user_token = token("alice")
    try:
        await exercise(proc.url, user_token)
    finally:
        assert proc.stop(signal.SIGTERM) == 0
    output = proc.output()
    assert user_token not in output and BODY not in output
    lines = output.splitlines()
    assert lines and all(not line.startswith("{") for line in lines)
    listening = next(line for line in lines if "event=listening" in line)
    assert "[pod-9]" in listening and "INFO" in listening


def _log_format_seen(stderr_is_terminal: bool) -> str:
    """The LOG_FORMAT the service picks by itself, with stderr a pipe or a terminal."""
    code = (
        "from service.config import Settings;"
        f"print(Settings.from_env({{'JWT_SECRET': {SECRET!r}}}).log_format)"
    )
    env = {k: v for k, v in os.environ.items() if k != "LOG_FORMAT"}
    if not stderr_is_terminal:
        result = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.strip()
    primary, secondary = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=secondary,
            text=True,
            check=True,
        )
    finally:
        os.close(secondary)
        os.close(primary)
    return result.stdout.strip()


def test_json_in_containers_text_on_a_terminal():
    assert _log_format_seen(stderr_is_terminal=False) == "json"
    assert _log_format_seen(stderr_is_terminal=True) == "text"
