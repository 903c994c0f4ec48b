"""Cluster mode: fan-out across instances through Redis pub/sub, routed by room.

``RedisManager`` extends python-socketio's ``AsyncPubSubManager`` and fills in only its
transport hooks (``_publish``/``_listen``) and the routing, the way @socket.io/redis-adapter's
sharded adapter does; emits, acks across instances (``callback`` messages), room entry and
disconnects are the library's own. Local delivery is :class:`LocalManager`'s (one encoded
packet per broadcast).

* an emit to ``room:<id>`` or ``user:<id>`` is published on that room's own channel
  (``<prefix>:socketio#room:{<id>}``: the room in a hash tag, the same slot as its history
  stream), and an instance subscribes only to the rooms that have local members, so it never
  decodes traffic for rooms it does not serve; whole-namespace broadcasts, control messages
  and ack callbacks use one shared channel;
* stored room messages are published by the store script itself (``method: stored``) and
  go through the :class:`~service.cluster.sequencer.Sequencer`: in order, once, gaps filled;
* the listener reconnects within a second of Redis coming back (the stock one backs off
  up to 60 s), and the sequencer then looks for what was published meanwhile;
* each instance publishes a heartbeat on the shared channel and must hear it back, or it
  reports itself deaf (python-socketio#1581) while Redis answers commands, so readiness
  fails instead of silently dropping cross-instance messages;
* on a Redis Cluster (``REDIS_CLUSTER=true`` or a ``redis+cluster://`` URL) stores use
  ``RedisCluster`` and room channels use sharded pub/sub (SPUBLISH/SSUBSCRIBE, Redis >= 7):
  a room's traffic stays on the shard that owns its slot, and an instance holds one
  subscriber connection per shard it has rooms on. The shared channel stays on classic
  PUBLISH/SUBSCRIBE (the cluster bus carries it to every node).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from redis import asyncio as aioredis
from socketio.async_pubsub_manager import AsyncPubSubManager
from socketio.redis_manager import parse_redis_sentinel_url

from ..config import Settings
from ..engine.fanout import LocalManager
from ..metrics import Metrics

if TYPE_CHECKING:
    from .sequencer import Sequencer

log = logging.getLogger(__name__)

ROUTED_PREFIXES = ("room:", "user:")
MAX_RECONNECT_DELAY = 0.5
_SCOPE: contextvars.ContextVar[str | None] = contextvars.ContextVar("delivery_scope", default=None)
"""Set to ``remote`` in the listener task: what it delivers came from another instance."""


def _without_password(url: str) -> str:
    """``url`` with its password (if any) removed; the user name stays."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}@{hosts}" if user else hosts))


def connect_redis(settings: Settings) -> aioredis.Redis:
    """A client for ``REDIS_URL`` (``redis://``, ``rediss://``, ``redis+sentinel://``,
    ``redis+cluster://``).

    ``REDIS_PASSWORD`` replaces the URL's password (so a generated one needs no URL-encoding);
    with Sentinel it authenticates to the Sentinels as well as to the master. Short timeouts:
    an unreachable Redis must turn into a fast failure, never a hung event handler.
    """
    timeout = settings.redis_timeout_seconds
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 15,
    }
    password = settings.redis_password
    url = settings.redis_url
    if password:
        url = _without_password(url)
        options["password"] = password
    if settings.redis_cluster_mode:
        url = url.replace("+cluster://", "://", 1)
        return aioredis.RedisCluster.from_url(url, **options)  # type: ignore[return-value]
    if urlsplit(url).scheme == "redis+sentinel":
        sentinels, service_name, connection = parse_redis_sentinel_url(url)
        connection.update(options)
        sentinel = aioredis.Sentinel(sentinels, sentinel_kwargs=dict(options), **connection)
        return sentinel.master_for(service_name or "mymaster")
    return aioredis.Redis.from_url(url, **options)


def routed(room: object) -> bool:
    return isinstance(room, str) and room.startswith(ROUTED_PREFIXES)


