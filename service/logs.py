"""Logging: JSON lines in containers, text on a terminal; instance id on every record."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any
from urllib.parse import urlsplit

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, instance_id: str) -> None:
        super().__init__()
        self.instance_id = instance_id

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "instance": self.instance_id,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, instance_id: str) -> None:
        safe_id = instance_id.replace("%", "%%")
        super().__init__(f"%(asctime)s %(levelname)-7s [{safe_id}] %(name)s: %(message)s")
        self.instance_id = instance_id

    def format(self, record: logging.LogRecord) -> str:
        extras = {
            k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
        }
        line = super().format(record)
        return line + ("".join(f" {k}={v}" for k, v in extras.items()) if extras else "")


def configure_logging(level: str, fmt: str, instance_id: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(instance_id) if fmt == "json" else TextFormatter(instance_id)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # engineio/socketio log payloads at info level; aiohttp's access log carries query strings
    for noisy in ("engineio", "socketio", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def redis_endpoint(url: str) -> str:
    """Where a ``REDIS_URL`` points, for a log line: ``host:port`` (comma-separated for
    Sentinel), or the socket path; never the user name or password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    default = 26379 if "sentinel" in parts.scheme else 6379
    hosts = parts.netloc.rpartition("@")[2]
    return ",".join(
        host if re.search(r":\d+$", host) else f"{host}:{default}"
        for host in hosts.split(",")
        if host
    )
