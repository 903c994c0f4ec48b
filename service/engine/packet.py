"""Socket.IO packets with bounded binary attachments, passed to python-socketio as its
``serializer``.

The chat protocol sends no binary data, but python-socketio accepts any declared number of
attachments and buffers them without limit. Here a packet declaring more than
:data:`MAX_ATTACHMENTS`, or whose attachments add up to more than the server's
``max_http_buffer_size``, fails to decode; the guard then disconnects its client.
"""

from __future__ import annotations

from typing import Any

from socketio import packet

MAX_ATTACHMENTS = 10
"""Binary attachments one Socket.IO packet may declare (the protocol itself sends none)."""


def bounded_packet_class(max_bytes: int) -> type[packet.Packet]:
    """A ``Packet`` subclass whose attachments are bounded in number and ``max_bytes``."""

    class BoundedPacket(packet.Packet):
        attachment_bytes = 0

        def decode(self, encoded_packet: Any) -> int:
            count = super().decode(encoded_packet) or 0
            if count > MAX_ATTACHMENTS:
                raise ValueError("too many binary attachments")
            return count

        def add_attachment(self, attachment: Any) -> bool:
            self.attachment_bytes += len(attachment or b"")
            if self.attachment_bytes > max_bytes:
                raise ValueError("binary attachments too large")
            return bool(super().add_attachment(attachment))

    return BoundedPacket
