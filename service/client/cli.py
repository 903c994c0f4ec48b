"""``socketio-service chat``: a terminal client for trying the service and for smoke tests.

Reads lines from stdin and sends them to the room; prints messages, presence and typing.
Lines starting with ``/`` are commands (``/help``). ``--once TEXT`` sends one message, waits
until it comes back through the server, prints it and exits 0: a one-line smoke test.

Exit codes: 0 fine, 1 gave up (timeout, lost connection), 2 usage, 3 token refused,
4 no server reachable or handshake refused for another reason.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO
from urllib.parse import urlsplit

from .. import protocol as p
from .chat_client import (
    CLOSED,
    CONNECTED,
    DISCONNECTED,
    RECOVERED,
    Backoff,
    ChatClient,
    ChatError,
    ConnectFailed,
    Forbidden,
    HandshakeRefused,
    TokenSource,
    Unauthorized,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAUTHORIZED = 3
EXIT_UNREACHABLE = 4
EXIT_FORBIDDEN = 5

TOKEN_ENV = "CHAT_TOKEN"
TOKEN_COMMAND_ENV = "CHAT_TOKEN_COMMAND"
TOKEN_COMMAND_SECONDS = 30.0


def token_command(command: str) -> Callable[[], Awaitable[str]]:
    """A token source that runs ``command`` (no shell) and reads the token it prints."""
    argv = shlex.split(command)

    async def fresh_token() -> str:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), TOKEN_COMMAND_SECONDS)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ConnectFailed("token_command", "the token command timed out") from None
        if proc.returncode != 0:
            raise ConnectFailed("token_command", f"the token command exited {proc.returncode}")
        return out.decode().strip()

    return fresh_token


HELP = """commands:
  /help              this list
  /who               who is in the room
  /history [N]       the last N messages of the room
  /join ROOM         join another room (messages you type still go to the current room)
  /room ROOM         send what you type to ROOM from now on (joins it if needed)
  /leave ROOM        leave a room
  /msg USER TEXT     a private message
  /typing            tell the room you are typing (stops with your next message)
  /quit              leave (so does end of input)"""


USAGES = {
    "join": "/join ROOM",
    "room": "/room ROOM",
    "leave": "/leave ROOM",
    "msg": "/msg USER TEXT",
}
"""Commands that need arguments: a bare ``/join`` answers with its usage line."""

URL_SCHEMES = ("http", "https", "ws", "wss")


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot name a server, or None. Without a scheme, python-socketio would
    build a ``ws:///socket.io/`` URL and fail with a message that names neither."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in URL_SCHEMES or not parts.netloc:
        return f"--url {url}: the URL needs http:// or https:// (e.g. http://127.0.0.1:3000)"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="socketio-service chat",
        description="A terminal chat client: lines from stdin go to the room.",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url",
        action="append",
        required=True,
        help="service URL, e.g. http://127.0.0.1:3000; repeat it to fail over between instances",
    )
    parser.add_argument(
        "--token",
        default=None,
        help=f"the JWT (default: ${TOKEN_ENV}; mint one with `socketio-service token`)",
    )
    parser.add_argument(
        "--token-command",
        default=None,
        help=(
            f"a command that prints a fresh JWT (default: ${TOKEN_COMMAND_ENV}), run before "
            "each (re)connect: the client then outlives its tokens' expiry"
        ),
    )
    parser.add_argument("--room", default="lobby", help="the room to join (default: lobby)")
    parser.add_argument(
        "--once",
        metavar="TEXT",
        help="send TEXT, wait for it to come back, print it and exit 0 (a smoke test)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for acks and echoes (default: 10)",
    )
    parser.add_argument(
        "--transport",
        choices=("websocket", "polling"),
        default="websocket",
        help="polling starts with long-polling and upgrades (default: websocket)",
    )
    return parser


class Printer:
    """Formats what the server says, one line per event."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def message(self, data: dict[str, Any]) -> None:
        self.line(f"[{data.get('roomId')}] {data.get('userId')}: {data.get('message')}")

    def event(self, event: str, data: Any) -> None:
        """Print a server or client event that is not a room message."""
        if not isinstance(data, dict):
            data = {}
        user, room = data.get("userId"), data.get("roomId")
        if event == p.USER_JOINED:
            self.line(f"* {user} joined {room}")
        elif event == p.USER_LEFT:
            self.line(f"* {user} left {room}")
        elif event == p.TYPING_USER_START:
            self.line(f"* {user} is typing in {room}")
        elif event == p.TYPING_USER_STOP:
            self.line(f"* {user} stopped typing in {room}")
        elif event == p.PRIVATE_RECEIVED:
            self.line(f"[private] {data.get('fromUserId')}: {data.get('message')}")
        elif event == p.SERVER_SHUTDOWN:
            self.line("* the server is shutting down; moving to another instance")
        elif event == p.AUTH_EXPIRED:
            self.line("* the token expired; reconnecting with a fresh one")
        elif event == DISCONNECTED:
            self.line(f"* disconnected ({data.get('reason') or 'unknown'}), reconnecting")
        elif event == CONNECTED and data.get("reconnect"):
            self.line(f"* reconnected to {data.get('url')}")
        elif event == RECOVERED and data.get("missed"):
            gap = "" if data.get("recovered") else " (older messages were lost)"
            self.line(f"* recovered {data['missed']} message(s) in {room}{gap}")
        elif event == CLOSED and data.get("code") != "closed":
            self.line(f"* connection closed: {data.get('code')}: {data.get('message')}")


def stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str | None]:
    """Lines of stdin, ``None`` at the end. A daemon thread reads, so exiting never waits for
    a line (``asyncio.to_thread`` would keep the loop from closing)."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        try:
            for line in sys.stdin:
                loop.call_soon_threadsafe(queue.put_nowait, line.rstrip("\r\n"))
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody listens
                loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read, name="chat-stdin", daemon=True).start()
    return queue


class Session:
    """One chat session: the client, the current room, and the echoes still awaited."""

    def __init__(
        self, client: ChatClient, room: str, printer: Printer, timeout: float, *, quiet: bool
    ) -> None:
        self.client = client
        self.quiet = quiet
        """Print nothing as it arrives (``--once`` prints only its own echo)."""
        self.room = room
        self.printer = printer
        self.timeout = timeout
        self.echoes: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.early: dict[str, dict[str, Any]] = {}
        """Ids that came back before their ack: the echo beat the ack."""
        self.typing = False

    def on_message(self, data: Any) -> None:
        if not isinstance(data, dict):
            return
        if not self.quiet:
            self.printer.message(data)
        message_id = data.get("id")
        if not isinstance(message_id, str):
            return
        future = self.echoes.get(message_id)
        if future is not None and not future.done():
            future.set_result(data)
        elif future is None:
            self.early[message_id] = data
            if len(self.early) > 256:  # others' messages: only a recent few matter
                del self.early[next(iter(self.early))]

    async def send(self, text: str) -> str:
        """Send ``text`` and return its id; :meth:`echo` then waits for it to come back."""
        if self.typing:
            self.typing = False
            with contextlib.suppress(ChatError):
                await self.client.typing_stop(self.room)
        ack = await self.client.send(self.room, text)
        message_id = ack["id"]
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if message_id in self.early:
            future.set_result(self.early.pop(message_id))
        self.echoes[message_id] = future
        return message_id

    async def echoed(self) -> list[dict[str, Any]]:
        """Wait until every sent message came back through the server; return them."""
        return list(await asyncio.wait_for(asyncio.gather(*self.echoes.values()), self.timeout))

    async def join(self, room: str) -> None:
        ack = await self.client.join(room)
        for message in ack["history"]:
            self.printer.message(dict(message))
        await self.who(room)

    async def who(self, room: str) -> None:
        users = sorted((await self.client.presence(room))["users"])
        self.printer.line(f"* in {room}: {', '.join(users) if users else 'nobody'}")

    async def command(self, line: str) -> bool:
        """Run one ``/command``; ``False`` to quit."""
        name, _, rest = line[1:].partition(" ")
        rest = rest.strip()
        if name in ("quit", "exit"):
            return False
        if name == "who":
            await self.who(rest or self.room)
        elif name == "history":
            limit = int(rest) if rest.isdigit() else 20
            for message in (await self.client.history(self.room, limit=limit))["messages"]:
                self.printer.message(dict(message))
        elif name == "join" and rest:
            await self.join(rest)
        elif name == "room" and rest:
            if rest not in self.client.rooms:
                await self.join(rest)
            self.room = rest
            self.printer.line(f"* now talking in {rest}")
        elif name == "leave" and rest:
            await self.client.leave(rest)
            self.printer.line(f"* left {rest}")
        elif name == "msg" and " " in rest:
            target, text = rest.split(" ", 1)
            await self.client.private(target, text)
        elif name == "typing":
            await self.client.typing_start(self.room)
            self.typing = True
        elif name == "help":
            self.printer.line(HELP)
        elif name in USAGES:
            self.printer.line(f"usage: {USAGES[name]}")
        else:
            self.printer.line(f"unknown command /{name}, try /help")
        return True


async def run(args: argparse.Namespace, token: TokenSource, out: TextIO, err: TextIO) -> int:
    printer = Printer(out)
    client = ChatClient(
        args.url,
        token,
        transports=["websocket"] if args.transport == "websocket" else ["polling", "websocket"],
        ack_timeout=args.timeout,
        connect_timeout=min(args.timeout, 5.0),
        backoff=Backoff(initial=0.5, maximum=5.0),
    )
    session = Session(client, args.room, printer, args.timeout, quiet=bool(args.once))
    client.on(p.MESSAGE_RECEIVED, session.on_message)
    if not args.once:
        client.on("*", lambda item: printer.event(*item))
    try:
        await client.connect()
    except Unauthorized as exc:
        print(f"error: the token was refused (unauthorized): {exc.message}", file=err)
        return EXIT_UNAUTHORIZED
    except HandshakeRefused as exc:
        print(f"error: the server refused the connection: {exc.code}: {exc.message}", file=err)
        return EXIT_UNREACHABLE
    except ConnectFailed as exc:
        print(f"error: cannot connect: {exc.message}", file=err)
        return EXIT_UNREACHABLE
    try:
        if args.once:
            await client.join(args.room)
            await session.send(args.once)
            for message in await session.echoed():
                printer.message(message)
            return EXIT_OK
        await session.join(args.room)
        printer.line(f"* talking in {args.room} as the token's user; /help for commands")
        return await interact(session, stdin_lines(asyncio.get_running_loop()), err)
    except Forbidden as exc:
        print(
            f"error: this token may not join room {args.room!r} (forbidden): {exc.message}",
            file=err,
        )
        return EXIT_FORBIDDEN
    except (ChatError, TimeoutError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_FAILED
    finally:
        await client.close()


async def interact(session: Session, lines: asyncio.Queue[str | None], err: TextIO) -> int:
    """Send each line; on end of input, wait for the echoes, then quit."""
    closed = asyncio.create_task(session.client.wait_closed())
    try:
        while True:
            next_line = asyncio.create_task(lines.get())
            done, _ = await asyncio.wait({next_line, closed}, return_when=asyncio.FIRST_COMPLETED)
            if closed in done:
                next_line.cancel()
                closed.result()  # raises why the client gave up
                return EXIT_FAILED
            line = next_line.result()
            if line is None:
                await session.echoed()
                return EXIT_OK
            if not line.strip():
                continue
            try:
                if line.startswith("/"):
                    if not await session.command(line):
                        return EXIT_OK
                else:
                    await session.send(line)
            except Forbidden as exc:
                print(
                    f"error: forbidden: this token may not join that room ({exc.message})",
                    file=err,
                    flush=True,
                )
            except ChatError as exc:
                print(f"error: {exc.code}: {exc.message}", file=err, flush=True)
    finally:
        closed.cancel()


def main(argv: Sequence[str]) -> int:
    """Entry point of ``socketio-service chat ARGS...``."""
    argv = list(argv)
    if argv[:1] == ["--"]:  # `socketio-service chat -- --url ...` passes the separator on
        argv = argv[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    for url in args.url:
        problem = url_problem(url)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_USAGE
    command = args.token_command or os.environ.get(TOKEN_COMMAND_ENV, "")
    token: TokenSource = (
        token_command(command) if command else args.token or os.environ.get(TOKEN_ENV, "")
    )
    if not token:
        print(
            f"error: a token is required: --token, ${TOKEN_ENV}, --token-command or "
            f"${TOKEN_COMMAND_ENV} (mint one with `socketio-service token --user NAME`)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        return asyncio.run(run(args, token, sys.stdout, sys.stderr))
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
