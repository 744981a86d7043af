"""The last lines of an instance's log: the one tail every runtime and the daemon use.

This module owns reading "the last N lines" of log output, whether it is bytes in hand (what
``docker logs`` answered) or a file on disk (a process instance's log, a removed
container's saved log, the proxy's log). A file is read backwards in blocks, so a tail of a
large log costs what the tail is, not the file. Undecodable bytes are replaced, never an error;
a missing or unreadable file has no lines.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

_BLOCK = 8192


def last_lines(data: bytes, lines: int | None) -> list[str]:
    """The last ``lines`` lines of ``data`` (all of them for None, none for 0 or less)."""
    if lines is not None and lines <= 0:
        return []
    text = data.decode(errors="replace").splitlines()
    return text if lines is None else list(deque(text, maxlen=lines))


def tail_file(path: Path, lines: int | None) -> list[str]:
    """The last ``lines`` lines of the file at ``path`` ([] when it cannot be read)."""
    if lines is not None and lines <= 0:
        return []
    try:
        with open(path, "rb") as f:
            if lines is None:
                return last_lines(f.read(), None)
            # Read backwards in blocks until enough newlines are in hand.
            pos = f.seek(0, os.SEEK_END)
            data = b""
            while pos > 0 and data.count(b"\n") <= lines:
                step = min(_BLOCK, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
    except OSError:
        return []
    return last_lines(data, lines)
