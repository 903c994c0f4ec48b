"""``socketio-service chat`` as users and smoke tests run it: a real process against a real
server, with a python client on the other end of the room."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence

from service.client import ChatClient

from .helpers import ROOT, free_port, token
from .test_client import FAST, Recorder

# `chat -- --url ...` works with both the current and a REMAINDER-free __main__ parser
CHAT = [sys.executable, "-m", "service", "chat", "--"]


async def run_chat(
    args: Sequence[str], stdin: bytes | None = None, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CHAT,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin or b""), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_once_sends_waits_for_the_echo_and_exits_zero(server):
    async with ChatClient(server.url, token("bob"), backoff=FAST) as bob:
        seen = Recorder(bob)
        await bob.join("smoke")
        code, out, err = await run_chat(
            ["--url", server.url, "--token", token("alice"), "--room", "smoke", "--once", "hi ✓"]
        )
        assert (code, err) == (0, "")
        assert out == "[smoke] alice: hi ✓\n"
        await seen.until(lambda: seen.texts("smoke") == ["hi ✓"])


async def test_token_from_the_environment(server):
    code, out, _ = await run_chat(
        ["--url", server.url, "--once", "env"], env={"CHAT_TOKEN": token("carol")}
    )
    assert code == 0 and out == "[lobby] carol: env\n"


async def test_refused_token_exits_3_with_a_clear_message(server):
    code, out, err = await run_chat(["--url", server.url, "--token", "nope", "--once", "x"])
    assert code == 3 and out == ""
    assert "token was refused (unauthorized)" in err
    code, _, err = await run_chat(
        ["--url", server.url, "--token", token("alice", ttl=-60), "--once", "x"]
    )
    assert code == 3 and "unauthorized" in err and "Traceback" not in err


async def test_unreachable_and_usage_errors():
    dead = f"http://127.0.0.1:{free_port()}"
    code, _, err = await run_chat(["--url", dead, "--token", token(), "--once", "x"])
    assert code == 4 and "cannot connect" in err
    code, _, err = await run_chat(["--url", dead], env={"CHAT_TOKEN": ""})
    assert code == 2 and "a token is required" in err
    code, _, err = await run_chat(["--once", "x"])
    assert code == 2 and "--url" in err


async def test_interactive_session_prints_the_room_and_sends_stdin(server):
    async with ChatClient(server.url, token("bob"), backoff=FAST) as bob:
        seen = Recorder(bob)
        await bob.join("lobby")
        await bob.send("lobby", "earlier")
        proc = await asyncio.create_subprocess_exec(
            *CHAT,
            "--url",
            server.url,
            "--room",
            "lobby",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "CHAT_TOKEN": token("alice")},
        )
        assert proc.stdin is not None and proc.stdout is not None

        async def line() -> str:
            assert proc.stdout is not None
            return (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().rstrip("\n")

        assert await line() == "[lobby] bob: earlier"  # the join's history
        assert await line() == "* in lobby: alice, bob"
        assert (await line()).startswith("* talking in lobby")
        await bob.typing_start("lobby")
        assert await line() == "* bob is typing in lobby"
        await bob.send("lobby", "hello alice")
        assert await line() == "[lobby] bob: hello alice"
        await bob.private("alice", "psst")
        assert await line() == "[private] bob: psst"
        proc.stdin.write(b"hello bob\n/who\n")
        await proc.stdin.drain()
        assert await line() == "[lobby] alice: hello bob"
        assert await line() == "* in lobby: alice, bob"
        await seen.until(lambda: "hello bob" in seen.texts("lobby"))
        proc.stdin.write(b"/leave nowhere\nlast words\n")
        proc.stdin.close()
        assert await line() == "[lobby] alice: last words"
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        assert proc.stderr is not None
        assert "not_in_room" in (await proc.stderr.read()).decode()


async def test_a_url_without_scheme_is_a_usage_error_naming_the_fix():
    code, out, err = await run_chat(["--url", "127.0.0.1:3002", "--token", token(), "--once", "x"])
    assert (code, out) == (2, "")
    assert err == (
        "error: --url 127.0.0.1:3002: the URL needs http:// or https:// "
        "(e.g. http://127.0.0.1:3000)\n"
    )


async def test_unknown_and_incomplete_commands_answer_in_one_line(server):
    code, out, err = await run_chat(
        ["--url", server.url, "--room", "cmds"],
        stdin=b"/bogus\n/join\n/help\n/quit\n",
        env={"CHAT_TOKEN": token("alice")},
    )
    assert (code, err) == (0, "")
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("* talking in cmds"))
    assert lines[start + 1 : start + 4] == [
        "unknown command /bogus, try /help",
        "usage: /join ROOM",
        "commands:",
    ]
    assert any(line.strip().startswith("/msg USER TEXT") for line in lines[start + 4 :])


# prints a 2 s token the first time it runs, then 1 h ones (a counter in argv[1])
MINT_ONCE_SHORT = (
    "import pathlib, sys\n"
    "from service.auth import mint_token\n"
    "counter = pathlib.Path(sys.argv[1])\n"
    "n = int(counter.read_text()) if counter.exists() else 0\n"
    "counter.write_text(str(n + 1))\n"
    "print(mint_token(sys.argv[2], 'alice', 2 if n == 0 else 3600))\n"
)


async def test_token_command_gives_a_fresh_token_after_the_old_one_expires(tmp_path):
    """The server disconnects a socket when its token expires; with --token-command the
    CLI asks for a fresh token and carries on in the same room."""
    import shlex

    from .helpers import SECRET, running_server

    script = tmp_path / "mint.py"
    script.write_text(MINT_ONCE_SHORT)
    counter = tmp_path / "count"
    async with running_server(jwt_leeway_seconds=0) as srv:
        async with ChatClient(srv.url, token("bob"), backoff=FAST) as bob:
            seen = Recorder(bob)
            await bob.join("renew")
            command = shlex.join([sys.executable, str(script), str(counter), SECRET])
            proc = await asyncio.create_subprocess_exec(
                *CHAT,
                "--url",
                srv.url,
                "--room",
                "renew",
                "--token-command",
                command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=ROOT,
            )
            assert proc.stdin is not None
            proc.stdin.write(b"before\n")
            await proc.stdin.drain()
            await seen.until(lambda: "before" in seen.texts("renew"))
            await asyncio.sleep(3.5)  # the first token expired: disconnected, reconnected
            proc.stdin.write(b"after\n")
            proc.stdin.close()
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            await seen.until(lambda: "after" in seen.texts("renew"))
    assert proc.returncode == 0, err.decode()
    assert "[renew] alice: after" in out.decode()
    assert "* the token expired; reconnecting with a fresh one" in out.decode()
    assert int(counter.read_text()) >= 2
