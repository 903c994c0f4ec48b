"""Who may join which room: ``ROOM_ACCESS`` and the optional ``ROOM_AUTH_URL`` hook.

* ``open`` (the default): any room may be joined.
* ``claims``: the token's ``rooms`` claim, a list of room ids or prefixes ending in ``*``,
  names the rooms its user may join (Centrifugo's channel claims, in the same spirit).
* ``ROOM_AUTH_URL``: for deployments whose permissions live elsewhere, an HTTP hook is asked
  ``POST {userId, claims, roomId}`` and answers ``{"allow": true|false}`` (Pusher's auth
  endpoint, Centrifugo's subscribe proxy). Answers are cached for ``ROOM_AUTH_CACHE_SECONDS``
  per user and room; an error, a timeout or anything but ``{"allow": true}`` refuses the join
  (fail closed). With both set, both must allow.

A refusal is the ``forbidden`` error code. Reading a room (history, presence) needs
membership, so whoever cannot join cannot read either.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from .config import Settings
from .metrics import Metrics
from .protocol import EventError

log = logging.getLogger(__name__)

MAX_CACHED_ANSWERS = 10_000
"""The hook's answer cache is bounded; the oldest answers go first."""


def claim_allows(claim: object, room_id: str) -> bool:
    """True when the ``rooms`` claim names ``room_id`` exactly or by a ``prefix*`` entry.

    Anything but a list of strings allows nothing: a malformed claim fails closed.
    """
    if not isinstance(claim, list):
        return False
    for entry in claim:
        if not isinstance(entry, str) or not entry:
            continue
        if entry.endswith("*"):
            if room_id.startswith(entry[:-1]):
                return True
        elif entry == room_id:
            return True
    return False


class RoomAccess:
    """Decides joins; :meth:`check` raises ``forbidden`` for a room the user may not join."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._claims_mode = settings.room_access == "claims"
        self._url = settings.room_auth_url
        self._timeout = aiohttp.ClientTimeout(total=settings.room_auth_timeout_seconds)
        self._ttl = settings.room_auth_cache_seconds
        self._metrics = metrics
        self._answers: dict[tuple[str, str], tuple[bool, float]] = {}

    @property
    def reads_claims(self) -> bool:
        """Whether decisions look at the token's claims (else sessions need not keep them)."""
        return self._claims_mode or bool(self._url)

    async def check(self, user_id: str, claims: Mapping[str, Any], room_id: str) -> None:
        if not await self.allowed(user_id, claims, room_id):
            raise EventError("forbidden", "this token may not join this room")

    async def allowed(self, user_id: str, claims: Mapping[str, Any], room_id: str) -> bool:
        if self._claims_mode and not claim_allows(claims.get("rooms"), room_id):
            return False
        if not self._url:
            return True
        return await self._ask_hook(user_id, claims, room_id)

    async def _ask_hook(self, user_id: str, claims: Mapping[str, Any], room_id: str) -> bool:
        key = (user_id, room_id)
        now = time.monotonic()
        cached = self._answers.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        started = time.perf_counter()
        result = "error"
        try:
            allow = await self._post(user_id, claims, room_id)
            result = "allow" if allow else "deny"
        except Exception as exc:  # fail closed, whatever went wrong
            log.warning(
                "room auth hook failed",
                extra={"event": "room_auth_error", "error": type(exc).__name__},
            )
            return False
        finally:
            self._metrics.room_auth_duration.labels(result=result).observe(
                time.perf_counter() - started
            )
        self._remember(key, allow, now)
        return allow

    async def _post(self, user_id: str, claims: Mapping[str, Any], room_id: str) -> bool:
        body = {"userId": user_id, "claims": dict(claims), "roomId": room_id}
        async with (
            aiohttp.ClientSession(timeout=self._timeout) as session,
            session.post(self._url, json=body, allow_redirects=False) as response,
        ):
            response.raise_for_status()
            answer = await response.json(content_type=None)
        if not isinstance(answer, dict) or not isinstance(answer.get("allow"), bool):
            raise ValueError('the hook must answer {"allow": true|false}')
        return answer["allow"]

    def _remember(self, key: tuple[str, str], allow: bool, now: float) -> None:
        if self._ttl <= 0:
            return
        self._answers.pop(key, None)
        self._answers[key] = (allow, now + self._ttl)
        while len(self._answers) > MAX_CACHED_ANSWERS:
            del self._answers[next(iter(self._answers))]
