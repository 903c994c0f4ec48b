"""The demo page, served at ``/`` only in ``--dev`` (``create_app`` calls us only then).

It is a real client of the service: the official socket.io JS client in a browser page that
joins a room, chats, shows presence and typing, and recovers missed messages after a
reconnect. The JS client is not vendored: it comes from npm (``npm ci --prefix tests/js``),
or from the ``node_modules`` directory named by ``DEMO_CLIENT_JS_DIR``.

``GET /dev/token?user=NAME`` mints a token with the dev secret, so the page needs no other
tooling. It exists only here, and this module's routes exist only in dev mode.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from aiohttp import web

from . import keys
from .auth import mint_token

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
CLIENT_JS_ENV = "DEMO_CLIENT_JS_DIR"
CLIENT_JS = Path("socket.io-client") / "dist" / "socket.io.min.js"
INSTALL_HINT = (
    "the socket.io JS client is not installed: run `npm ci --prefix tests/js` in the "
    f"repository, or set {CLIENT_JS_ENV} to a node_modules directory holding socket.io-client, "
    "then restart the service with --dev"
)
DEV_TOKEN_TTL_SECONDS = 3600
DEV_USER = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def find_client_js(directory: str = "") -> Path | None:
    """Where the socket.io client bundle is: ``$DEMO_CLIENT_JS_DIR``, else the repository's
    ``tests/js/node_modules`` (a source checkout), else nowhere."""
    candidates: list[Path] = []
    if directory:
        base = Path(directory)
        candidates += [base / CLIENT_JS, base / CLIENT_JS.name]
    candidates.append(
        Path(__file__).resolve().parent.parent / "tests" / "js" / "node_modules" / CLIENT_JS
    )
    return next((path for path in candidates if path.is_file()), None)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})


async def client_js(request: web.Request) -> web.StreamResponse:
    path = find_client_js(request.app[keys.SETTINGS].demo_client_js_dir)
    if path is None:
        return web.Response(status=404, text=f"// {INSTALL_HINT}\n", content_type="text/javascript")
    return web.FileResponse(path, headers={"Content-Type": "text/javascript"})


async def dev_token(request: web.Request) -> web.Response:
    """A token for any user name: the dev server trusts whoever uses the page."""
    settings = request.app[keys.SETTINGS]
    user = request.query.get("user", "")
    if not DEV_USER.fullmatch(user):
        return web.json_response(
            {"error": "user must be 1-64 characters of [A-Za-z0-9_.-]"}, status=400
        )
    if not settings.jwt_secret or "HS256" not in settings.algorithms:
        return web.json_response(
            {"error": "dev tokens need JWT_SECRET with HS256 (the service uses public keys)"},
            status=503,
        )
    token = mint_token(
        settings.jwt_secret,
        user,
        DEV_TOKEN_TTL_SECONDS,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )
    return web.json_response(
        {"token": token, "user": user, "expiresIn": DEV_TOKEN_TTL_SECONDS},
        headers={"Cache-Control": "no-store"},
    )


def setup_demo_routes(app: web.Application) -> None:
    """Register the page, its assets, the JS client and the dev token route."""
    if find_client_js(app[keys.SETTINGS].demo_client_js_dir) is None:
        log.warning("demo page: %s", INSTALL_HINT)
    app.router.add_get("/", index)
    app.router.add_get("/demo/socket.io.min.js", client_js)
    app.router.add_get("/dev/token", dev_token)
    app.router.add_static("/demo/", STATIC_DIR, append_version=False)
