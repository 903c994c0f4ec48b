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
from .config import HMAC_ALGORITHMS, VARIABLES, ConfigError, Settings

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


def _merged(args: argparse.Namespace, env: dict[str, str]) -> dict[str, str]:
    """The environment with the flags that mirror it applied on top."""
    merged = dict(env)
    merged.update({k: v for k, v in vars(args).items() if k in VARIABLES})
    return merged


def ephemeral_secret(args: argparse.Namespace, env: dict[str, str]) -> bool:
    """True when ``--dev`` mints the JWT secret itself (so its tokens die with the process)."""
    merged = _merged(args, env)
    return bool(getattr(args, "dev", False)) and not (
        merged.get("JWT_SECRET", "").strip() or merged.get("JWT_PUBLIC_KEY", "").strip()
    )


def settings_from(args: argparse.Namespace, env: dict[str, str]) -> Settings:
    merged = _merged(args, env)
    if not getattr(args, "dev", False):
        return Settings.from_env(merged)
    merged.setdefault("HOST", "127.0.0.1")
    merged.setdefault("LOG_FORMAT", "text")
    overrides: dict[str, object] = {"dev": True}
    if ephemeral_secret(args, env):
        overrides["jwt_secret"] = secrets.token_urlsafe(32)
    return Settings.from_env(merged, **overrides)


EPHEMERAL_HINT = (
    "these tokens stop working when this process stops (ephemeral secret); for tokens that "
    "survive a restart, run with a fixed secret: JWT_SECRET=<32+ characters> make run"
)


def run_serve(settings: Settings, *, ephemeral: bool = False) -> int:
    from .app import create_app
    from .lifecycle import BindError, serve
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
        if ephemeral:
            print(EPHEMERAL_HINT, flush=True)
        print(
            "connect with: io(URL, {auth: {token}}) -- stop with Ctrl+C",
            flush=True,
        )

    app = create_app(settings)
    tune_gc()
    try:
        asyncio.run(serve(app, on_started=announce))
    except BindError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def run_token(args: argparse.Namespace, env: dict[str, str]) -> int:
    """Mint a token only if the server configured by the same environment would accept it:
    its secret passes the server's checks, its algorithm is allowed, its ``sub`` is valid."""
    from .auth import mint_token
    from .protocol import MAX_USER_ID_CHARS, valid_user_id

    merged = dict(env)
    if args.jwt_secret is not None:
        merged["JWT_SECRET"] = args.jwt_secret
    if not merged.get("JWT_SECRET", "").strip():
        print("error: JWT_SECRET: required to mint a token (or pass --jwt-secret)", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env(merged)
    except ConfigError as exc:
        print(f"error: {exc} (the server would refuse it)", file=sys.stderr)
        return 2
    hmac = [a for a in settings.algorithms if a in HMAC_ALGORITHMS]
    if not hmac:
        print(
            f"error: JWT_ALGORITHMS: the server accepts only {', '.join(settings.algorithms)}; "
            "a token signed with JWT_SECRET would be refused",
            file=sys.stderr,
        )
        return 2
    if not valid_user_id(args.user):
        print(
            f"error: --user: expected 1-{MAX_USER_ID_CHARS} characters "
            "(the server refuses any other token subject)",
            file=sys.stderr,
        )
        return 2
    print(
        mint_token(
            settings.jwt_secret,
            args.user,
            args.ttl,
            algorithm=hmac[0],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
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
    return run_serve(settings, ephemeral=ephemeral_secret(args, env))


if __name__ == "__main__":
    sys.exit(main())
