"""Hitless proxy upgrade: a new proxy process takes the listening sockets from the old one.

Theory of operation. Every proxy serves a hand-off socket beside its admin socket
(``ADMIN.handoff``). A new proxy started with ``--takeover`` connects to it and asks for the
listening sockets; the old proxy sends them in one message (SCM_RIGHTS) with their listen
addresses. From then on both processes accept from the same kernel queues, so no
connection is ever refused. The new proxy loads the old one's route table (through the old
admin API, still reachable at ``ADMIN``), serves its own admin API at ``ADMIN.next``, checks
itself, then renames its sockets over the old paths (an atomic replace) and sends ``STOP`` on
the hand-off connection, which stays open until then. Only on ``STOP`` does the old proxy
stop accepting and retire: in-flight requests finish, each keep-alive connection's next
response carries ``Connection: close``, tunnels stay until they end or the drain deadline.

If the new proxy fails at any point before ``STOP`` (crashes, hangs, cannot load the table),
the hand-off connection closes without ``STOP`` and the old proxy carries on as if nothing
happened: it never stopped accepting and closed nothing.

A proxy worker (``supervisor.py``) also accepts ``ADOPT``: its supervisor sends it the
listening sockets of a new listen address (one socket shared by every worker), which it
serves at once; ``adopt_into`` is the supervisor's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from baton.state.files import private_umask

log = logging.getLogger("baton.proxy")

HELLO = b"FDS\n"
STOP = b"STOP\n"
# The control plane asks for duplicates of the sockets to hold while this proxy lives (so
# that a restart after a crash refuses no one: ``baton.server.listeners``); nothing retires.
PEEK = b"PEEK\n"
MAX_LISTENERS = 253  # SCM_MAX_FD: one message carries at most this many
# A supervisor gives its workers new listening sockets: ADOPT, GO, the sockets, OK.
ADOPT = b"ADOPT\n"
GO = b"GO\n"
OK = b"OK\n"


def handoff_path(admin: str) -> str:
    return admin + ".handoff"


class HandoffServer:
    """Serves the listening sockets of this proxy to its successor."""

    def __init__(
        self,
        path: str,
        listeners: Callable[[], dict[str, int] | list[tuple[str, int]]],
        on_stop: Callable[[], None],
        adopt: Callable[[dict[str, socket.socket]], Awaitable[None]] | None = None,
    ) -> None:
        self.path = path
        self.listeners = listeners
        self.on_stop = on_stop
        self.adopt = adopt
        self.sock: socket.socket | None = None
        self.task: asyncio.Task[None] | None = None
        self.conns: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with private_umask():  # born 0600: no window with the process umask's mode
            sock.bind(self.path)
        sock.listen(4)
        sock.setblocking(False)
        self.sock = sock
        self.task = asyncio.get_running_loop().create_task(self._serve(sock))

    async def _serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(sock)
            task = loop.create_task(self._one(conn))
            self.conns.add(task)
            task.add_done_callback(self.conns.discard)

    async def _one(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            with conn:
                request = await asyncio.wait_for(loop.sock_recv(conn, 64), 10)
                if request == ADOPT and self.adopt is not None:
                    await loop.sock_sendall(conn, GO)
                    conn.setblocking(True)
                    conn.settimeout(10)
                    sockets = await asyncio.to_thread(_receive, conn)
                    conn.setblocking(False)
                    await self.adopt(sockets)
                    await loop.sock_sendall(conn, OK)
                    return
                if request not in (HELLO, PEEK):
                    return
                given = self.listeners()
                # (address, fd) pairs: a supervisor has one socket per worker and address.
                pairs = list(given.items()) if isinstance(given, dict) else given
                addresses = [address for address, _ in pairs]
                header = json.dumps({"pid": os.getpid(), "listeners": addresses}).encode()
                try:
                    conn.setblocking(True)
                    socket.send_fds(conn, [header], [fd for _, fd in pairs])
                    conn.setblocking(False)
                finally:
                    for _, fd in pairs:
                        os.close(fd)
                if request == PEEK:
                    return
                # Wait for the successor's verdict; a closed connection means it gave up.
                answer = b""
                while not answer.endswith(b"\n"):
                    chunk = await loop.sock_recv(conn, 64)
                    if not chunk:
                        log.warning("hand-off: the new proxy went away before taking over")
                        return
                    answer += chunk
                if answer == STOP:
                    log.warning("hand-off: the new proxy took over; retiring")
                    self.on_stop()
        except (OSError, TimeoutError) as exc:
            log.warning("hand-off failed: %s", exc)

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.sock is not None:
            self.sock.close()


class Takeover:
    """The successor's side: receive the sockets, later tell the old proxy to stop."""

    def __init__(self, admin: str) -> None:
        self.admin = admin
        self.conn: socket.socket | None = None
        self.old_pid = 0

    def receive(self, timeout: float = 10.0) -> dict[str, socket.socket]:
        """One socket per address; the old proxy's other sockets for an address (a
        supervisor's ``SO_REUSEPORT`` group) are closed here, which resets the connections
        queued on them once the old proxy retires. A successor uses ``receive_all`` and
        serves every socket (``Proxy.listen_also``, ``Supervisor.shares``)."""
        out: dict[str, socket.socket] = {}
        for address, sock in self.receive_all(timeout):
            if address in out:
                sock.close()
            else:
                out[address] = sock
        return out

    def receive_all(self, timeout: float = 10.0) -> list[tuple[str, socket.socket]]:
        """Every listening socket of the old proxy, in its order, with its address."""
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(timeout)
        try:
            conn.connect(handoff_path(self.admin))
            conn.sendall(HELLO)
            data, fds, _, _ = socket.recv_fds(conn, 1 << 16, MAX_LISTENERS)
        except OSError:
            conn.close()
            raise
        self.conn = conn
        header: dict[str, Any] = json.loads(data)
        self.old_pid = int(header["pid"])
        return _pairs(header["listeners"], fds)

    def finish(self) -> None:
        """Tell the old proxy to stop accepting and retire."""
        assert self.conn is not None
        self.conn.sendall(STOP)
        self.conn.close()
        self.conn = None


def _pairs(addresses: list[str], fds: list[int]) -> list[tuple[str, socket.socket]]:
    if len(addresses) != len(fds):
        for fd in fds:
            os.close(fd)
        raise OSError(f"hand-off sent {len(fds)} sockets for {len(addresses)} listeners")
    return [(a, socket.socket(fileno=fd)) for a, fd in zip(addresses, fds, strict=True)]


def _receive(conn: socket.socket) -> dict[str, socket.socket]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, MAX_LISTENERS)
    header: dict[str, Any] = json.loads(data)
    return dict(_pairs(header["listeners"], fds))


def adopt_into(path: str, listeners: dict[str, int], timeout: float = 10.0) -> None:
    """Give the worker whose hand-off socket is ``path`` these listening sockets (by
    address; the fds stay open here) and wait until it serves them. Blocking."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(path)
        conn.sendall(ADOPT)
        if conn.recv(16) != GO:
            raise OSError(f"{path}: the worker refused the listening sockets")
        header = json.dumps({"pid": os.getpid(), "listeners": list(listeners)}).encode()
        socket.send_fds(conn, [header], list(listeners.values()))
        if conn.recv(16) != OK:
            raise OSError(f"{path}: the worker did not take the listening sockets")
