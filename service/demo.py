"""The demo page served at ``/`` in ``--dev`` only."""

from __future__ import annotations

from aiohttp import web


async def index(request: web.Request) -> web.Response:
    return web.Response(text="socketio-service demo: see the README", content_type="text/plain")


def setup_demo_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
