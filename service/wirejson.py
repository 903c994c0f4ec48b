"""The JSON module the Socket.IO server and the Redis history write with.

python-socketio and python-engineio accept a ``json=`` module (``dumps``/``loads``); theirs
writes with ``ensure_ascii``, so every non-ASCII character costs 6-12 bytes (``\\u4e2d``)
and every control character 6 (``\\u0001``): a 4 KB message could take 24 KB on the wire
and in Redis. Here text is written as UTF-8 with compact separators, so a message costs
about its own size; the only escapes left are quotes, backslashes and the control
characters messages may carry (tab, line feed, carriage return), two bytes each. The other
C0 control characters are refused in messages (:func:`service.protocol.message_text`).

``loads`` is python-engineio's: it refuses integers of more than 100 digits.
"""

from __future__ import annotations

import json
from typing import Any

from engineio.json import loads

__all__ = ["dumps", "loads"]


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` as UTF-8 text with compact separators.

    Text that cannot be encoded as UTF-8 (a lone surrogate, e.g. from a request header
    shown by the admin UI) falls back to ASCII escapes rather than failing on the wire.
    """
    kwargs.setdefault("separators", (",", ":"))
    text = json.dumps(obj, ensure_ascii=False, **kwargs)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(obj, ensure_ascii=True, **kwargs)
    return text
