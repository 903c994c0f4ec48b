"""A corpus of malformed and adversarial Engine.IO / Socket.IO frames and event payloads.

Each :class:`Case` is sent by a client that is connected to ``/`` and has joined room ``r``
(see tests/test_hostile_input.py). Generated, not stored: every case is readable here and
the count is checked (at least 200).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

Frame = str | bytes

MAX_HTTP_BUFFER = 2 * 4096 + 16 * 1024
"""The service's max_http_buffer_size with the default MAX_MESSAGE_BYTES (4096)."""

CLIENT_EVENTS = (
    "join:room",
    "leave:room",
    "message:send",
    "message:private",
    "typing:start",
    "typing:stop",
    "history:get",
    "presence:get",
)


@dataclass(frozen=True)
class Case:
    name: str
    frames: tuple[Frame, ...] = ()
    raw_text: bytes | None = None
    """Bytes sent as one text frame / POST body, not valid UTF-8 (bypasses the encoder)."""
    tags: frozenset[str] = field(default_factory=frozenset)


def _event(args: object, ack: int | None = None) -> str:
    return "42" + ("" if ack is None else str(ack)) + json.dumps(args, separators=(",", ":"))


def _nested(depth: int, open_: str = "[", close: str = "]") -> str:
    return open_ * depth + close * depth


BAD_PAYLOADS: dict[str, object] = {
    "null": None,
    "zero": 0,
    "negative": -1,
    "float": 1.5,
    "true": True,
    "false": False,
    "empty string": "",
    "room id too long": "r" * 129,
    "room id bad chars": "bad room!",
    "room id unicode": "rüm",
    "room id newline": "r\n",
    "room id NUL": "r\x00",
    "empty list": [],
    "list of room": ["r"],
    "empty object": {},
    "roomId number": {"roomId": 1},
    "roomId list": {"roomId": ["r"]},
    "roomId operator": {"roomId": {"$gt": ""}},
    "roomId null": {"roomId": None},
    "message number": {"roomId": "r", "message": 5},
    "message object": {"roomId": "r", "message": {"text": "x"}},
    "message empty": {"roomId": "r", "message": ""},
    "message too large": {"roomId": "r", "message": "x" * 4097},
    "message 4-byte chars too large": {"roomId": "r", "message": "😀" * 1025},
    "not member": {"roomId": "elsewhere", "message": "x"},
    "target number": {"targetUserId": 7, "message": "x"},
    "target empty": {"targetUserId": "", "message": "x"},
    "target huge": {"targetUserId": "u" * 300, "message": "x"},
    "since garbage": {"roomId": "r", "since": "not-an-id"},
    "since huge": {"roomId": "r", "since": "9" * 60},
    "since number": {"roomId": "r", "since": 12},
    "before garbage": {"roomId": "r", "before": "x-y"},
    "before past 64 bits": {"roomId": "r", "before": "18446744073709551616-0"},
    "since seq past 64 bits": {"roomId": "r", "since": "0-18446744073709551616"},
    "before other-script digits": {"roomId": "r", "before": "\u0661\u0662-0"},
    "before nothing precedes": {"roomId": "nobody-here", "before": "0-0"},
    "since nothing follows": {
        "roomId": "nobody-here",
        "since": "18446744073709551615-18446744073709551615",
    },
    "target lone surrogate": {"targetUserId": "\ud800", "message": "x"},
    "message C0 controls": {"roomId": "r", "message": "\x01" * 4000},
    "limit negative": {"roomId": "r", "limit": -5},
    "limit string": {"roomId": "r", "limit": "10"},
    "limit bool": {"roomId": "r", "limit": True},
    "limit huge": {"roomId": "nobody-here", "limit": 10**18},
    "__proto__": {"__proto__": {"admin": True}, "roomId": 1},
}

# Events whose refusal must not emit anything to room "r" (valid-looking payloads only for
# events that cannot reach another client: queries and joins of other rooms are fine).
SAFE_EVENTS = CLIENT_EVENTS


def payload_cases() -> list[Case]:
    cases = []
    for event in SAFE_EVENTS:
        for name, payload in BAD_PAYLOADS.items():
            if _reaches_room_r(event, payload):
                continue
            cases.append(
                Case(f"{event} {name}", (_event([event, payload], 7),), tags=frozenset({"payload"}))
            )
    return cases


def _reaches_room_r(event: str, payload: object) -> bool:
    """Payloads that are in fact valid for this event and would be seen by room r."""
    if event in ("typing:start", "typing:stop", "leave:room", "join:room"):
        # room references may be {roomId, ...}: extra fields are ignored
        return payload == "r" or (isinstance(payload, dict) and payload.get("roomId") == "r")
    return False