class RedisManager(AsyncPubSubManager, LocalManager):
    name = "service-redis"

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        super().__init__(channel=f"{settings.redis_prefix}:socketio")
        self.metrics = metrics
        self.redis = connect_redis(settings)
        self.heartbeat_seconds = settings.pubsub_heartbeat_seconds
        self.listening = False
        self.sharded = isinstance(self.redis, aioredis.RedisCluster)
        self.sequencer: Sequencer | None = None
        self._available = True  # cleared by the health monitor while Redis does not answer
        self.back_at = time.monotonic()
        """When Redis last started answering again (monotonic)."""
        self._pubsub: Any = None
        self._inbox: asyncio.Queue[Any] | None = None
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._wanted: set[str] = set()
        self._confirmed: dict[str, asyncio.Event] = {}
        self._heard_at = time.monotonic()
        self._sent_at = 0.0
        self._down_at = 0.0
        self._listening_since = 0.0

    @property
    def available(self) -> bool:
        """False while the monitor says Redis does not answer: stores and publishes skip it."""
        return self._available

    @available.setter
    def available(self, value: bool) -> None:
        if value and not self._available:
            self.back_at = time.monotonic()
        elif not value and self._available:
            self._down_at = time.monotonic()
        self._available = value

    @property
    def listener_outdated(self) -> bool:
        """The subscriber connection may be on a server that is no longer the master: it was
        opened before the last outage (a frozen master keeps its TCP connections silent), or
        Redis answers but our heartbeats have not come back for half the deafness limit."""
        if not self.listening or not self.available:
            return False
        if self._listening_since < self._down_at:
            return True
        half = max(3 * self.heartbeat_seconds, 2.0) / 2
        last = max(self._heard_at, self.back_at, self._listening_since)
        return self._sent_at - last > half

    async def reconnect_listener(self) -> None:
        """Drop the subscriber connection: the listener reconnects (asking Sentinel for the
        master again), resubscribes, and the sequencer delivers what it missed."""
        log.info("pubsub reconnect forced", extra={"event": "pubsub_reconnect"})
        self.listening = False
        await self._close_pubsub()

    # -- routing ----------------------------------------------------------------------------

    def channel_for(self, room: str) -> str:
        """``room:x`` -> ``<channel>#room:{x}``: the hash tag puts the channel in the slot of
        the room's history stream, so one script can store and publish on Redis Cluster."""
        kind, _, name = room.partition(":")
        return f"{self.channel}#{kind}:{{{name}}}"

    def _room_of(self, channel: str) -> str:
        kind, _, tagged = channel.partition("#")[2].partition(":")
        return f"{kind}:{tagged[1:-1]}"

    def basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: Any = None) -> Any:
        result = super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        if routed(room) and room not in self._wanted:
            self._wanted.add(room)
            if self.sequencer is not None and room.startswith("room:"):
                self.sequencer.serving(room[5:])
            self._change_subscription("subscribe", room)
        return result

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> Any:
        result = super().basic_leave_room(sid, namespace, room)
        if routed(room) and room in self._wanted and room not in self.rooms.get(namespace, {}):
            self._wanted.discard(room)
            self._confirmed.pop(room, None)
            if self.sequencer is not None and room.startswith("room:"):
                self.sequencer.forget(room[5:])
            self._change_subscription("unsubscribe", room)
        return result

    def _change_subscription(self, action: str, room: str) -> None:
        if action == "subscribe":
            self._confirmed.setdefault(room, asyncio.Event())
        pubsub = self._pubsub
        if pubsub is None or not self.listening:
            return  # the listener subscribes to everything wanted when it (re)connects
        if self.sharded:
            task = asyncio.ensure_future(self._change_shard_subscription(pubsub, action, room))
        else:
            task = asyncio.ensure_future(getattr(pubsub, action)(self.channel_for(room)))
        task.add_done_callback(_ignore_failure)

    async def _change_shard_subscription(self, pubsub: Any, action: str, room: str) -> None:
        await getattr(pubsub, "s" + action)(self.channel_for(room))
        self._start_shard_readers(pubsub)

    async def wait_subscribed(self, room: str, wait_seconds: float = 1.0) -> bool:
        """Wait until Redis confirmed the subscription for a room this instance just joined."""
        event = self._confirmed.get(room)
        if event is None or not self.listening:
            return False  # the listener subscribes to it when Redis is back
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), wait_seconds)
        if event.is_set() and self.sequencer is not None and room.startswith("room:"):
            await self.sequencer.start(room[5:])
        return event.is_set()

    async def deliver(
        self, event: str, data: Any, namespace: str, room: Any, skip_sid: Any, scope: str
    ) -> int:
        """Local delivery, labelled ``remote`` when the listener hands it over."""
        return await super().deliver(event, data, namespace, room, skip_sid, _SCOPE.get() or scope)

    # -- outgoing ---------------------------------------------------------------------------

    async def _publish(self, data: dict[str, Any]) -> None:
        if not self.available:
            return  # Redis is down: local delivery already happened, don't stall the sender
        room = data.get("room")
        is_emit = data.get("method") == "emit"
        if is_emit and isinstance(room, str) and self.is_connected(room, data.get("namespace")):
            return  # addressed to one socket of this instance: nobody else needs it
        channel = self.channel_for(room) if is_emit and routed(room) else self.channel
        try:
            payload = json.dumps(data, separators=(",", ":"))
            with self.metrics.redis_op("publish"):
                if self.sharded and channel != self.channel:
                    await self.redis.spublish(channel, payload)
                else:
                    await self.redis.publish(channel, payload)
        except Exception as exc:
            log.warning("publish failed", extra={"event": "redis_publish_error", "error": str(exc)})

    # -- incoming ---------------------------------------------------------------------------

    async def _listen(self) -> AsyncIterator[dict[str, Any]]:  # type: ignore[override]
        """Yield decoded messages for the base class, reconnecting fast after any failure.

        Stored room messages (``method: stored``) are handed to the sequencer here instead:
        the base class would not know them."""
        _SCOPE.set("remote")  # this runs in the listener task only
        stream = self._stream_sharded if self.sharded else self._stream_classic
        delay = 0.05
        while True:
            try:
                async for message in stream():
                    delay = 0.05
                    decoded = self._on_message(message)
                    if decoded is None:
                        continue
                    if decoded.get("method") == "stored":
                        try:
                            await self._stored(decoded)
                        except Exception:  # a delivery bug must not look like a lost link
                            log.exception("stored message not delivered")
                    else:
                        yield decoded
                raise ConnectionError("pubsub stream ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.listening:
                    log.warning(
                        "pubsub connection lost", extra={"event": "pubsub_lost", "error": str(exc)}
                    )
                self.listening = False
                await self._close_pubsub()
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RECONNECT_DELAY)

    def _now_listening(self) -> None:
        self.listening = True
        self._listening_since = time.monotonic()
        log.info("pubsub listening", extra={"event": "pubsub_listening"})
        self.sweep_soon()

    def sweep_soon(self) -> None:
        """Let the sequencer deliver what was stored while this instance was not listening."""
        if self.sequencer is not None:
            self.sequencer.sweep_soon()

    async def _stored(self, data: dict[str, Any]) -> None:
        room, message_id, body = data.get("room"), data.get("id"), data.get("m")
        if self.sequencer is None or not isinstance(room, str) or not isinstance(body, dict):
            return
        prev = data.get("prev")
        await self.sequencer.arrived(
            room.partition(":")[2],
            {"id": message_id, **body},
            prev if isinstance(prev, str) else "",
        )

    async def _stream_classic(self) -> AsyncIterator[dict[str, Any]]:
        """One pub/sub connection for the shared channel and every wanted room channel."""
        self._pubsub = self.redis.pubsub()
        await self._pubsub.subscribe(
            self.channel, *(self.channel_for(r) for r in sorted(self._wanted))
        )
        self._now_listening()
        async for message in self._pubsub.listen():
            yield message

    async def _stream_sharded(self) -> AsyncIterator[dict[str, Any]]:
        """The Redis Cluster listener: the shared channel on classic pub/sub, room channels on
        sharded pub/sub, one reader task per connection feeding one inbox."""
        self._inbox = inbox = asyncio.Queue()
        self._pubsub = pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.channel)
        self._readers["*"] = asyncio.ensure_future(_read(pubsub, inbox, classic=True))
        wanted = [self.channel_for(r) for r in sorted(self._wanted)]
        if wanted:
            await pubsub.ssubscribe(*wanted)
        self._start_shard_readers(pubsub)
        self._now_listening()
        while True:
            item = await inbox.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    def _start_shard_readers(self, pubsub: Any) -> None:
        """A reader for every shard connection that has subscriptions and none yet."""
        inbox = self._inbox
        if pubsub is not self._pubsub or inbox is None:
            return
        for name, node_pubsub in list(pubsub.node_pubsub_mapping.items()):
            reader = self._readers.get(name)
            if (reader is None or reader.done()) and node_pubsub.subscribed:
                self._readers[name] = asyncio.ensure_future(_read(node_pubsub, inbox))

    def _on_message(self, message: dict[str, Any]) -> dict[str, Any] | None:
        kind = _text(message.get("type") or "")
        if kind in ("subscribe", "ssubscribe"):
            channel = _text(message["channel"])
            if channel == self.channel:
                self._heard_at = time.monotonic()  # Redis answered: not deaf after an outage
                return None
            room = self._room_of(channel)
            if room in self._confirmed:
                self._confirmed[room].set()
            return None
        if kind == "sunsubscribe":  # the slot moved to another shard: follow it
            room = self._room_of(_text(message["channel"]))
            if room in self._wanted:
                self._change_subscription("subscribe", room)
            return None
        if kind not in ("message", "smessage"):
            return None
        try:
            data = json.loads(message["data"])
        except (TypeError, ValueError):
            log.warning("undecodable pubsub message", extra={"event": "pubsub_bad_message"})
            return None
        if not isinstance(data, dict):
            return None
        if data.get("method") == "heartbeat":
            if data.get("host_id") == self.host_id:
                self._heard_at = time.monotonic()
            return None
        return data

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        readers, self._readers = self._readers, {}
        inbox, self._inbox = self._inbox, None
        if inbox is not None:
            inbox.put_nowait(ConnectionError("pubsub closed"))  # wakes the sharded listener
        for reader in readers.values():
            reader.cancel()
        for event in self._confirmed.values():
            event.clear()
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    # -- heartbeat --------------------------------------------------------------------------

    async def heartbeat(self) -> None:
        """Publish one heartbeat; the listener records when it comes back."""
        try:
            await self.redis.publish(
                self.channel, json.dumps({"method": "heartbeat", "host_id": self.host_id})
            )
        except Exception:
            return
        self._sent_at = time.monotonic()

    @property
    def deaf(self) -> bool:
        """Redis takes our heartbeats (it answers commands) but none has come back for a
        while: the listener is disconnected or its connection silently hears nothing. Counted
        from when Redis last came back, so the listener's reconnect after an outage is not
        deafness."""
        limit = max(3 * self.heartbeat_seconds, 2.0)
        return self.available and self._sent_at - max(self._heard_at, self.back_at) > limit

    async def close(self) -> None:
        if self.sequencer is not None:
            self.sequencer.close()
        if self.thread is not None:
            self.thread.cancel()
            with contextlib.suppress(BaseException):
                await self.thread
        await self._close_pubsub()
        await self.redis.aclose()


async def _read(pubsub: Any, inbox: asyncio.Queue[Any], classic: bool = False) -> None:
    """Copy one pub/sub connection's messages to ``inbox``; a failure (or the shared
    channel's stream ending) goes there too, so the listener reconnects everything. A shard
    connection left without subscriptions just ends."""
    try:
        async for message in pubsub.listen():
            inbox.put_nowait(message)
        if classic:
            inbox.put_nowait(ConnectionError("pubsub stream ended"))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        inbox.put_nowait(exc)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ignore_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # the listener resubscribes everything after a reconnect
