"""Just enough of RFC 6455 to end a WebSocket tunnel politely.

Theory of operation. Baton tunnels WebSocket bytes without decoding them. When it must end a
tunnel (the drain deadline of a release, a proxy retiring, ``max_connection_age``) it sends a
close frame with code 1001 (going away) to both sides before closing TCP, so clients
reconnect cleanly instead of seeing a dropped connection. A frame can only be injected
between two frames of a direction, so a ``FrameCursor`` per direction follows frame
boundaries in the bytes that pass (headers are read, payloads skipped).
"""

from __future__ import annotations

import os

GOING_AWAY = 1001


class FrameCursor:
    """Where the frame boundaries are in one direction of a WebSocket byte stream."""

    __slots__ = ("head", "need")

    def __init__(self) -> None:
        self.need = 0  # payload bytes of the current frame still to come
        self.head = b""  # a frame header received in part

    @property
    def at_boundary(self) -> bool:
        return self.need == 0 and not self.head

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self.need:
                step = min(self.need, end - pos)
                self.need -= step
                pos += step
                continue
            head = self.head + data[pos : pos + 14 - len(self.head)]
            size = _header_size(head)
            if size is None or len(head) < size:
                pos += len(head) - len(self.head)
                self.head = head
                continue
            pos += size - len(self.head)
            self.head = b""
            self.need = _payload_length(head)


def _header_size(head: bytes) -> int | None:
    if len(head) < 2:
        return None
    length7 = head[1] & 0x7F
    extended = 2 if length7 == 126 else 8 if length7 == 127 else 0
    return 2 + extended + (4 if head[1] & 0x80 else 0)


def _payload_length(head: bytes) -> int:
    length7 = head[1] & 0x7F
    if length7 == 126:
        return int.from_bytes(head[2:4], "big")
    if length7 == 127:
        return int.from_bytes(head[2:10], "big")
    return length7


def close_frame(code: int = GOING_AWAY, *, masked: bool) -> bytes:
    """A close frame; frames a client sends (to the app) must be masked."""
    payload = code.to_bytes(2, "big")
    if not masked:
        return bytes((0x88, len(payload))) + payload
    mask = os.urandom(4)
    return (
        bytes((0x88, 0x80 | len(payload)))
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )
