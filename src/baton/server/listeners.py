"""The proxy's listening sockets, held by the control plane so a dead proxy refuses no one.

Theory of operation. The supervisor binds each public address itself and hands the proxy a
duplicate (``--listen-fd ADDRESS=FD``), keeping its own copy open. The kernel's accept
queue belongs to the socket, not to the process: when the proxy dies (even by SIGKILL),
new clients' connections complete into that queue and wait there, instead of being
refused, until the restarted proxy (given the same sockets) accepts them with its saved
route table already loaded. Only connections the dead proxy had accepted are lost. Sockets
the proxy bound itself (an app's new address, or a proxy adopted after a control-plane
restart) are collected from it over its hand-off socket (``PEEK``: duplicates, nothing
retires). This module owns that set of sockets: bind or collect what is missing, close
what is no longer routed.
"""

from __future__ import annotations

import json
import logging
import os
import socket

from baton.errors import RouteTableError
from baton.proxy.handoff import MAX_LISTENERS, PEEK, handoff_path
from baton.proxy.routing import parse_address

log = logging.getLogger("baton.server")

BACKLOG = 4096


def bind_listener(address: str) -> socket.socket:
    """A listening TCP socket on ``address`` (host:port), as the proxy itself would bind it.

    ``SO_REUSEPORT``: a proxy with several workers (``baton.proxy.supervisor``) binds one
    more socket per worker on the same address, and the kernel spreads connections
    among them; only sockets that all set it before binding may share a port.
    """
    host, port = parse_address(address, "listen")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class HeldListeners:
    """The listening sockets the control plane keeps open for its proxy, by address."""

    def __init__(self) -> None:
        self.sockets: dict[str, socket.socket] = {}

    def hold(self, addresses: list[str]) -> dict[str, int]:
        """Hold exactly ``addresses`` (those that can be bound); returns address -> fd.

        An address that cannot be bound is left out: the proxy then binds it itself from
        its route table and reports the error there.
        """
        for address in list(self.sockets):
            if address not in addresses:
                self.sockets.pop(address).close()
        for address in addresses:
            if address in self.sockets:
                continue
            try:
                self.sockets[address] = bind_listener(address)
            except (OSError, RouteTableError) as exc:
                log.warning("cannot hold a listening socket on %s: %s", address, exc)
        return {address: sock.fileno() for address, sock in self.sockets.items()}

    def missing(self, addresses: list[str]) -> bool:
        return any(a not in self.sockets for a in addresses)

    def collect(self, admin: str, timeout: float = 5.0) -> None:
        """Take duplicates of the running proxy's listening sockets (blocking; use a thread)."""
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(timeout)
        fds: list[int] = []
        try:
            conn.connect(handoff_path(admin))
            conn.sendall(PEEK)
            data, fds, _, _ = socket.recv_fds(conn, 1 << 16, MAX_LISTENERS)
            addresses = json.loads(data)["listeners"] if data else []
            if len(addresses) != len(fds):
                raise OSError(f"{len(fds)} sockets for {len(addresses)} listeners")
            for address, fd in zip(addresses, fds, strict=True):
                if address in self.sockets:
                    os.close(fd)
                else:
                    self.sockets[address] = socket.socket(fileno=fd)
            fds = []
        except (OSError, ValueError, KeyError) as exc:
            log.warning("cannot collect the proxy's listening sockets: %s", exc)
        finally:
            for fd in fds:
                os.close(fd)
            conn.close()

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()
