"""Who is in a room: distinct user ids, counted over every socket of every instance."""

from __future__ import annotations

from collections import defaultdict
from typing import Protocol


class PresenceStore(Protocol):
    async def add(self, room_id: str, user_id: str, sid: str) -> None: ...

    async def remove(self, room_id: str, user_id: str, sid: str) -> None: ...

    async def users(self, room_id: str) -> list[str]:
        """Distinct user ids in the room, sorted."""
        ...


class MemoryPresence:
    """Presence of this process only: room -> user -> the sids that user has in it."""

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))

    async def add(self, room_id: str, user_id: str, sid: str) -> None:
        self._rooms[room_id][user_id].add(sid)

    async def remove(self, room_id: str, user_id: str, sid: str) -> None:
        users = self._rooms.get(room_id)
        if users is None or user_id not in users:
            return
        users[user_id].discard(sid)
        if not users[user_id]:
            del users[user_id]
        if not users:
            del self._rooms[room_id]

    async def users(self, room_id: str) -> list[str]:
        return sorted(self._rooms.get(room_id, {}))
