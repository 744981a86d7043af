"""Back-pressure on reading a client: why it is paused, and when it may read again.

Theory of operation. A client connection stops reading for several independent reasons
(a pipelined request waits its turn, the upstream's write buffer is full, a body is
buffered while no upstream takes it, a rejection is owed after earlier answers). Each is a
bit; reading stops when the first is set and resumes only when the last is cleared, so
one reason ending never resumes a connection another still holds. ``FlowControl`` keeps the
bits and says when the transport must change; the connection (HTTP/1.1 transport, or an
HTTP/2 stream's window acknowledgements) does the I/O. As uvicorn's ``flow_control.py``.
"""

from __future__ import annotations

from typing import Final

# Why a client connection is not being read.
PAUSE_PIPELINE: Final = 1
PAUSE_UPSTREAM: Final = 2
PAUSE_BUFFER: Final = 4
PAUSE_DEFERRED: Final = 8


class FlowControl:
    """The set of reasons a connection is not read (empty: it is read)."""

    __slots__ = ("reasons",)

    def __init__(self) -> None:
        self.reasons = 0

    def pause(self, reason: int) -> bool:
        """Add ``reason``; True when reading must stop now (it was the first)."""
        first = not self.reasons
        self.reasons |= reason
        return first

    def resume(self, reason: int) -> bool:
        """Clear ``reason``; True when reading may start again now (it was the last)."""
        if self.reasons & reason:
            self.reasons &= ~reason
            return not self.reasons
        return False

    def paused_for(self, reason: int) -> bool:
        return bool(self.reasons & reason)
