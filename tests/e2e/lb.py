"""HAProxy configured the way the chart's Ingress configures ingress-nginx.

The chart turns ``stickySessions.*`` and ``ingress.*`` values into nginx annotations
(``templates/ingress.yaml``); :func:`haproxy_config` turns the same values into the HAProxy
equivalent, so a change of cookie name, path, attributes or timeouts in the chart changes the
load balancer the end-to-end suite runs behind:

=====================================  =================================================
ingress-nginx annotation               HAProxy
=====================================  =================================================
affinity: cookie, session-cookie-name  ``cookie <name> insert indirect nocache httponly``
session-cookie-path                    ``attr "Path=<path>"``
session-cookie-samesite / -max-age     ``attr "SameSite=…"`` / ``attr "Max-Age=…"``
session-cookie-secure                  ``secure``
proxy-read/send-timeout                ``timeout client/server/tunnel``
proxy-body-size                        ``http-request deny deny_status 413``
path /socket.io, Prefix                everything else is answered 404 (no ``/metrics``)
endpoints = ready pods                 ``option httpchk GET /readyz`` (like the readiness
                                       probe: a draining pod leaves the rotation at once)
=====================================  =================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..helpers import ROOT, free_port, require_tool, terminate

CHART = ROOT / "helm" / "socketio-service"
BACKEND = "socketio"


def _size_bytes(size: str) -> int:
    """An nginx size (``1m``, ``512k``, ``1048576``) in bytes."""
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", str(size).strip())
    if not match:
        raise ValueError(f"not an nginx size: {size!r}")
    number, unit = match.groups()
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit.lower()]


@dataclass(frozen=True)
class StickySettings:
    """What the chart tells the ingress controller about affinity, routing and timeouts."""

    cookie_name: str
    cookie_path: str
    route_path: str
    max_age_seconds: int
    same_site: str
    secure: bool
    timeout_seconds: int
    body_size_bytes: int

    @classmethod
    def from_chart(cls, chart: Path = CHART) -> StickySettings:
        """Read ``values.yaml`` (and the two constants of ``templates/ingress.yaml``)."""
        values = yaml.safe_load((chart / "values.yaml").read_text())
        sticky, ingress = values["stickySessions"], values["ingress"]
        assert sticky["enabled"], "the chart's default is sticky sessions"
        template = (chart / "templates" / "ingress.yaml").read_text()
        cookie_path = re.search(r'session-cookie-path"\s+"([^"]+)"', template)
        route_path = re.search(r"-\s+path:\s+(\S+)", template)
        assert cookie_path and route_path, "ingress.yaml no longer sets the cookie/route path"
        return cls(
            cookie_name=str(sticky["cookieName"]),
            cookie_path=cookie_path.group(1),
            route_path=route_path.group(1),
            max_age_seconds=int(sticky["cookieMaxAgeSeconds"]),
            same_site=str(sticky["cookieSameSite"] or ""),
            secure=bool(sticky["cookieSecure"]),
            timeout_seconds=int(ingress["proxyTimeoutSeconds"]),
            body_size_bytes=_size_bytes(ingress["proxyBodySize"]),
        )


@dataclass(frozen=True)
class Backend:
    name: str
    """The server name, also the value of the affinity cookie: use the instance id."""
    address: str
    """``host:port``."""


def haproxy_config(
    settings: StickySettings, backends: Sequence[Backend], port: int, monitor_port: int
) -> str:
    cookie = f"cookie {settings.cookie_name} insert indirect nocache httponly"
    cookie += f' attr "Path={settings.cookie_path}"'
    if settings.same_site:
        cookie += f' attr "SameSite={settings.same_site}"'
    if settings.max_age_seconds:
        cookie += f' attr "Max-Age={settings.max_age_seconds}"'
    if settings.secure:
        cookie += " secure"
    timeout = f"{settings.timeout_seconds}s"
    servers = "\n".join(f"  server {b.name} {b.address} cookie {b.name}" for b in backends)
    return f"""\
global
  maxconn 2048

