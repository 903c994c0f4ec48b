"""A TCP proxy in front of Redis that can make pub/sub connections silently deaf.

A "deaf" instance (python-socketio#1581) keeps a subscriber connection that no longer
delivers messages while everything else works. Nothing in Redis itself produces that on
demand, so the proxy does: it spots connections that sent SUBSCRIBE and, while muted,
drops what Redis sends them, leaving publishes and commands untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    subscriber: bool = False


@dataclass
class FaultProxy:
    target_port: int
    port: int = 0
    muted: bool = False
    links: list[_Link] = field(default_factory=list)
    _server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        link = _Link(writer, up_writer)
        self.links.append(link)
        await asyncio.gather(
            self._pipe(reader, up_writer, link, from_client=True),
            self._pipe(up_reader, writer, link, from_client=False),
            return_exceptions=True,
        )
        self.links.remove(link)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: _Link,
        *,
        from_client: bool,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if from_client and b"SUBSCRIBE" in data.upper():
                    link.subscriber = True
                if not from_client and link.subscriber and self.muted:
                    continue  # the subscriber hears nothing, and nobody notices
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def mute_subscribers(self) -> None:
        self.muted = True

    def restore(self) -> None:
        """Unmute, and cut the muted connections so their clients reconnect cleanly."""
        self.muted = False
        for link in list(self.links):
            if link.subscriber:
                link.client.close()
                link.upstream.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self.links):
            link.client.close()
            link.upstream.close()
