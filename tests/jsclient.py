"""The official socket.io-client (tests/js/recovery.js) as a live process a test steers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from .helpers import require_tool

JS_DIR = Path(__file__).parent / "js"

Line = dict[str, Any]


def node_binary() -> str:
    node = require_tool("node", "install Node.js 18+")
    if not (JS_DIR / "node_modules" / "socket.io-client").is_dir():
        message = "run: npm ci --prefix tests/js"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return node


class JsClient:
    """Every line the client printed, in order, and a way to send it commands."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[Line] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            with contextlib.suppress(ValueError):
                line = json.loads(raw)
                async with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()

    async def command(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()

    async def wait(
        self, predicate: Callable[[Line], bool], timeout: float = 15, after: int = 0
    ) -> Line:
        """The first line from index ``after`` on that matches."""

        async def found() -> Line:
            async with self._changed:
                while True:
                    for line in self.lines[after:]:
                        if predicate(line):
                            return line
                    await self._changed.wait()

        try:
            return await asyncio.wait_for(found(), timeout)
        except TimeoutError:
            raise AssertionError(f"no matching line within {timeout}s: {self.lines}") from None

    async def event(self, name: str, timeout: float = 15, after: int = 0) -> Line:
        return await self.wait(lambda line: line.get("ev") == name, timeout, after)

    async def call(self, cmd: str, arg: str) -> Any:
        mark = len(self.lines)
        await self.command(f"{cmd} {arg}")
        line = await self.wait(lambda x: x.get("ev") == "ack" and x.get("cmd") == cmd, after=mark)
        assert "ack" in line, line
        return line["ack"]

    def messages(self, room: str | None = None) -> list[str]:
        """Ids of every ``message:received`` handed to the application, in order."""
        return [
            line["id"]
            for line in self.lines
            if line.get("ev") == "message" and (room is None or line["roomId"] == room)
        ]

    def texts(self) -> list[str]:
        return [line["text"] for line in self.lines if line.get("ev") == "message"]

    async def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()
        self._reader.cancel()


@contextlib.asynccontextmanager
async def js_client(url: str, transport: str, token: str) -> AsyncIterator[JsClient]:
    """The client connected (its first ``connect`` line seen), killed afterwards."""
    proc = await asyncio.create_subprocess_exec(
        node_binary(),
        str(JS_DIR / "recovery.js"),
        url,
        transport,
        token,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_PATH": str(JS_DIR / "node_modules")},
    )
    client = JsClient(proc)
    try:
        await client.event("connect")
        yield client
    finally:
        await client.close()
