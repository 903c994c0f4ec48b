"""Sockets that left ``/`` with a ``41`` while their Engine.IO session stays open.

The namespace forgets such a socket, but its transport (and the user's slot) lives on until
the guard closes the session (``CONNECT_TIMEOUT_SECONDS``), and the client may send ``40``
again meanwhile. Until the session ends it keeps counting toward ``MAX_SOCKETS_PER_USER``
and ``MAX_CONNECTIONS``, or one user could hold any number of sessions by leaving and
reconnecting.
"""

from __future__ import annotations


class Lingering:
    """Engine.IO session id -> the user whose slot it still holds."""

    def __init__(self) -> None:
        self._users: dict[str, str] = {}

    def left(self, eio_sid: str, user_id: str) -> None:
        self._users[eio_sid] = user_id

    def release(self, eio_sid: str | None) -> str | None:
        """The user whose slot ``eio_sid`` held (it closed or connects again), else None."""
        return self._users.pop(eio_sid, None) if eio_sid is not None else None

    def __len__(self) -> int:
        return len(self._users)
