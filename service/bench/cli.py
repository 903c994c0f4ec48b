"""``socketio-service bench``: parse the command line, run every target, print the table."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .report import median_result, plot, table
from .runner import BenchConfig, Target, run_target, wait_idle

EXAMPLES = """\
examples:
  # one room of 200 receivers, one sender with 8 messages in flight, our service
  socketio-service bench --url http://127.0.0.1:3000 --jwt-secret "$JWT_SECRET"

  # ours vs the Node reference, side by side, 2 runs each (medians), with server pids
  socketio-service bench --target ours=http://127.0.0.1:3000 --pid ours=1234 \\
      --target anchor=http://127.0.0.1:3100 --pid anchor=5678 \\
      --receivers 1000 --jwt-secret "$JWT_SECRET" --repeat 2 --json out.json

  # 5,000 idle connections: connect rate and RSS per connection
  socketio-service bench --url http://127.0.0.1:3000 --pid 1234 --receivers 5000 --rooms 0
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="socketio-service bench",
        description="Socket.IO load tool: receivers in rooms, senders, deliveries and latency.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = p.add_argument_group("targets")
    where.add_argument("--url", action="append", default=[], help="a server URL (repeatable)")
    where.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="NAME=URL[,URL...]",
        help="a named deployment; several run one after the other and print side by side",
    )
    where.add_argument(
        "--pid",
        action="append",
        default=[],
        metavar="[NAME=]PID[,PID...]",
        help="local server process ids of a target: server CPU and RSS per connection",
    )
    where.add_argument("--path", default="/socket.io/", help="the Engine.IO path")
    auth = p.add_argument_group("auth")
    auth.add_argument(
        "--jwt-secret",
        default=os.environ.get("JWT_SECRET", ""),
        help="mint one HS256 token per connection (sub bench-r<i>); default $JWT_SECRET",
    )
    auth.add_argument("--token", default="", help="one token for every connection")
    load = p.add_argument_group("load")
    load.add_argument("--receivers", type=int, default=200, help="receiving connections")
    load.add_argument("--rooms", type=int, default=1, help="rooms (0: idle connections)")
    load.add_argument("--senders-per-room", type=int, default=1)
    load.add_argument(
        "--in-flight", type=int, default=8, help="closed loop: messages in flight per sender"
    )
    load.add_argument(
        "--rate", type=float, default=0.0, help="open loop: messages/s per sender (not closed)"
    )
    load.add_argument("--message-bytes", type=int, default=90)
    load.add_argument("--polling-fraction", type=float, default=0.0, help="receivers on polling")
    load.add_argument("--connect-concurrency", type=int, default=64)
    load.add_argument("--no-acks", action="store_true", help="send without ack ids")
    timing = p.add_argument_group("timing")
    timing.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    timing.add_argument("--duration", type=float, default=7.0, help="measured seconds")
    timing.add_argument("--hold", type=float, default=1.0, help="idle seconds before RSS")
    timing.add_argument("--repeat", type=int, default=1, help="runs per target (medians)")
    tool = p.add_argument_group("load tool")
    tool.add_argument("--procs", type=int, default=1, help="load processes")
    tool.add_argument("--sample-every", type=int, default=10, help="time 1 receiver in N (0: none)")
    tool.add_argument("--no-uvloop", action="store_true", help="stock asyncio loop")
    tool.add_argument(
        "--aiohttp-websockets",
        action="store_true",
        help="websockets on aiohttp's client instead of the raw-frame client",
    )
    out = p.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", help="results as JSON ('-' for stdout)")
    out.add_argument("--plot", metavar="PNG", help="latency CDF (needs matplotlib)")
    out.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def parse_targets(args: argparse.Namespace) -> list[Target]:
    """``--target NAME=URLS`` and ``--url`` into targets, with their ``--pid`` lists."""
    targets = []
    for spec in args.target:
        name, sep, urls = spec.partition("=")
        if not sep or not urls:
            raise SystemExit(f"error: --target expects NAME=URL[,URL...]: {spec!r}")
        targets.append(Target(name, [u for u in urls.split(",") if u]))
    if args.url:
        targets.append(Target("target", list(args.url)))
    if not targets:
        raise SystemExit("error: give --url or --target")
    by_name = {t.name: t for t in targets}
    for spec in args.pid:
        name, sep, pids = spec.rpartition("=")
        target = by_name.get(name) if sep else targets[0]
        if target is None:
            raise SystemExit(f"error: --pid names an unknown target: {spec!r}")
        target.pids += [int(p) for p in pids.split(",") if p]
    return targets


def config_from(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        receivers=args.receivers,
        rooms=args.rooms,
        senders_per_room=args.senders_per_room,
        in_flight=args.in_flight,
        rate=args.rate,
        message_bytes=args.message_bytes,
        warmup=args.warmup,
        duration=args.duration,
        hold=args.hold,
        procs=args.procs,
        polling_fraction=args.polling_fraction,
        sample_every=args.sample_every,
        connect_concurrency=args.connect_concurrency,
        path=args.path,
        acks=not args.no_acks,
        jwt_secret=args.jwt_secret,
        token=args.token,
        fast_loop=not args.no_uvloop,
        lean=not args.aiohttp_websockets,
        progress=not args.quiet,
    )


async def run_all(config: BenchConfig, targets: list[Target], repeat: int) -> dict[str, Any]:
    """Every target ``repeat`` times, interleaved (a, b, a, b) so drift hits both."""
    runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    pids = [pid for t in targets for pid in t.pids]
    for _ in range(max(1, repeat)):
        for target in targets:
            waited = await wait_idle(pids)  # every server of the run: they share a core
            result = await run_target(config, target)
            result["idle_wait_s"] = waited
            runs[target.name].append(result)
    return runs


def _public(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "latency_samples"}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``socketio-service bench``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # socketio-service bench -- --flags ...
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    targets = parse_targets(args)
    config = config_from(args)
    if not config.jwt_secret and not config.token:
        print("note: no --jwt-secret/--token: each connection sends its user name as token")
    runner: Any = asyncio.run
    if config.fast_loop and config.procs == 1:
        try:
            import uvloop  # type: ignore[import-not-found]

            runner = uvloop.run
        except ImportError:
            pass
    runs = runner(run_all(config, targets, args.repeat))
    medians = [median_result([_public(r) for r in results]) for results in runs.values()]
    print(table(medians))
    if args.json:
        doc = {
            "config": {k: v for k, v in vars(config).items() if k not in ("jwt_secret", "token")},
            "targets": {
                name: {"median": m, "runs": [_public(r) for r in runs[name]]}
                for name, m in zip(runs, medians, strict=True)
            },
        }
        text = json.dumps(doc, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    if args.plot:
        problem = plot(runs, args.plot)
        if problem:
            print(f"note: {problem}", file=sys.stderr)
    failed = any(r.get("receivers", 0) == 0 for rs in runs.values() for r in rs)
    return 1 if failed else 0
