"""The official JS socket.io-client (npm) against the service, on every transport."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from .helpers import require_tool, token

JS_DIR = Path(__file__).parent / "js"


def js_client_ready() -> str:
    node = require_tool("node", "install Node.js 18+")
    if not (JS_DIR / "node_modules" / "socket.io-client").is_dir():
        message = "run: npm ci --prefix tests/js"
        if __import__("os").environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return node


@pytest.mark.parametrize("mode", ["websocket", "polling", "upgrade"])
async def test_js_client_speaks_the_whole_protocol(server, mode):
    node = js_client_ready()
    proc = await asyncio.create_subprocess_exec(
        node,
        str(JS_DIR / "scenario.js"),
        server.url,
        token("alice"),
        token("bob"),
        mode,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert proc.returncode == 0, (report, err.decode())

    assert report["join"] == {"ok": True, "roomId": "js", "history": []}
    assert report["joinedEvent"] == "js"
    assert report["userJoined"]["userId"] == "bob"
    assert report["send"]["ok"] is True
    received = report["received"]
    assert received["id"] == report["send"]["id"] and received["message"] == "hi from js"
    assert received["userId"] == "alice" and isinstance(received["timestamp"], int)
    assert report["privateReceived"]["fromUserId"] == "bob"
    assert report["privateReceived"]["id"] == report["private"]["id"]
    assert report["typing"] == {"ok": True} and report["typingStop"] == {"ok": True}
    assert report["typingEvent"] == {"userId": "bob", "roomId": "js"}
    assert report["typingStopEvent"] == {"userId": "bob", "roomId": "js"}
    assert [m["message"] for m in report["history"]["messages"]] == ["hi from js"]
    assert report["presence"]["users"] == ["alice", "bob"]
    assert report["badRoom"]["error"]["code"] == "invalid_payload"
    assert report["unknown"]["error"]["code"] == "unknown_event"
    assert report["notInRoom"]["error"]["code"] == "not_in_room"
    assert report["leave"]["ok"] is True and report["userLeft"]["userId"] == "bob"
    assert [m["id"] for m in report["recovery"]["missed"]] == [report["moreId"]]
    assert report["recovery"]["recovered"] is True
    assert report["transport"] == ("polling" if mode == "polling" else "websocket")
    assert report["refused"]["data"]["code"] == "unauthorized"
    assert report["refused"]["message"]