defaults
  mode http
  timeout connect 2s
  timeout http-request 10s
  timeout client {timeout}
  timeout server {timeout}
  timeout tunnel {timeout}
  option redispatch
  retries 2

# /lb-ready answers 200 only while every backend passes its readiness check
frontend monitor
  bind 127.0.0.1:{monitor_port}
  monitor-uri /lb-ready
  acl degraded nbsrv({BACKEND}) lt {len(backends)}
  monitor fail if degraded

frontend public
  bind 127.0.0.1:{port}
  acl socketio path_beg {settings.route_path}
  http-request deny deny_status 404 unless socketio
  http-request deny deny_status 413 if {{ req.hdr_val(content-length) gt {settings.body_size_bytes} }}
  default_backend {BACKEND}

backend {BACKEND}
  balance roundrobin
  {cookie}
  option httpchk GET /readyz
  default-server check inter 200ms rise 1 fall 1
{servers}
"""


class HAProxy:
    """A real HAProxy in the foreground, its config generated from the chart's values."""

    def __init__(
        self, workdir: Path, backends: Sequence[Backend], settings: StickySettings | None = None
    ) -> None:
        self.binary = require_tool("haproxy", "apt-get install -y --no-install-recommends haproxy")
        self.settings = settings or StickySettings.from_chart()
        self.backends = list(backends)
        self.port = free_port()
        self.monitor_port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15) -> HAProxy:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "haproxy.cfg"
        cfg.write_text(haproxy_config(self.settings, self.backends, self.port, self.monitor_port))
        check = subprocess.run(
            [self.binary, "-c", "-f", str(cfg)], capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, f"invalid haproxy config:\n{check.stdout}{check.stderr}"
        log = (self.workdir / "haproxy.log").open("wb")
        self.proc = subprocess.Popen(
            [self.binary, "-f", str(cfg), "-db"], stdout=log, stderr=subprocess.STDOUT
        )
        self.wait_all_up(timeout)
        self.probe()
        return self

    def probe(self) -> str:
        """One Engine.IO handshake through the public frontend (and a close on the same
        backend, by its cookie): the route, the backend and the cookie work end to end.
        Returns the backend that answered."""
        base = f"{self.url}{self.settings.route_path}/?EIO=4&transport=polling"
        with urllib.request.urlopen(base, timeout=5) as resp:
            assert resp.status == 200
            sid = json.loads(resp.read().decode()[1:])["sid"]
            cookie = resp.headers.get("Set-Cookie", "").split(";")[0]
        name, _, server = cookie.partition("=")
        assert name == self.settings.cookie_name, f"no affinity cookie: {cookie!r}"
        close = urllib.request.Request(
            f"{base}&sid={sid}", data=b"1", method="POST", headers={"Cookie": cookie}
        )
        with urllib.request.urlopen(close, timeout=5) as resp:
            assert resp.status == 200
        return server

    def all_up(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.monitor_port}/lb-ready", timeout=1
            ) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_all_up(self, timeout: float = 15) -> None:
        """Until every backend passes its check (HAProxy sees them all ready)."""
        deadline = time.monotonic() + timeout
        while not self.all_up():
            assert self.proc is not None and self.proc.poll() is None, "haproxy exited"
            if time.monotonic() > deadline:
                raise TimeoutError(f"haproxy did not see all {len(self.backends)} backends up")
            time.sleep(0.05)

    def stop(self) -> None:
        terminate(self.proc, 5)


@contextlib.asynccontextmanager
async def sticky_lb(tmp_path: Path, backends: list[str]) -> AsyncIterator[str]:
    """HAProxy with the chart's cookie affinity in front of ``backends`` (``http://h:p``
    URLs), like the Ingress; yields its URL once every backend is ready behind it."""
    lb = HAProxy(
        tmp_path / "haproxy",
        [Backend(f"s{n}", url.removeprefix("http://")) for n, url in enumerate(backends)],
    )
    await asyncio.to_thread(lb.start)
    try:
        yield lb.url
    finally:
        await asyncio.to_thread(lb.stop)
