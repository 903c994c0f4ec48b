"""python-socketio's admin UI instrumentation: off by default, always behind credentials."""

from __future__ import annotations

import socketio

from .config import Settings

ADMIN_UI_ORIGIN = "https://admin.socket.io"


def enable_admin_ui(sio: socketio.AsyncServer, settings: Settings) -> None:
    """Serve the ``/admin`` namespace for https://admin.socket.io (ADMIN_UI=true)."""
    sio.instrument(
        auth={"username": settings.admin_username, "password": settings.admin_password},
        mode="production",
        read_only=True,
        server_id=settings.instance_id,
    )
