#!/usr/bin/env python3
"""Measure what a hostile client gets out of one instance: the figures of the attacks table
in docs/reliability.md.

Spawns ``python -m service`` from ``--source`` (default: this checkout) as a real process,
in embedded mode, and runs each attack with raw HTTP / Engine.IO / Socket.IO frames:

* ``empty-sid``: polling handshakes with ``sid=`` from one address behind the (trusted,
  loopback) proxy: accepted, refused, sessions held, RSS, readiness, and how long an
  ordinary client is refused afterwards;
* ``zombies``: one user connects, leaves ``/`` with ``41`` and keeps the transport open;
* ``bytes``: the wire size of a 4 KB message and of a ``join:room`` reply with history;
* ``expiry``: seconds from connect to disconnect with a 2 s token;
* ``admin``: password guesses on one Engine.IO session, and how many were checked;
* ``slowloris``: connections sending one header line every 2 s.

Prints one JSON object. Compare two revisions by exporting the older one
(``git archive <rev> | tar -x -C /tmp/old``) and passing ``--source /tmp/old``.

    .venv/bin/python scripts/measure-hostile.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
SECRET = "measure-hostile-secret-0123456789abcdef"
ADMIN_PASSWORD = "measure-admin-password-0123"
PUBLIC = "203.0.113.7"


def token(user: str, ttl: float = 3600) -> str:
    sys.path.insert(0, str(ROOT))
    from service.auth import mint_token

    return mint_token(SECRET, user, ttl)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    def __init__(self, source: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=source,
            env={
                **os.environ,
                "PYTHONPATH": str(source),
                "JWT_SECRET": SECRET,
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "LOG_LEVEL": "warning",
                "SHUTDOWN_DELAY_SECONDS": "0",
                "SHUTDOWN_DRAIN_SECONDS": "0.2",
                **env,
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.05)
        raise RuntimeError("service did not start")

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
        return 0.0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def _handshake(http: aiohttp.ClientSession, url: str, xff: str, query: str = "") -> int:
    try:
        async with http.get(
            f"{url}/socket.io/?EIO=4&transport=polling{query}", headers={"X-Forwarded-For": xff}
        ) as resp:
            await resp.read()
            return resp.status
    except aiohttp.ClientError:
        return 0


async def _ready(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(f"{url}/readyz") as resp:
        return resp.status


async def empty_sid(source: Path, attempts: int) -> dict[str, Any]:
    svc = Service(source, {"MAX_CONNECTIONS": "500"})
    try:
        rss_before = svc.rss_mib()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as http:
            started = time.monotonic()
            statuses = Counter(
                await asyncio.gather(
                    *(_handshake(http, svc.url, PUBLIC, "&sid=") for _ in range(attempts))
                )
            )
            seconds = time.monotonic() - started
            ready_during = await _ready(http, svc.url)
            rss_after = svc.rss_mib()
            refused_for = 0.0
            t0 = time.monotonic()
            while await _handshake(http, svc.url, "198.51.100.1") != 200:
                await asyncio.sleep(0.2)
                refused_for = time.monotonic() - t0
                if refused_for > 60:
                    break
            async with http.get(f"{svc.url}/metrics") as resp:
                metrics = await resp.text()
        refused_metric = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("socketio_handshakes_refused_total{")
        )
        return {
            "attempts": attempts,
            "seconds": round(seconds, 2),
            "statuses": dict(statuses),
            "rss_mib": [rss_before, rss_after],
            "readyz_after_flood": ready_during,
            "ordinary_client_refused_for_s": round(refused_for, 1),
            "handshakes_refused_total": refused_metric,
        }
    finally:
        svc.stop()


async def _raw_ws(http: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(f"{url}/socket.io/?EIO=4&transport=websocket", max_msg_size=0)
    await ws.receive(timeout=5)  # the open packet
    return ws


async def _keep_answering(ws: aiohttp.ClientWebSocketResponse) -> None:
    with contextlib.suppress(Exception):
        async for msg in ws:
            if msg.data == "2":
                await ws.send_str("3")


async def zombies(source: Path, rounds: int) -> dict[str, Any]:
    """Rounds of MAX_SOCKETS_PER_USER connects of one user, each socket leaving ``/`` with
    ``41`` (after the guard saw it connected) and answering pings from then on."""
    per_user = 20
    svc = Service(
        source,
        {
            "MAX_SOCKETS_PER_USER": str(per_user),
            "HANDSHAKE_RATE_PER_ADDRESS": "0",
            "RATE_LIMIT_EVENTS": "1000",
            "PING_INTERVAL": "2",
        },
    )
    try:
        async with aiohttp.ClientSession() as http:
            sockets = []
            tasks = []
            refused = 0
            started = time.monotonic()
            for _ in range(rounds):
                batch = []
                for _ in range(per_user):
                    ws = await _raw_ws(http, svc.url)
                    await ws.send_str("40" + json.dumps({"token": token("zed")}))
                    if not (await ws.receive(timeout=5)).data.startswith("40"):
                        refused += 1
                        await ws.close()
                        continue
                    batch.append(ws)
                await asyncio.sleep(1.5)
                for ws in batch:
                    await ws.send_str("41")
                    tasks.append(asyncio.create_task(_keep_answering(ws)))
                sockets += batch
            await asyncio.sleep(0.5)
            held_at_end = sum(1 for ws in sockets if not ws.closed)
            end = time.monotonic() - started
            await asyncio.sleep(12)
            held_later = sum(1 for ws in sockets if not ws.closed)
            for task in tasks:
                task.cancel()
            for ws in sockets:
                await ws.close()
        return {
            "connects": rounds * per_user,
            "refused": refused,
            "max_sockets_per_user": per_user,
            "held_after_the_rounds": held_at_end,
            "rounds_took_s": round(end, 1),
            "held_12s_later": held_later,
        }
    finally:
        svc.stop()


async def _call(
    ws: aiohttp.ClientWebSocketResponse, ack: int, event: str, data: Any
) -> tuple[str, list[str]]:
    """Emit with an ack; the ack frame and every other frame received before it."""
    await ws.send_str(f"42{ack}" + json.dumps([event, data]))
    before: list[str] = []
    while True:
        msg = await ws.receive(timeout=10)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise RuntimeError(f"closed: {msg.type}")
        if msg.data == "2":
            await ws.send_str("3")
        elif msg.data.startswith(f"43{ack}["):
            return msg.data, before
        else:
            before.append(msg.data)


async def message_bytes(source: Path) -> dict[str, Any]:
    svc = Service(source, {"RATE_LIMIT_EVENTS": "1000000", "HANDSHAKE_RATE_PER_ADDRESS": "0"})
    try:
        async with aiohttp.ClientSession() as http:
            ws = await _raw_ws(http, svc.url)
            await ws.send_str("40" + json.dumps({"token": token("writer")}))
            await ws.receive(timeout=5)
            await _call(ws, 1, "join:room", "bytes")
            wire: dict[str, int | str] = {}
            cases = (
                ("cjk_4095", "\u4e2d" * 1365),
                ("c0_4080", "\x01" * 4080),
                ("ascii_4096", "a" * 4096),
            )
            for n, (name, text) in enumerate(cases):
                payload = {"roomId": "bytes", "message": text}
                ack, frames = await _call(ws, 10 + n, "message:send", payload)
                if '"ok":false' in ack.replace(" ", ""):
                    wire[name] = "refused"
                    continue
                if not frames:  # the broadcast may follow the ack
                    frames.append((await ws.receive(timeout=5)).data)
                got = [f for f in frames if f.startswith('42["message:received"')]
                wire[name] = len(got[0].encode())
            for n in range(99):
                text = "\u4e2d" * 1365
                await _call(ws, 100 + n, "message:send", {"roomId": "bytes", "message": text})
            reader = await _raw_ws(http, svc.url)
            await reader.send_str("40" + json.dumps({"token": token("reader")}))
            await reader.receive(timeout=5)
            try:
                reply, _ = await _call(reader, 1, "join:room", {"roomId": "bytes", "since": "0-0"})
                reply_bytes: int | str = len(reply.encode())
            except RuntimeError as exc:
                reply_bytes = f"no reply: {exc}"
            await ws.close()
            await reader.close()
        return {
            "wire_bytes_per_message": wire,
            "join_reply_bytes_100_cjk_messages": reply_bytes,
        }
    finally:
        svc.stop()


async def expiry(source: Path) -> dict[str, Any]:
    svc = Service(source, {"JWT_LEEWAY_SECONDS": "0", "HANDSHAKE_RATE_PER_ADDRESS": "0"})
    try:
        async with aiohttp.ClientSession() as http:
            ws = await _raw_ws(http, svc.url)
            started = time.monotonic()
            await ws.send_str("40" + json.dumps({"token": token("brief", ttl=2)}))
            await ws.receive(timeout=5)
            disconnected = None
            answered_after_exp = 0
            n = 0
            while time.monotonic() - started < 12:
                n += 1
                await ws.send_str(f"42{n}" + json.dumps(["presence:get", "r"]))
                deadline = time.monotonic() + 1
                while time.monotonic() < deadline:
                    try:
                        msg = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
                    except TimeoutError:
                        break
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        disconnected = disconnected or time.monotonic() - started
                        break
                    if msg.data == "2":
                        await ws.send_str("3")
                    elif msg.data.startswith("41"):
                        disconnected = disconnected or time.monotonic() - started
                    elif msg.data.startswith(f"43{n}[") and time.monotonic() - started > 3:
                        answered_after_exp += 1
                if ws.closed:
                    break
            await ws.close()
        return {
            "token_ttl_s": 2,
            "disconnected_after_s": round(disconnected, 1) if disconnected else None,
            "events_answered_after_expiry": answered_after_exp,
        }
    finally:
        svc.stop()


async def admin(source: Path, guesses: int) -> dict[str, Any]:
    svc = Service(source, {"ADMIN_UI": "true", "ADMIN_PASSWORD": ADMIN_PASSWORD})
    try:
        async with aiohttp.ClientSession() as http:
            ws = await _raw_ws(http, svc.url)
            codes: Counter[str] = Counter()
            started = time.monotonic()
            for n in range(guesses):
                auth = {"username": "admin", "password": f"guess-{n}"}
                await ws.send_str("40/admin," + json.dumps(auth))
                while True:
                    msg = await ws.receive(timeout=5)
                    if msg.data == "2":
                        await ws.send_str("3")
                        continue
                    break
                body = msg.data.split(",", 1)[1] if msg.data.startswith("44/admin,") else "{}"
                codes[
                    (json.loads(body).get("data") or {}).get("code", "authentication failed")
                ] += 1
            seconds = time.monotonic() - started
            await ws.close()
        return {"guesses": guesses, "per_second": round(guesses / seconds), "answers": dict(codes)}
    finally:
        svc.stop()


async def _trickle(port: int, seconds: float, every: float) -> float | None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        n = 0
        while time.monotonic() - started < seconds:
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1024), every) == b"":
                    return time.monotonic() - started
            n += 1
            try:
                writer.write(f"X-Slow-{n}: {n}\r\n".encode())
                await writer.drain()
            except ConnectionError:
                return time.monotonic() - started
        return None
    finally:
        writer.close()


async def slowloris(source: Path, connections: int, seconds: float) -> dict[str, Any]:
    svc = Service(source, {})
    try:
        closed = await asyncio.gather(
            *(_trickle(svc.port, seconds, 2.0) for _ in range(connections))
        )
        done = sorted(t for t in closed if t is not None)
        return {
            "connections": connections,
            "observed_s": seconds,
            "still_open": sum(1 for t in closed if t is None),
            "closed_after_s_max": round(done[-1], 1) if done else None,
        }
    finally:
        svc.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=ROOT)
    parser.add_argument(
        "--only",
        nargs="*",
        default=["empty-sid", "zombies", "bytes", "expiry", "admin", "slowloris"],
    )
    args = parser.parse_args()
    runs = {
        "empty-sid": lambda: empty_sid(args.source, 2000),
        "zombies": lambda: zombies(args.source, 3),
        "bytes": lambda: message_bytes(args.source),
        "expiry": lambda: expiry(args.source),
        "admin": lambda: admin(args.source, 300),
        "slowloris": lambda: slowloris(args.source, 400, 30),
    }
    report = {name: await runs[name]() for name in args.only}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
