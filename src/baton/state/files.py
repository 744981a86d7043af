"""Private files: how Baton creates what holds its state, secrets and sockets.

Theory of operation. Everything in the state dir may carry secrets (the SQLite store holds
release env, the logs may echo app output, the sockets accept deploys), so it is created
private from the first instant: directories 0700, files 0600, Unix sockets bound under a
0177 umask (so they are born 0600), never created with the process umask and chmod'ed afterwards (that leaves a
window in which another user can open them). Files that already exist with looser modes
(an older Baton) are tightened when they are opened again. The umask is process-wide, so
``private_umask`` is held only around the one call that creates a socket.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents, those with the default mode) as 0700."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=DIR_MODE)
    if path.stat().st_mode & 0o777 != DIR_MODE:
        os.chmod(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Make sure ``path`` exists as a 0600 file (created so, or tightened)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    try:
        if os.fstat(fd).st_mode & 0o777 != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return path


def open_private(path: Path, mode: str = "ab") -> IO[bytes]:
    """Open a log file for appending, created 0600 (an existing one is tightened)."""
    if mode != "ab":
        raise ValueError("open_private appends ('ab') only")
    private_file(path)
    return path.open("ab")


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Hold umask 0177 while a Unix socket is bound, so it is born 0600."""
    old = os.umask(0o177)
    try:
        yield
    finally:
        os.umask(old)


def write_private(path: Path | str, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (a temp file in the same dir, fsync'ed,
    renamed over it), mode 0600; a missing directory is created 0700. A reader sees the
    old file or the new one, never a part; a crash leaves at most a stray ``.tmp-*``.
    ``durable=False`` skips the fsync (still atomic for every reader while the machine
    runs): for a file that only describes what a power loss ends anyway, such as a record of
    a running process, whose fsync would cost a deploy milliseconds per instance."""
    directory = os.path.dirname(os.fspath(path)) or "."
    os.makedirs(directory, mode=DIR_MODE, exist_ok=True)
    import tempfile  # not at import: `baton deploy` reads secrets through this module

    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
