"""A scripted upstream for protocol tests: an app that answers with exact bytes.

For the misbehaving-app cases of the proxy's behaviour tests (a 101 nobody asked for, bytes
past a response's end, a close without an answer), which a real framework would refuse to
produce. It listens on 127.0.0.1 (a free port) in a thread; for every request it reads (a
head, then a Content-Length or chunked body) it records the raw bytes and runs the script:
``reply`` is written, then the connection is closed if ``close`` is set, else kept for the
next request. ``reply`` may be a callable of the request's raw bytes.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

Reply = bytes | Callable[[bytes], bytes]


def _fill(sock: socket.socket, buf: bytearray, n: int) -> bool:
    """Read until ``buf`` holds at least ``n`` bytes; False at EOF first."""
    while len(buf) < n:
        data = sock.recv(65536)
        if not data:
            return False
        buf += data
    return True


def _fill_line(sock: socket.socket, buf: bytearray, start: int) -> int:
    """Read until a CRLF at or after ``start``; its index, or -1 at EOF first."""
    while (i := buf.find(b"\r\n", start)) < 0:
        data = sock.recv(65536)
        if not data:
            return -1
        buf += data
    return i


def _read_request(sock: socket.socket, buf: bytearray) -> bytes | None:
    """One request's raw bytes from ``buf`` + the socket (None at EOF before a whole one)."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return None
        buf += data
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end]).lower()
    length = 0
    chunked = False
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
        elif line.startswith(b"transfer-encoding:") and b"chunked" in line:
            chunked = True
    if chunked:
        pos = end
        while True:
            eol = _fill_line(sock, buf, pos)
            if eol < 0:
                return None
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            pos = eol + 2
            if size == 0:
                eol = _fill_line(sock, buf, pos)  # (Baton sends no trailers)
                if eol < 0:
                    return None
                pos = eol + 2
                break
            if not _fill(sock, buf, pos + size + 2):
                return None
            pos += size + 2
        raw = bytes(buf[:pos])
        del buf[:pos]
        return raw
    if not _fill(sock, buf, end + length):
        return None
    raw = bytes(buf[: end + length])
    del buf[: end + length]
    return raw


class ScriptedUpstream:
    """``with ScriptedUpstream(reply, close=...) as app:`` then route to ``app.addr``."""

    def __init__(self, reply: Reply, *, close: bool = False) -> None:
        self.reply = reply
        self.close_after = close
        self.requests: list[bytes] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopped = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        with conn:
            conn.settimeout(30)
            try:
                while True:
                    raw = _read_request(conn, buf)
                    if raw is None:
                        return
                    with self._lock:
                        self.requests.append(raw)
                    reply = self.reply(raw) if callable(self.reply) else self.reply
                    if reply:
                        conn.sendall(reply)
                    if self.close_after:
                        return
            except OSError:
                return