def frame_cases() -> list[Case]:
    big = MAX_HTTP_BUFFER
    c: list[tuple[str, tuple[Frame, ...]]] = [
        # Engine.IO level
        ("eio empty", ("",)),
        ("eio unknown type 9", ("9",)),
        ("eio unknown type 7", ("7hello",)),
        ("eio type letter", ("x",)),
        ("eio open from client", ('0{"sid":"forged"}',)),
        ("eio upgrade without probe", ("5",)),
        ("eio noop", ("6",)),
        ("eio ping probe", ("2probe",)),
        ("eio unsolicited pong", ("3",)),
        ("eio pong with payload", ("3" + "x" * 1000,)),
        ("eio many pings", tuple("2" for _ in range(50))),
        ("eio message empty", ("4",)),
        ("eio whitespace", ("   ",)),
        ("eio record separator", ("\x1e\x1e",)),
        ("eio NUL bytes", ("4\x00\x00",)),
        # Socket.IO packet types
        ("sio type 9", ("49",)),
        ("sio type letter", ("4z",)),
        ("sio type 7", ("47[]",)),
        ("sio connect_error from client", ('44{"message":"x"}',)),
        ("sio connect twice", ('40{"token":"x"}',)),
        ("sio connect other namespace", ("40/nowhere,",)),
        ("sio connect admin namespace", ('40/admin,{"username":"admin","password":""}',)),
        ("sio connect namespace query", ("40/x?a=b,",)),
        ("sio event unknown namespace", ('42/nowhere,["join:room","r"]',)),
        ("sio event namespace no comma", ("42/nowhere",)),
        ("sio disconnect unknown namespace", ("41/nowhere,",)),
        ("sio ack for unknown id", ("43999[1]",)),
        ("sio ack no data", ("431",)),
        ("sio ack huge id", ("43" + "9" * 99 + "[]",)),
        ("sio ack id too long", ("43" + "9" * 150 + "[]",)),
        ("sio ack broken json", ("431[",)),
        # Socket.IO EVENT payload shapes
        ("event no data", ("42",)),
        ("event broken json", ("42[",)),
        ("event broken json string", ('42["join:room',)),
        ("event trailing garbage", ('42["presence:get","r"]xyz',)),
        ("event object not array", ('42{"event":"join:room"}',)),
        ("event string not array", ('42"join:room"',)),
        ("event number", ("421",)),
        ("event null", ("42null",)),
        ("event empty array", ("42[]",)),
        ("event name number", ("42[1]",)),
        ("event name null", ("42[null]",)),
        ("event name object", ('42[{"a":1}]',)),
        ("event name array", ('42[["join:room"]]',)),
        ("event name empty", ('42[""]',)),
        ("event name huge", ('42["' + "e" * 20_000 + '"]',)),
        ("event name unicode", ('42["\uff4a\uff4f\uff49\uff4e:room","r"]',)),
        ("event name reserved connect", ('42["connect"]',)),
        ("event name reserved disconnect", ('42["disconnect","x"]',)),
        ("event name reserved connect_error", ('42["connect_error",{}]',)),
        ("event name reserved message", ('42["message","x"]',)),
        ("event name prototype", ('42["__proto__",{}]',)),
        ("event name constructor", ('42["constructor"]',)),
        ("event unknown with ack", ('4211["no:such:event",{}]',)),
        ("event extra args", ('4212["presence:get","r","extra",1,null]',)),
        ("event NaN", ('42["history:get",{"roomId":"r","limit":NaN}]',)),
        ("event Infinity", ('42["history:get",{"roomId":"r","limit":Infinity}]',)),
        ("event huge int", ('42["history:get",{"roomId":"r","limit":' + "9" * 5000 + "}]",)),
        ("event float exponent", ('42["history:get",{"roomId":"r","limit":1e308}]',)),
        ("event lone surrogate", ('42["message:send",{"roomId":"r","message":"\\ud800"}]',)),
        ("event escaped NUL", ('42["presence:get","r\\u0000"]',)),
        (
            "event duplicate keys",
            ('4213["message:send",{"roomId":"r","roomId":"x","message":""}]',),
        ),
        ("event deep nesting 100", ('42["presence:get",' + _nested(100) + "]",)),
        ("event deep nesting 5000", ('42["presence:get",' + _nested(5000) + "]",)),
        (
            "event deep object nesting",
            ('42["presence:get",' + '{"a":' * 3000 + "1" + "}" * 3000 + "]",),
        ),
        ("event nesting past limit", ("42" + _nested(12_000),)),
        ("event huge array", ('42["presence:get",[' + ",".join(["1"] * 10_000) + "]]",)),
        (
            "event huge object",
            ('42["presence:get",{' + ",".join(f'"k{i}":0' for i in range(2000)) + "}]",),
        ),
        ("event many empty strings", ('42["presence:get",[' + ",".join(['""'] * 8000) + "]]",)),
        ("event just below buffer", ('42["presence:get","' + "x" * (big - 40) + '"]',)),
        # ack id abuse
        ("ack id zero", ('420["presence:get","r"]',)),
        ("ack id leading zeros", ('42000007["presence:get","r"]',)),
        ("ack id 99 digits", ("42" + "9" * 99 + '["presence:get","r"]',)),
        ("ack id 100 digits", ("42" + "9" * 100 + '["presence:get","r"]',)),
        ("ack id 101 digits", ("42" + "9" * 101 + '["presence:get","r"]',)),
        ("ack id negative", ('42-1["presence:get","r"]',)),
        ("ack id reused", ('425["presence:get","r"]', '425["presence:get","r"]')),
        ("ack id on unknown event", ('4277["nope"]',)),
        # binary attachments with bad placeholders
        (
            "binary placeholder num out of range",
            ('451-["message:send",{"_placeholder":true,"num":5}]', b"\x00\x01"),
        ),
        (
            "binary placeholder num negative",
            ('451-["message:send",{"_placeholder":true,"num":-1}]', b"\x00"),
        ),
        (
            "binary placeholder num string",
            ('451-["message:send",{"_placeholder":true,"num":"0"}]', b"\x00"),
        ),
        ("binary placeholder no num", ('451-["message:send",{"_placeholder":true}]', b"\x00")),
        ("binary placeholder as event name", ('451-[{"_placeholder":true,"num":0}]', b"join:room")),
        (
            "binary message in payload",
            (
                '451-["message:send",{"roomId":"r","message":{"_placeholder":true,"num":0}}]',
                b"hello",
            ),
        ),
        ("binary roomId", ('451-["join:room",{"_placeholder":true,"num":0}]', b"r")),
        (
            "binary missing attachment then text",
            (
                '452-["message:send",{"_placeholder":true,"num":0}]',
                b"\x00",
                '42["presence:get","r"]',
            ),
        ),
        ("binary zero attachments", ('450-["presence:get","r"]',)),
        (
            "binary count 10 digits",
            ('459999999999-["presence:get",{"_placeholder":true,"num":0}]', b"\x00" * 100),
        ),
        ("binary count 11 digits", ('4599999999999-["presence:get"]',)),
        (
            "binary count many attachments",
            (
                "4511-[" + ",".join(f'{{"_placeholder":true,"num":{i}}}' for i in range(11)) + "]",
                *(b"x" for _ in range(11)),
            ),
        ),
        (
            "binary flood into pending packet",
            (
                '459-["presence:get",{"_placeholder":true,"num":0}]',
                *(b"\xff" * 20_000 for _ in range(8)),
            ),
        ),
        ("binary frame without header", (b"\x00\x01\x02",)),
        ("binary ack unknown id", ('461-5[{"_placeholder":true,"num":0}]', b"\x00")),
        (
            "binary on unknown namespace",
            ('451-/nowhere,["x",{"_placeholder":true,"num":0}]', b"\x00"),
        ),
        (
            "binary nested placeholders",
            ('451-["presence:get",{"a":{"b":[{"_placeholder":true,"num":0}]}}]', b"\x00"),
        ),
        # oversized frames (past max_http_buffer_size)
        ("oversized text frame", ('42["presence:get","' + "x" * (big + 10) + '"]',)),
        ("oversized 1 MB frame", ("42" + "x" * 1_000_000,)),
        (
            "oversized binary frame",
            ('451-["presence:get",{"_placeholder":true,"num":0}]', b"\x00" * (big + 10)),
        ),
        # socket.io disconnect then keep talking
        ("disconnect then event", ("41", '42["presence:get","r"]')),
        ("eio close then event", ("1", '42["presence:get","r"]')),
    ]
    cases = [Case(name, frames, tags=frozenset({"frame"})) for name, frames in c]
    invalid = {
        "invalid utf-8 lone continuation": b'42["presence:get","\x80"]',
        "invalid utf-8 overlong": b'42["presence:get","\xc0\xaf"]',
        "invalid utf-8 surrogate encoded": b'42["message:send",{"roomId":"r","message":"\xed\xa0\x80"}]',
        "invalid utf-8 truncated": b'42["presence:get","\xe2\x82"]',
        "invalid utf-8 0xff": b"\xff\xfe42[]",
        "invalid utf-8 in event name": b'42["\xc3\x28"]',
    }
    cases += [Case(n, raw_text=raw, tags=frozenset({"utf8"})) for n, raw in invalid.items()]
    return cases


def all_cases() -> list[Case]:
    return frame_cases() + payload_cases()
