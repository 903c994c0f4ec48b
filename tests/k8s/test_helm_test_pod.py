"""The chart's ``helm test`` script, run for real against a service configured by the
rendered ConfigMap: the check an operator runs after an install must pass whatever room
access the chart configures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from k8s_bundle import RELEASE, one, parse, render

from tests.helpers import SECRET, spawn_service

pytestmark = pytest.mark.k8s

SECRET_PATH = "/var/run/secrets/socketio-service/jwt/jwt-secret"


@pytest.mark.parametrize("room_access", ["open", "claims"])
def test_helm_test_round_trips_against_the_rendered_config(
    room_access: str, tmp_path: Path
) -> None:
    docs = parse(render({"config": {"roomAccess": room_access}}))
    config = one(docs, "ConfigMap", f"{RELEASE}-socketio-service")["data"]
    assert config["ROOM_ACCESS"] == room_access
    [test] = one(docs, "Pod")["spec"]["containers"]
    script = test["args"][0]
    assert SECRET_PATH in script
    secret = tmp_path / "jwt-secret"
    secret.write_text(SECRET)
    service = spawn_service(env={k: v for k, v in config.items() if k != "PORT"})
    try:
        env = {
            **os.environ,
            **config,  # envFrom: the same ConfigMap as the service
            **{e["name"]: e["value"] for e in test["env"] if "value" in e},
            "HOME": str(tmp_path),
            "TARGET_URL": service.url,
            "TEST_TIMEOUT_SECONDS": "10",
        }
        result = subprocess.run(
            [sys.executable, "-c", script.replace(SECRET_PATH, str(secret))],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        service.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "round trip ok" in result.stdout
