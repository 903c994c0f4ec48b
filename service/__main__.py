"""Command line: ``socketio-service [serve] [--dev]`` and ``socketio-service token``.

Flags mirror the environment variables of :data:`service.config.VARIABLES`
(``--redis-url`` is ``REDIS_URL``) and win over them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import sys
from collections.abc import Sequence

from . import __version__
from .config import VARIABLES, ConfigError, Settings

DEV_USERS = ("alice", "bob")


def _flag(variable: str) -> str:
    return "--" + variable.lower().replace("_", "-")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``7d`` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration like 90s, 15m, 1h or 7d: {text!r}")
    factor = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return float(match.group(1)) * factor


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="socketio-service", description="Socket.IO messaging service"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="run the service (the default)")
    _add_serve_flags(serve)
    _add_serve_flags(parser)

    token = sub.add_parser("token", help="mint a JWT for the configured JWT_SECRET")
    token.add_argument("--user", required=True, help="the token's sub (user id)")
    token.add_argument("--ttl", type=parse_duration, default=3600.0, help="lifetime, e.g. 1h")
    token.add_argument("--jwt-secret", help="defaults to JWT_SECRET")
    token.add_argument(
        "--rooms",
        help="comma-separated `rooms` claim for ROOM_ACCESS=claims (ids, or prefixes ending in *)",
    )

    # listed for --help only: main() hands `chat ...` and `bench ...` to the tools unparsed
    sub.add_parser("chat", help="a terminal chat client (see: chat --help)", add_help=False)
    sub.add_parser("bench", help="the load tool (see: bench --help)", add_help=False)
    return parser


def _add_serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dev",
        action="store_true",
        help="laptop mode: ephemeral secret, prints dev tokens, demo page, binds 127.0.0.1",
    )
    group = parser.add_argument_group("settings (each mirrors an environment variable)")
    for variable in VARIABLES:
        group.add_argument(
            _flag(variable),
            dest=variable,
            metavar="VALUE",
            help=f"overrides ${variable}",
            default=argparse.SUPPRESS,
        )


def settings_from(args: argparse.Namespace, env: dict[str, str]) -> Settings:
    merged = dict(env)
    merged.update({k: v for k, v in vars(args).items() if k in VARIABLES})
    if not getattr(args, "dev", False):
        return Settings.from_env(merged)
    merged.setdefault("HOST", "127.0.0.1")
    merged.setdefault("LOG_FORMAT", "text")
    overrides = {"dev": True}
    if not merged.get("JWT_SECRET") and not merged.get("JWT_PUBLIC_KEY"):
        overrides["jwt_secret"] = secrets.token_urlsafe(32)
    return Settings.from_env(merged, **overrides)


def run_serve(settings: Settings) -> int:
    from .app import create_app
    from .lifecycle import serve
    from .logs import configure_logging
    from .tuning import tune_gc

    configure_logging(settings.log_level, settings.log_format, settings.instance_id)

    def announce(url: str) -> None:
        if not settings.dev:
            return
        from .auth import mint_token

        print(f"socketio-service {__version__} (dev) listening on {url}", flush=True)
        for user in DEV_USERS:
            token = mint_token(settings.jwt_secret, user, 24 * 3600)
            print(f"dev token for {user!r} (24 h): {token}", flush=True)
        print(
            "connect with: io(URL, {auth: {token}}) -- stop with Ctrl+C",
            flush=True,
        )

    app = create_app(settings)
    tune_gc()
    asyncio.run(serve(app, on_started=announce))
    return 0


def run_token(args: argparse.Namespace, env: dict[str, str]) -> int:
    from .auth import mint_token

    secret = args.jwt_secret or env.get("JWT_SECRET", "")
    if not secret:
        print("error: JWT_SECRET: required to mint a token (or pass --jwt-secret)", file=sys.stderr)
        return 2
    print(
        mint_token(
            secret,
            args.user,
            args.ttl,
            audience=env.get("JWT_AUDIENCE", ""),
            issuer=env.get("JWT_ISSUER", ""),
            extra=None if args.rooms is None else {"rooms": _rooms_claim(args.rooms)},
        )
    )
    return 0


def _rooms_claim(raw: str) -> list[str]:
    return [room.strip() for room in raw.split(",") if room.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # the tools own their flags: argparse's REMAINDER would not pass on a leading --flag
    if argv[:1] == ["chat"]:
        from .client.cli import main as chat_main

        return chat_main(argv[1:])
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    env = dict(os.environ)
    if args.command == "token":
        return run_token(args, env)

    try:
        settings = settings_from(args, env)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run_serve(settings)


if __name__ == "__main__":
    sys.exit(main())
