"""The ``--dev`` demo page in real headless Chromium: two tabs on two instances (cluster
mode) chat, see each other's presence and typing, and one recovers after a dropped connection.

Needs ``chromium`` (Debian package) and the npm socket.io client (``npm ci --prefix
tests/js``); under ``CI`` a missing one fails the test instead of skipping it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from service.demo import find_client_js

from .browser.cdp import Page, launch
from .helpers import ServiceProcess, require_tool, spawn_service


def require_client_js() -> Path:
    path = find_client_js()
    if path is not None:
        return path
    hint = "run `npm ci --prefix tests/js` (socket.io-client for the demo page)"
    if os.environ.get("CI"):
        pytest.fail(f"the socket.io JS client is required in CI: {hint}")
    pytest.skip(f"socket.io JS client not installed: {hint}")


@pytest.fixture
def dev_instances(redis_url: str) -> Iterator[list[ServiceProcess]]:
    """Two ``--dev`` instances sharing one Redis (and the test JWT secret)."""
    procs: list[ServiceProcess] = []
    try:
        for n in range(2):
            procs.append(
                spawn_service(
                    env={
                        "REDIS_URL": redis_url,
                        "INSTANCE_ID": f"dev{n}",
                        "LOG_LEVEL": "warning",
                        "SHUTDOWN_DELAY_SECONDS": "0",
                        "SHUTDOWN_DRAIN_SECONDS": "0.2",
                    },
                    args=["--dev"],
                )
            )
        yield procs
    finally:
        for proc in procs:
            proc.stop()


async def type_and_send(page: Page, text: str) -> None:
    """Type into the composer (an ``input`` event, as a keyboard would) and press Send."""
    await page.evaluate(
        f"""(() => {{
            const input = document.querySelector('#text');
            input.value = {json.dumps(text)};
            input.dispatchEvent(new Event('input', {{bubbles: true}}));
        }})()"""
    )


async def press_send(page: Page) -> None:
    await page.evaluate("document.querySelector('#send').click()")
    await page.wait_for("document.querySelector('#text').value === ''")


def texts(expected: list[str]) -> str:
    """A JS condition: the page shows exactly these messages, in this order."""
    wanted = json.dumps(json.dumps(expected, separators=(",", ":")))
    return f"JSON.stringify(window.demo.messages.map(m => m.message)) === {wanted}"


async def test_demo_routes_only_in_dev_and_token_minting(dev_instances):
    async with aiohttp.ClientSession() as http:
        url = dev_instances[0].url
        async with http.get(f"{url}/") as page:
            assert page.status == 200 and "socket.io.min.js" in await page.text()
        async with http.get(f"{url}/dev/token", params={"user": "alice"}) as resp:
            body = await resp.json()
            assert resp.status == 200 and body["user"] == "alice" and body["token"].count(".") == 2
        async with http.get(f"{url}/dev/token", params={"user": "no spaces"}) as resp:
            assert resp.status == 400
        async with http.get(f"{url}/demo/demo.js") as resp:
            assert resp.status == 200
    production = spawn_service(env={"SHUTDOWN_DELAY_SECONDS": "0"})
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/", "/dev/token?user=alice", "/demo/demo.js"):
                async with http.get(production.url + path) as resp:
                    assert resp.status == 404, path
    finally:
        production.stop()


@pytest.mark.slow
async def test_two_tabs_on_two_instances_chat_and_recover(dev_instances, tmp_path, capsys):
    chromium = require_tool("chromium", "apt-get install -y --no-install-recommends chromium")
    require_client_js()
    a, b = dev_instances
    async with launch(chromium, tmp_path / "profile") as browser:
        alice = await browser.new_page(f"{a.url}/?user=alice&room=lobby&autoconnect=1")
        bob = await browser.new_page(f"{b.url}/?user=bob&room=lobby&autoconnect=1&drop_ms=1500")
        for page in (alice, bob):
            await page.wait_for("window.demo.joinedOnce && window.demo.status === 'connected'")
            # presence is cluster-wide: each instance knows the other's user
            await page.wait_for("window.demo.present.join() === 'alice,bob'")

        await type_and_send(alice, "hello bob, from instance A")
        await bob.wait_for("document.querySelector('#typing').textContent === 'alice is typing…'")
        await press_send(alice)
        for page in (alice, bob):
            await page.wait_for(texts(["hello bob, from instance A"]))
        await bob.wait_for("document.querySelector('#typing').textContent === ''")

        # bob's transport drops for 1.5 s; what alice says meanwhile comes back by recovery
        await bob.evaluate("document.querySelector('#drop').click()")
        await bob.wait_for("!window.demo.socket.connected")
        for text in ("while you were away", "and one more"):
            await type_and_send(alice, text)
            await press_send(alice)
        expected = ["hello bob, from instance A", "while you were away", "and one more"]
        await bob.wait_for(texts(expected))
        await bob.wait_for("window.demo.recoveries.length === 1")
        assert await bob.evaluate("window.demo.recoveries") == [{"missed": 2, "recovered": True}]
        # Socket.IO connection state recovery did it: no rejoin by the page
        assert await bob.evaluate("window.demo.socket.recovered") is True
        recovered = await bob.evaluate("window.demo.messages.map(m => m.recovered)")
        assert recovered == [False, True, True]
        await type_and_send(bob, "back, thanks")
        await press_send(bob)
        await alice.wait_for(texts([*expected, "back, thanks"]))
        await bob.wait_for("document.querySelectorAll('#messages li.recovered').length === 2")

        shots = [
            await alice.screenshot(tmp_path / "demo-alice-instance-a.png"),
            await bob.screenshot(tmp_path / "demo-bob-instance-b.png"),
        ]
        for page in (alice, bob):
            assert await page.evaluate("window.demo.errors") == []
        assert not [line for line in browser.console if line.startswith("exception")]
    with capsys.disabled():
        for shot in shots:
            assert shot.stat().st_size > 10_000
            print(f"\ndemo screenshot: {shot}")
