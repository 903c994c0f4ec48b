#!/usr/bin/env python3
"""Measure a SIGTERM drain: how long it takes and how evenly clients are let go.

Spawns ``python -m service`` as a real process, connects N cheap clients (raw Engine.IO v4 /
Socket.IO v5 over aiohttp websockets, one coroutine each), sends SIGTERM and records, per
client, when ``server:shutdown`` arrived and when it was disconnected; with ``--reconnect``
(the default) each client then reconnects to a second instance, as it would to another pod.
Prints a histogram per ``--bin`` seconds and the totals.

    .venv/bin/python scripts/measure-drain.py --clients 1000 --drain 10 --delay 0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.auth import mint_token  # noqa: E402


@dataclass
class Record:
    connected: float | None = None
    shutdown: float | None = None
    disconnected: float | None = None
    reconnected: float | None = None
    refused: str | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(secret: str, delay: float, drain: float, max_connections: int) -> tuple[Any, str]:
    port = free_port()
    env = {
        **os.environ,
        "JWT_SECRET": secret,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "info",
        "SHUTDOWN_DELAY_SECONDS": str(delay),
        "SHUTDOWN_DRAIN_SECONDS": str(drain),
        "MAX_CONNECTIONS": str(max_connections),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, f"127.0.0.1:{port}"


async def wait_ready(http: aiohttp.ClientSession, address: str, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"http://{address}/readyz") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{address} not ready within {within}s")


async def handshake(http: aiohttp.ClientSession, address: str, token: str) -> Any:
    """Open an Engine.IO websocket and connect the ``/`` namespace; the websocket or an error."""
    ws = await http.ws_connect(
        f"ws://{address}/socket.io/?EIO=4&transport=websocket", autoping=True
    )
    opening = await ws.receive_str()
    assert opening.startswith("0"), opening
    await ws.send_str("40" + json.dumps({"token": token}))
    while True:
        answer = await ws.receive_str()
        if answer == "2":
            await ws.send_str("3")
            continue
        if answer.startswith("40"):
            return ws
        await ws.close()
        raise ConnectionRefusedError(answer)


async def run_client(
    http: aiohttp.ClientSession,
    address: str,
    reconnect_to: str | None,
    token: str,
    record: Record,
    connected: asyncio.Semaphore,
) -> None:
    async with connected:
        ws = await handshake(http, address, token)
    record.connected = time.monotonic()
    try:
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = message.data
            if data == "2":
                await ws.send_str("3")
            elif data.startswith("42"):
                event = json.loads(data[2:])
                if event and event[0] == "server:shutdown":
                    record.shutdown = time.monotonic()
            elif data.startswith("41") or data == "1":
                break
    finally:
        record.disconnected = time.monotonic()
        await ws.close()
    if reconnect_to:
        try:
            again = await handshake(http, reconnect_to, token)
        except ConnectionRefusedError as exc:
            record.refused = str(exc)
            return
        record.reconnected = time.monotonic()
        await again.close()


def histogram(title: str, offsets: list[float], width: float, start: float, stop: float) -> None:
    print(f"\n{title} per {width:g} s after SIGTERM ({len(offsets)} clients)")
    if not offsets:
        return
    bins = int((stop - start) / width) + 1
    counts = [0] * bins
    for offset in offsets:
        counts[min(bins - 1, max(0, int((offset - start) / width)))] += 1
    scale = max(counts) / 50 if max(counts) > 50 else 1
    for index, count in enumerate(counts):
        lo = start + index * width
        print(f"  {lo:6.1f}-{lo + width:5.1f}s {count:5d} {'#' * round(count / scale)}")


def summary(name: str, offsets: list[float]) -> str:
    if not offsets:
        return f"{name}: none"
    return (
        f"{name}: first {min(offsets):.2f}s, last {max(offsets):.2f}s, "
        f"span {max(offsets) - min(offsets):.2f}s"
    )


async def measure(args: argparse.Namespace) -> int:
    secret = secrets.token_urlsafe(32)
    limit = args.clients + 100
    proc, address = spawn(secret, args.delay, args.drain, limit)
    other = spawn(secret, 0, 0, limit) if args.reconnect else None
    records = [Record() for _ in range(args.clients)]
    tokens = [mint_token(secret, f"user{i}", 3600) for i in range(args.clients)]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        try:
            await wait_ready(http, address)
            if other:
                await wait_ready(http, other[1])
            started = time.monotonic()
            gate = asyncio.Semaphore(args.concurrency)
            tasks = [
                asyncio.create_task(
                    run_client(
                        http, address, other[1] if other else None, tokens[i], records[i], gate
                    )
                )
                for i in range(args.clients)
            ]
            while sum(r.connected is not None for r in records) < args.clients:
                failed = [t for t in tasks if t.done() and t.exception()]
                if failed:
                    raise RuntimeError(f"client failed: {failed[0].exception()!r}")
                await asyncio.sleep(0.05)
            print(
                f"{args.clients} clients connected in {time.monotonic() - started:.2f}s; "
                f"SHUTDOWN_DELAY_SECONDS={args.delay:g} SHUTDOWN_DRAIN_SECONDS={args.drain:g}"
            )
            await asyncio.sleep(0.5)

            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            not_ready_after = None
            while not_ready_after is None and time.monotonic() - signalled < 5:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://{address}/readyz") as response:
                        if response.status == 503:
                            not_ready_after = time.monotonic() - signalled
                await asyncio.sleep(0.01)
            loop = asyncio.get_running_loop()
            budget = args.delay + args.drain + 5
            code = await loop.run_in_executor(None, proc.wait, budget + 30)
            exited_after = time.monotonic() - signalled
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        finally:
            for process in (proc, other[0] if other else None):
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(30)
                    except subprocess.TimeoutExpired:
                        process.kill()

    def offsets(field: str) -> list[float]:
        values = (getattr(r, field) for r in records)
        return sorted(v - signalled for v in values if v is not None)

    shutdowns, disconnects, reconnects = (
        offsets("shutdown"),
        offsets("disconnected"),
        offsets("reconnected"),
    )
    stop = max([exited_after, *disconnects, *reconnects])
    histogram("disconnects", disconnects, args.bin, 0.0, stop)
    if other:
        histogram("reconnects to the other instance", reconnects, args.bin, 0.0, stop)

    per_bin: list[int] = []
    if disconnects:
        lo = disconnects[0]
        bins = int((disconnects[-1] - lo) / args.bin) + 1
        per_bin = [0] * bins
        for offset in disconnects:
            per_bin[min(bins - 1, int((offset - lo) / args.bin))] += 1
    print()
    print(f"readiness 503 after: {not_ready_after:.3f}s" if not_ready_after else "readiness: ?")
    print(summary("server:shutdown received", shutdowns))
    print(summary("disconnected", disconnects))
    if other:
        print(summary("reconnected", reconnects))
        refused = sum(r.refused is not None for r in records)
        print(f"reconnects refused: {refused}")
    if per_bin:
        even = len(disconnects) / len(per_bin)
        print(
            f"disconnects per {args.bin:g}s bin over the span: min {min(per_bin)}, "
            f"max {max(per_bin)}, mean {statistics.mean(per_bin):.1f} (even: {even:.1f}), "
            f"stdev {statistics.pstdev(per_bin):.1f}"
        )
    missing = sum(r.shutdown is None for r in records)
    print(f"clients without server:shutdown: {missing}")
    print(
        f"process exit code {code} after {exited_after:.2f}s "
        f"(budget delay + drain + 5 = {budget:g}s)"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "clients": args.clients,
                    "delay": args.delay,
                    "drain": args.drain,
                    "exit_code": code,
                    "exited_after": exited_after,
                    "not_ready_after": not_ready_after,
                    "disconnects": disconnects,
                    "reconnects": reconnects,
                }
            )
        )
    ok = code == 0 and exited_after < budget and missing == 0
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--drain", type=float, default=10.0, help="SHUTDOWN_DRAIN_SECONDS")
    parser.add_argument("--delay", type=float, default=0.0, help="SHUTDOWN_DELAY_SECONDS")
    parser.add_argument("--bin", type=float, default=0.5, help="histogram bin width, seconds")
    parser.add_argument("--concurrency", type=int, default=50, help="handshakes in flight")
    parser.add_argument(
        "--no-reconnect",
        dest="reconnect",
        action="store_false",
        help="do not reconnect drained clients to a second instance",
    )
    parser.add_argument("--json", action="store_true", help="also print raw offsets as JSON")
    return asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
