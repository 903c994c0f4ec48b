"""Hostile input against a live service process, over websocket and long-polling.

After every malformed frame or payload: the server still answers a fresh client, no other
client received anything, and the server's memory stays within bounds. Token attacks are
refused with ``unauthorized`` and no token reaches the logs. Security defaults (CORS,
cookies) are checked over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import keys
from service.protocol import CLIENT_EVENTS, ERROR_CODES

from .corpus import Case, all_cases
from .helpers import (
    SECRET,
    ServiceProcess,
    connect,
    connect_error,
    running_server,
    spawn_service,
    token,
)
from .rawclient import Closed, RawClient, RawPolling, RawWebSocket, open_raw
from .test_auth import BAD_TOKENS, _claims, _hs256_with_raw_key, _rsa_pair

TRANSPORTS = ["websocket", "polling"]
RSS_BOUND_BYTES = 96 * 1024 * 1024
"""How far above its warmed-up RSS the server may be after any hostile input."""
OBSERVER_ROOM = "obs-7f3a9c"
QUIET_EVENTS = (
    "message:received",
    "message:private:received",
    "typing:user:start",
    "typing:user:stop",
)


class LiveService:
    """``python -m service`` with its output drained in a thread (a full pipe would block
    it), and its RSS read from /proc."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc: ServiceProcess = spawn_service(env)
        self.url = self.proc.url
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        stdout = self.proc.proc.stdout
        assert stdout is not None
        for line in stdout:
            self.lines.append(line)

    def rss(self) -> int:
        with open(f"/proc/{self.proc.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> int:
        code = self.proc.stop()
        self._reader.join(10)
        return code

    def log_text(self) -> str:
        return "".join(self.lines)


@pytest.fixture(scope="module")
def live() -> Iterator[LiveService]:
    service = LiveService(
        {
            "RATE_LIMIT_EVENTS": "10000000",
            "HANDSHAKE_RATE_PER_ADDRESS": "0",
            "LOG_LEVEL": "info",
            "SHUTDOWN_DELAY_SECONDS": "0",
            "SHUTDOWN_DRAIN_SECONDS": "0.2",
        }
    )
    yield service
    assert service.stop() == 0


async def attacker(url: str, transport: str, http: aiohttp.ClientSession) -> RawClient:
    raw = await open_raw(url, transport, http)
    await raw.connect({"token": token("mallory")})
    assert (await raw.call("join:room", "r"))["ok"]
    return raw


async def send_case(raw: RawClient, case: Case) -> str:
    """Send one case and return how the server reacted: acked, closed or silent."""
    try:
        if case.raw_text is not None:
            if isinstance(raw, RawWebSocket):
                await raw.send_invalid_text(case.raw_text)
            else:
                assert isinstance(raw, RawPolling)
                if await raw.post(case.raw_text) != 200:
                    return "refused"
        else:
            await raw.send(*case.frames)
        # the server handles one client's packets in order: once the probe is acked,
        # everything before it was handled
        ack = await raw.call("join:room", "probe", timeout=2)
        assert ack["ok"] is True, ack
        return "acked"
    except Closed:
        return "closed"
    except TimeoutError:
        return "silent"


async def fresh_client_answers(url: str, transport: str, http: aiohttp.ClientSession) -> None:
    raw = await open_raw(url, transport, http)
    try:
        await raw.connect({"token": token("fresh")})
        ack = await raw.call("join:room", "probe", timeout=5)
        assert ack["ok"] is True, ack
    finally:
        await raw.close()


def assert_quiet(observer: Any, case: str) -> None:
    for event in QUIET_EVENTS:
        assert not observer.events[event], f"{case}: observer got {event}"


@pytest.mark.slow
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_frame_and_payload_corpus(live: LiveService, transport: str) -> None:
    cases = all_cases()
    assert len(cases) >= 200
    observer = await connect(live.url, "olivia")
    outcomes: Counter[str] = Counter()
    by_case: dict[str, str] = {}
    try:
        assert (await observer.call("join:room", "r"))["ok"]
        async with aiohttp.ClientSession() as http:
            await fresh_client_answers(live.url, transport, http)  # warm-up
            baseline = live.rss()
            peak = baseline
            started = time.monotonic()
            for case in cases:
                raw = await attacker(live.url, transport, http)
                try:
                    outcome = await send_case(raw, case)
                finally:
                    await raw.close()
                outcomes[outcome] += 1
                by_case[case.name] = outcome
                await fresh_client_answers(live.url, transport, http)
                assert_quiet(observer, case.name)
                rss = live.rss()
                peak = max(peak, rss)
                assert rss - baseline < RSS_BOUND_BYTES, f"{case.name}: RSS {rss - baseline} over"
            elapsed = time.monotonic() - started
        await asyncio.sleep(0.3)
        assert_quiet(observer, "after the corpus")
        assert (await observer.call("presence:get", "r"))["ok"]
    finally:
        await observer.close()
    final = live.rss()
    report = {
        "transport": transport,
        "cases": len(cases),
        "outcomes": dict(outcomes),
        "seconds": round(elapsed, 1),
        "rss_baseline_mib": round(baseline / 2**20, 1),
        "rss_peak_mib": round(peak / 2**20, 1),
        "rss_final_mib": round(final / 2**20, 1),
        "closed": sorted(n for n, o in by_case.items() if o == "closed"),
        "silent": sorted(n for n, o in by_case.items() if o == "silent"),
    }
    print("\nhostile corpus:", json.dumps(report, indent=1))
    _write_report(f"corpus-{transport}", report)
    # well-formed but wrong payloads are answered, never punished with a disconnect
    for case in cases:
        if "payload" in case.tags:
            assert by_case[case.name] == "acked", case.name


def _write_report(name: str, data: dict[str, Any]) -> None:
    """Figures for docs/reliability.md, when RELIABILITY_REPORT_DIR is set."""
    directory = os.environ.get("RELIABILITY_REPORT_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"{name}.json"), "w") as out:
            json.dump(data, out, indent=1)


async def test_malformed_packets_close_only_the_offender(live: LiveService, clients) -> None:
    """A parse error disconnects its sender (as socket.io does), counted, without a
    traceback per frame in the logs; well-formed wrong payloads get an error ack."""
    observer = await connect(live.url, "olivia")
    clients.append(observer)
    await observer.call("join:room", "r")
    before = len(live.lines)
    async with aiohttp.ClientSession() as http:
        raw = await attacker(live.url, "websocket", http)
        refused = await raw.call("join:room", 42)
        assert refused["ok"] is False and refused["error"]["code"] == "invalid_payload"
        assert await send_case(raw, Case("broken", ("42[",))) == "closed"
        await raw.close()
        for transport in TRANSPORTS:
            await fresh_client_answers(live.url, transport, http)
        async with http.get(f"{live.url}/metrics") as resp:
            metrics = await resp.text()
    assert 'socketio_clients_evicted_total{reason="protocol_error"}' in metrics
    await asyncio.sleep(0.2)
    new_logs = "".join(live.lines[before:])
    assert "Traceback" not in new_logs
    assert_quiet(observer, "malformed")


# -- property-based: any event name, any JSON payload ------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=200),
    lambda children: st.lists(children, max_size=8)
    | st.dictionaries(
        st.sampled_from(["roomId", "message", "targetUserId", "since", "before", "limit"])
        | st.text(max_size=10),
        children,
        max_size=6,
    ),
    max_leaves=40,
)
event_names = st.sampled_from(CLIENT_EVENTS) | st.text(max_size=40)


class LoopThread:
    """An event loop in a thread, so synchronous hypothesis examples can drive async clients
    that outlive one example (the observer)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_any_event_and_payload_gets_a_well_formed_ack(live: LiveService, transport: str) -> None:
    runner = LoopThread()
    state: dict[str, Any] = {}

    async def setup() -> None:
        state["http"] = aiohttp.ClientSession()
        state["observer"] = await connect(live.url, "olivia")
        await state["observer"].call("join:room", OBSERVER_ROOM)
        state["raw"] = await attacker(live.url, transport, state["http"])
        state["baseline"] = live.rss()

    async def check(event: str, payload: Any) -> None:
        raw: RawClient = state["raw"]
        if raw.closed:
            raw = state["raw"] = await attacker(live.url, transport, state["http"])
        ack_id = raw.next_ack_id()
        await raw.send(f"42{ack_id}" + json.dumps([event, payload]))
        reply = await raw.expect(f"43{ack_id}[", timeout=5)
        ack = json.loads(reply[len(f"43{ack_id}") :])[0]
        assert isinstance(ack, dict) and isinstance(ack.get("ok"), bool), ack
        if not ack["ok"]:
            assert ack["error"]["code"] in ERROR_CODES, ack
            assert isinstance(ack["error"]["message"], str)
        if event not in CLIENT_EVENTS:
            assert ack["error"]["code"] == "unknown_event"

    async def teardown() -> dict[str, Any]:
        observer = state["observer"]
        await asyncio.sleep(0.2)
        got = {e: list(observer.events[e]) for e in (*QUIET_EVENTS, "user:joined")}
        await observer.close()
        await state["raw"].close()
        await fresh_client_answers(live.url, transport, state["http"])
        await state["http"].close()
        return got

    @settings(
        max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", "150")),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(event=event_names, payload=json_values)
    def property_holds(event: str, payload: Any) -> None:
        if isinstance(payload, dict) and payload.get("targetUserId") == "olivia":
            del payload["targetUserId"]  # a valid private message to the observer
        runner.run(check(event, payload))

    try:
        runner.run(setup())
        property_holds()
        got = runner.run(teardown())
    finally:
        runner.close()
    assert all(not v for v in got.values()), got
    grown = live.rss() - state["baseline"]
    print(f"\nproperty run ({transport}): RSS grew {grown / 2**20:.1f} MiB")
    assert grown < RSS_BOUND_BYTES


# -- token attacks --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[str, str]:
    return _rsa_pair()


def _b64(data: dict[str, Any]) -> str:
    import base64

    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def token_attacks(private: str, public: str) -> dict[str, str | None]:
    now = int(time.time())
    attacks: dict[str, str | None] = {
        name: value for name, value in BAD_TOKENS.items() if isinstance(value, str) and value
    }
    for alg in ("none", "None", "NONE", "nOnE"):
        attacks[f"alg {alg}"] = f"{_b64({'alg': alg, 'typ': 'JWT'})}.{_b64(_claims())}."
    attacks.update(
        {
            "alg none with signature": f"{_b64({'alg': 'none'})}.{_b64(_claims())}.c2ln",
            "HS256 with the RSA public key as secret": _hs256_with_raw_key(public),
            "RS256 signed by another key": jwt.encode(_claims(), _rsa_pair()[0], "RS256"),
            "RS256 expired": jwt.encode({**_claims(), "exp": now - 3600}, private, "RS256"),
            "RS256 not yet valid": jwt.encode({**_claims(), "nbf": now + 600}, private, "RS256"),
            "RS256 wrong audience": jwt.encode(_claims(aud="other", iss="idp"), private, "RS256"),
            "RS256 wrong issuer": jwt.encode(_claims(aud="chat", iss="evil"), private, "RS256"),
            "RS256 no audience": jwt.encode(_claims(iss="idp"), private, "RS256"),
            "RS256 oversized": jwt.encode(
                {**_claims(aud="chat", iss="idp"), "pad": "x" * 9000}, private, "RS256"
            ),
            "jwk header injection": jwt.encode(
                _claims(aud="chat", iss="idp"), SECRET, "HS256", headers={"jwk": {"k": "x"}}
            ),
            "kid path traversal": jwt.encode(
                _claims(aud="chat", iss="idp"), SECRET, "HS256", headers={"kid": "../../dev/null"}
            ),
            "two dots only": "..",
            "huge header": _b64({"alg": "RS256", "x": "y" * 12_000}) + ".e30.sig",
        }
    )
    return attacks


async def test_token_attacks_are_refused_and_never_logged(rsa_keys) -> None:
    private, public = rsa_keys
    proc = LiveService(
        {
            "JWT_SECRET": "",
            "JWT_PUBLIC_KEY": public,
            "JWT_ALGORITHMS": "RS256",
            "JWT_AUDIENCE": "chat",
            "JWT_ISSUER": "idp",
            "LOG_LEVEL": "debug",
            "SHUTDOWN_DELAY_SECONDS": "0",
            "SHUTDOWN_DRAIN_SECONDS": "0.2",
            "HANDSHAKE_RATE_PER_ADDRESS": "0",
        }
    )
    attacks = token_attacks(private, public)
    try:
        good = jwt.encode(_claims(aud="chat", iss="idp"), private, "RS256")
        ok = await connect(proc.url, None, auth={"token": good})
        await ok.close()
        for name, bad in attacks.items():
            assert bad is not None
            data = await connect_error(proc.url, auth={"token": bad})
            assert data["code"] == "unauthorized", name
            if len(bad) < 8000:  # aiohttp refuses longer header lines with 400 before us
                header = {"Authorization": f"Bearer {bad}"}
                data = await connect_error(proc.url, headers=header)
                assert data["code"] == "unauthorized", name
        # over long-polling too, with a raw client
        async with aiohttp.ClientSession() as http:
            for bad in attacks.values():
                raw = await open_raw(proc.url, "polling", http)
                with pytest.raises(Closed, match="unauthorized"):
                    await raw.connect({"token": bad})
                await raw.close()
            # a valid token in the query string (or a cookie) is ignored
            for where in ("query", "cookie"):
                url = f"{proc.url}/socket.io/?EIO=4&transport=polling"
                if where == "query":
                    url += f"&token={good}&auth={good}"
                headers = {"Cookie": f"token={good}"} if where == "cookie" else {}
                async with http.get(url, headers=headers) as resp:
                    sid = json.loads((await resp.text())[1:])["sid"]
                endpoint = f"{proc.url}/socket.io/?EIO=4&transport=polling&sid={sid}"
                async with http.post(endpoint, data="40", headers=headers) as resp:
                    assert resp.status == 200
                async with http.get(endpoint, headers=headers) as resp:
                    reply = await resp.text()
                assert reply.startswith("44") and "unauthorized" in reply, (where, reply)
    finally:
        assert proc.stop() == 0
    logs = proc.log_text()
    assert "handshake refused" in logs  # the refusals were logged, at least as events
    for name, bad in [*attacks.items(), ("good", good)]:
        assert bad is not None
        for part in {bad, *[p for p in bad.split(".") if len(p) >= 16]}:
            assert part not in logs, f"{name}: token material in the logs"


# -- security defaults ------------------------------------------------------------------------


async def test_cors_refuses_unknown_origins_and_never_wildcards_by_default(live) -> None:
    url = f"{live.url}/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Origin": "https://evil.example"}) as resp:
            assert resp.status == 400
            assert "Access-Control-Allow-Origin" not in resp.headers
        async with http.options(
            url,
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        ) as resp:
            assert resp.headers.get("Access-Control-Allow-Origin") in (None, "")
        async with http.get(url) as resp:  # no Origin: not a browser, allowed
            assert resp.status == 200
            assert resp.headers.get("Access-Control-Allow-Origin") != "*"
            # CSRF-free: the session is not carried by a cookie, none is set
            assert "Set-Cookie" not in resp.headers
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(
                f"{live.url}/socket.io/?EIO=4&transport=websocket",
                headers={"Origin": "https://evil.example"},
            )


async def test_cors_allows_only_configured_origins() -> None:
    proc = LiveService(
        {
            "CORS_ALLOWED_ORIGINS": "https://chat.example",
            "SHUTDOWN_DELAY_SECONDS": "0",
            "SHUTDOWN_DRAIN_SECONDS": "0.2",
        }
    )
    url = f"{proc.url}/socket.io/?EIO=4&transport=polling"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url, headers={"Origin": "https://chat.example"}) as resp:
                assert resp.status == 200
                assert resp.headers["Access-Control-Allow-Origin"] == "https://chat.example"
            async with http.get(url, headers={"Origin": "https://chat.example.evil"}) as resp:
                assert resp.status == 400
            async with http.get(url, headers={"Origin": "null"}) as resp:
                assert resp.status == 400
    finally:
        assert proc.stop() == 0


@pytest.mark.parametrize("name", ["disconnect", "connect"])
async def test_a_client_event_named_like_a_reserved_one_changes_nothing(name: str) -> None:
    """``42["disconnect"]`` from a client once ran the disconnect handler: its session was
    dropped while its socket stayed connected, so it no longer counted toward
    MAX_CONNECTIONS, and the room was told it left."""
    async with running_server(max_connections=2, handshake_rate_per_address=0) as srv:
        async with aiohttp.ClientSession() as http:
            observer = await connect(srv.url, "olivia")
            await observer.call("join:room", "r")
            raw = await open_raw(srv.url, "websocket", http)
            await raw.connect({"token": token("mallory")})
            assert (await raw.call("join:room", "r"))["ok"]
            await observer.wait_for("user:joined")
            ack = await raw.call(name, "transport close")
            assert (
                ack is not None and ack["ok"] is False and ack["error"]["code"] == "unknown_event"
            )
            assert (await raw.call("presence:get", "r"))["users"] == ["mallory", "olivia"]
            assert not observer.events["user:left"]
            # still counted: a third connection is refused
            assert (await connect_error(srv.url, auth={"token": token("eve")}))["code"] == (
                "overloaded"
            )
            await raw.close()
            await observer.close()


# -- client input that reaches Redis -------------------------------------------------------------

BEYOND_REDIS_IDS = {
    "ms 2^64": "18446744073709551616-0",
    "seq 2^64": "0-18446744073709551616",
    "both 2^64": "18446744073709551616-18446744073709551616",
    "arabic-indic digits": "\u0661\u0662\u0663-0",
    "fullwidth digits": "\uff11\uff12-0",
    "superscript": "\u00b2-0",
    "plus sign": "+1-0",
    "spaces": " 1-0",
}
EDGE_IDS = {
    "zero": "0-0",
    "largest": "18446744073709551615-18446744073709551615",
    "largest ms": "18446744073709551615-0",
    "leading zeros": "000000000000000000001-000",
}


@pytest.mark.parametrize("mode", ["cluster", "embedded"])
async def test_every_id_from_a_client_is_validated_before_redis(request, mode: str) -> None:
    """Ids Redis cannot parse (past 64 bits, other scripts' digits) are the client's
    fault: ``invalid_payload``, never ``internal``; ids at the edges of the range work."""
    overrides: dict[str, Any] = {"rate_limit_events": 10**6}
    if mode == "cluster":
        overrides["redis_url"] = request.getfixturevalue("redis_url")
    async with running_server(**overrides) as srv:
        client = await connect(srv.url, "idler")
        try:
            assert (await client.call("join:room", "ids"))["ok"]
            sent = await client.call("message:send", {"roomId": "ids", "message": "m"})
            assert sent["ok"]
            for name, bad in BEYOND_REDIS_IDS.items():
                for ack in (
                    await client.call("history:get", {"roomId": "ids", "before": bad}),
                    await client.call("join:room", {"roomId": "ids", "since": bad}),
                ):
                    assert ack["ok"] is False, (name, ack)
                    assert ack["error"]["code"] == "invalid_payload", (name, ack)
            for name, edge in EDGE_IDS.items():
                got = await client.call("history:get", {"roomId": "ids", "before": edge})
                assert got["ok"], (name, got)
                joined = await client.call("join:room", {"roomId": "ids", "since": edge})
                assert joined["ok"], (name, joined)
            before_zero = await client.call("history:get", {"roomId": "ids", "before": "0-0"})
            assert before_zero["messages"] == []
            after_all = await client.call(
                "join:room", {"roomId": "ids", "since": EDGE_IDS["largest"]}
            )
            assert after_all["missed"] == []
            everything = await client.call(
                "history:get", {"roomId": "ids", "before": EDGE_IDS["largest"]}
            )
            assert [m["id"] for m in everything["messages"]] == [sent["id"]]
            since_zero = await client.call(
                "join:room", {"roomId": "ids", "since": EDGE_IDS["leading zeros"]}
            )
            assert [m["id"] for m in since_zero["missed"]] == [sent["id"]]
            # a private message to a user id Redis cannot encode as a channel name
            lone = await client.call("message:private", {"targetUserId": "\ud800", "message": "x"})
            assert lone["ok"] is False and lone["error"]["code"] == "invalid_payload"
        finally:
            await client.close()
        metrics = srv.app[keys.METRICS].registry
        internal = sum(
            s.value
            for m in metrics.collect()
            if m.name == "socketio_event_errors"
            for s in m.samples
            if s.labels.get("code") == "internal" and s.name.endswith("_total")
        )
    assert internal == 0


# -- escaping amplification ------------------------------------------------------------------------


async def _redis_field_bytes(redis_url: str, room: str) -> list[int]:
    """The stored size of every history entry of ``room`` (the JSON field, in bytes)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        keys_found = [k async for k in client.scan_iter(match=f"*history*{{{room}}}")]
        assert len(keys_found) == 1, keys_found
        entries = await client.xrange(keys_found[0])
        return [len(fields[b"m"]) for _, fields in entries]
    finally:
        await client.aclose()


async def test_a_message_costs_about_its_size_on_the_wire_and_in_redis(redis_url) -> None:
    """ensure_ascii made a 4 KB message of CJK text 8.3 KB and one of control characters
    24.5 KB, on the wire and in Redis."""
    cjk = "\u4e2d" * 1365  # 4,095 bytes of UTF-8
    quotes = '"' * 4096  # JSON's worst case left: two bytes per character
    async with running_server(redis_url=redis_url, rate_limit_events=10**6) as srv:
        async with aiohttp.ClientSession() as http:
            raw = await open_raw(srv.url, "websocket", http)
            await raw.connect({"token": token("sizer")})
            assert (await raw.call("join:room", "sizes"))["ok"]
            wire: dict[str, int] = {}
            for name, text in (("cjk", cjk), ("quotes", quotes), ("ascii", "a" * 4096)):
                await raw.send(
                    "42" + json.dumps(["message:send", {"roomId": "sizes", "message": text}])
                )
                frame = await raw.expect('42["message:received"')
                assert json.loads(frame[2:])[1]["message"] == text
                wire[name] = len(frame.encode())
            controls = await raw.call("message:send", {"roomId": "sizes", "message": "\x01" * 4080})
            assert controls["ok"] is False and controls["error"]["code"] == "invalid_payload"
            text_ok = await raw.call(
                "message:send", {"roomId": "sizes", "message": "line\nnext\ttab\r\n"}
            )
            assert text_ok["ok"], text_ok
            await raw.close()
        stored = await _redis_field_bytes(redis_url, "sizes")
    envelope = 300
    assert wire["cjk"] <= 4095 + envelope, wire
    assert wire["ascii"] <= 4096 + envelope, wire
    assert wire["quotes"] <= 2 * 4096 + envelope, wire
    assert stored[0] <= 4095 + envelope and stored[2] <= 4096 + envelope, stored
    report = {
        "wire_bytes": wire,
        "redis_bytes": dict(zip(("cjk", "quotes", "ascii"), stored[:3], strict=True)),
    }
    print("\nbytes per 4 KB message:", report)
    _write_report("escaping", report)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_replies_with_history_fit_the_send_buffer_and_page_the_rest(
    redis_url, transport: str
) -> None:
    """A join:room reply with 30 messages of 4 KB (and as many missed) was larger than
    SEND_BUFFER_BYTES: a long-polling client was evicted before it got its reply."""
    buffer = 64 * 1024
    text = "\u4e2d" * 1364
    async with running_server(
        redis_url=redis_url, rate_limit_events=10**6, send_buffer_bytes=buffer
    ) as srv:
        writer = await connect(srv.url, "writer")
        try:
            await writer.call("join:room", "big")
            ids = []
            for n in range(30):
                ack = await writer.call("message:send", {"roomId": "big", "message": f"{n}{text}"})
                ids.append(ack["id"])
        finally:
            await writer.close()
        async with aiohttp.ClientSession() as http:
            raw = await open_raw(srv.url, transport, http)
            await raw.connect({"token": token("reader")})
            ack_id = raw.next_ack_id()
            await raw.send(
                f"42{ack_id}" + json.dumps(["join:room", {"roomId": "big", "since": "0-0"}])
            )
            frame = await raw.expect(f"43{ack_id}[", timeout=10)
            reply = json.loads(frame[len(f"43{ack_id}") :])[0]
            reply_bytes = len(frame.encode())
            assert reply["ok"], reply
            assert reply_bytes < buffer
            assert reply["more"] is True and reply["missedMore"] is True
            # page the history back, and the missed messages forward
            history = [m["id"] for m in reply["history"]]
            while True:
                page = await raw.call("history:get", {"roomId": "big", "before": history[0]})
                history = [m["id"] for m in page["messages"]] + history
                if not page.get("more"):
                    break
            missed = [m["id"] for m in reply["missed"]]
            more = reply["missedMore"]
            while more:
                again = await raw.call("join:room", {"roomId": "big", "since": missed[-1]})
                missed += [m["id"] for m in again["missed"]]
                more = again.get("missedMore", False)
            assert not raw.closed
            await raw.close()
        evicted = sample_value(srv.app, "socketio_clients_evicted_total", reason="slow_consumer")
    assert history == ids
    assert missed == ids
    assert evicted == 0
    print(f"\njoin reply ({transport}): {reply_bytes} bytes under a {buffer}-byte buffer")
    _write_report(f"history-reply-{transport}", {"reply_bytes": reply_bytes, "buffer": buffer})


def sample_value(app: Any, name: str, **labels: str) -> float:
    return app[keys.METRICS].registry.get_sample_value(name, labels) or 0.0


async def test_the_python_client_collects_every_missed_message_of_a_cut_reply() -> None:
    from service.client import ChatClient

    text = "\u4e2d" * 1364
    async with running_server(rate_limit_events=10**6, send_buffer_bytes=32 * 1024) as srv:
        writer = await connect(srv.url, "writer")
        try:
            await writer.call("join:room", "cut")
            ids = [
                (await writer.call("message:send", {"roomId": "cut", "message": f"{n}{text}"}))[
                    "id"
                ]
                for n in range(12)
            ]
        finally:
            await writer.close()
        client = ChatClient(srv.url, token("reader"))
        got: list[str] = []
        client.on("message:received", lambda m: got.append(m["id"]))
        await client.connect()
        try:
            ack = await client.join("cut", since="0-0")
            assert [m["id"] for m in ack["missed"]] == ids
            assert ack.get("more") is True  # history itself was cut: page with before
            older = await client.history("cut", before=ack["history"][0]["id"])
            assert [m["id"] for m in older["messages"]] + [m["id"] for m in ack["history"]] == ids[
                -len(older["messages"]) - len(ack["history"]) :
            ]
        finally:
            await client.close()
        assert got == ids


# -- a socket does not outlive its token -----------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_socket_is_disconnected_when_its_token_expires(transport: str) -> None:
    """A 2 s token kept sending and reading history 12 s later; now the socket gets
    ``auth:expired`` and is disconnected at exp + leeway."""
    async with running_server(jwt_leeway_seconds=0.5, rate_limit_events=10**6) as srv:
        async with aiohttp.ClientSession() as http:
            raw = await open_raw(srv.url, transport, http)
            started = time.time()
            await raw.connect({"token": token("brief", ttl=2)})
            assert (await raw.call("join:room", "r"))["ok"]
            notice = await raw.expect('42["auth:expired"', timeout=6)
            closed_after = time.time() - started
            frames = await raw.drain(2)
            assert json.loads(notice[2:])[1]["code"] == "token_expired"
            assert raw.closed or any(f == "41" for f in frames), frames
            # no longer answered (the Engine.IO session left alone goes after the
            # connect timeout, like any session without a namespace)
            with pytest.raises((Closed, TimeoutError)):
                await raw.call("history:get", "r", timeout=1)
            await raw.close()
        expired = sample_value(srv.app, "socketio_disconnections_total", reason="token_expired")
        assert expired == 1
        assert len(srv.app[keys.NAMESPACE].expiry) == 0
    # exp is whole seconds: the token expired 1-2 s after it was minted
    assert 1 <= closed_after < 5, closed_after
    print(f"\nexpired token ({transport}): disconnected {closed_after:.1f}s after connecting")
    _write_report(
        f"token-expiry-{transport}", {"ttl_s": 2, "closed_after_s": round(closed_after, 1)}
    )


async def test_the_python_client_refreshes_its_token_and_carries_on() -> None:
    from service.client import CONNECTED, DISCONNECTED, ChatClient

    minted: list[str] = []

    def fresh() -> str:  # a 2 s token first, then long ones (no second expiry mid-test)
        minted.append(token("renewer", ttl=2 if not minted else 3600))
        return minted[-1]

    async with running_server(jwt_leeway_seconds=0, rate_limit_events=10**6) as srv:
        observer = await connect(srv.url, "olivia")
        try:
            await observer.call("join:room", "renew")
            client = ChatClient(srv.url, fresh)
            events: list[tuple[str, Any]] = []
            client.on("*", lambda item: events.append(item))
            await client.connect()
            try:
                await client.join("renew")
                await client.send("renew", "first")
                await asyncio.sleep(3.5)  # past the first token's expiry
                await client.send("renew", "second")
                names = [name for name, _ in events]
                assert "auth:expired" in names
                assert names.count(DISCONNECTED) >= 1 and names.count(CONNECTED) >= 1
                assert len(minted) >= 2
            finally:
                await client.close()
            await observer.wait_for("message:received", lambda m: m["message"] == "second")
        finally:
            await observer.close()


async def test_a_token_subject_redis_cannot_encode_is_refused(redis_url) -> None:
    """A signed ``sub`` with a lone surrogate becomes the user's channel name in cluster
    mode: refused ``unauthorized`` at the handshake, not an internal error."""
    async with running_server(redis_url=redis_url) as srv:
        data = await connect_error(srv.url, auth={"token": token("\ud800")})
        assert data["code"] == "unauthorized"
        ok = await connect(srv.url, "still-fine")
        await ok.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_official_js_client_learns_why_and_reconnects_with_a_fresh_token(
    transport: str,
) -> None:
    from .test_js_client import JS_DIR, js_client_ready

    node = js_client_ready()
    async with running_server(jwt_leeway_seconds=0) as srv:
        proc = await asyncio.create_subprocess_exec(
            node,
            str(JS_DIR / "expiry.js"),
            srv.url,
            token("brief", ttl=2),
            token("brief"),
            transport,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert proc.returncode == 0, (report, err.decode())
    assert report["expired"]["code"] == "token_expired"
    assert report["disconnectReason"] == "io server disconnect"
    assert report["afterRefresh"]["ok"] is True  # the refreshed socket is served again
    assert report["afterRefresh"]["roomId"] == "nowhere"
