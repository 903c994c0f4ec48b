"""Drive headless Chromium over the DevTools protocol with aiohttp's websocket client.

Why not Selenium or Playwright: neither is needed for "open tabs, run JS, take a picture";
one websocket to the browser target with flattened sessions does it, with no new dependency.
``--dump-dom`` is no substitute: it returns before long-polling has done anything.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    # several tabs at once: none of them may be throttled as a background tab
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--window-size=1100,800",
]


class CDPError(Exception):
    """A DevTools command failed, or a page-side expression threw."""


class Browser:
    """One Chromium process and one DevTools connection to it."""

    def __init__(self, proc: subprocess.Popen[bytes], http: aiohttp.ClientSession, ws: Any) -> None:
        self.proc = proc
        self._http = http
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())
        self.console: list[str] = []

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            future = self._pending.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)
            elif data.get("method") == "Runtime.consoleAPICalled":
                args = data["params"].get("args", [])
                self.console.append(
                    " ".join(str(a.get("value", a.get("description"))) for a in args)
                )
            elif data.get("method") == "Runtime.exceptionThrown":
                details = data["params"]["exceptionDetails"]
                self.console.append(f"exception: {details.get('exception', {}).get('description')}")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CDPError("DevTools connection closed"))

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message["id"]] = future
        await self._ws.send_str(json.dumps(message))
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def new_page(self, url: str) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"])
        await page.send("Runtime.enable")
        await page.send("Page.enable")
        await page.send("Page.navigate", {"url": url})
        await page.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")
        return page

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.send("Browser.close"), 5)
        await self._ws.close()
        await self._http.close()
        self._reader.cancel()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class Page:
    """One tab, reached through its flattened DevTools session."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.browser.send(method, params, self.session)

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` (promises are awaited)."""
        result = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CDPError(f"{expression!r} threw: {text}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15, interval: float = 0.1) -> Any:
        """Poll until ``expression`` is truthy; return its value."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            with contextlib.suppress(CDPError):
                last = await self.evaluate(expression)
                if last:
                    return last
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} still {last!r} after {timeout}s")
            await asyncio.sleep(interval)

    async def screenshot(self, path: Path) -> Path:
        """A PNG of the tab; it is brought to the front first (a background tab renders no
        frames, so the capture would never complete)."""
        await self.send("Page.bringToFront")
        data = await self.send("Page.captureScreenshot", {"format": "png"})
        path.write_bytes(base64.b64decode(data["data"]))
        return path


@contextlib.asynccontextmanager
async def launch(binary: str, profile_dir: Path, timeout: float = 20) -> AsyncIterator[Browser]:
    """Start Chromium with its DevTools port on a free port it picks and writes to the
    profile's ``DevToolsActivePort`` file (no race for a port we chose)."""
    profile_dir.mkdir(parents=True, exist_ok=True)
    log = (profile_dir / "chromium.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile_dir}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "about:blank",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    port_file = profile_dir / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    browser: Browser | None = None
    try:
        while not port_file.exists() or not port_file.read_text().strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"chromium did not start: {(profile_dir / 'chromium.log').read_text()[-2000:]}"
                )
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        http = aiohttp.ClientSession()
        async with http.get(f"http://127.0.0.1:{port}/json/version") as response:
            ws_url = (await response.json())["webSocketDebuggerUrl"]
        ws = await http.ws_connect(ws_url, max_msg_size=0)
        browser = Browser(proc, http, ws)
        yield browser
    finally:
        if browser is not None:
            await browser.close()
        elif proc.poll() is None:
            proc.kill()
            proc.wait(5)
        log.close()
