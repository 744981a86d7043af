"""Raw-socket HTTP/1.1 for protocol tests: send exact bytes, get exact bytes back.

For data-driven tests of request parsing and bad input, where any client library would
"fix" the request before sending it. Loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time


def send_raw(
    host: str, port: int, data: bytes, timeout: float = 5.0, *, half_close: bool = False
) -> bytes:
    """Send `data`, then read until the server closes or `timeout` s have passed in total.

    Returns everything received (possibly b""). A reset after some bytes returns those
    bytes; a reset before any byte returns b"". `half_close` shuts our write side after
    sending (some tests need the server to see EOF).
    """
    if not ipaddress.ip_address(socket.gethostbyname(host)).is_loopback:
        raise ValueError(f"{host} is not loopback; tests stay on 127/8")
    deadline = time.monotonic() + timeout
    received = bytearray()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if half_close:
                # The server may already have answered and closed (a rejection): read that.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            pass
    return bytes(received)


async def send_raw_async(
    host: str, port: int, data: bytes, timeout: float = 5.0, *, half_close: bool = False
) -> bytes:
    """`send_raw` in a thread, for async tests (keeps their event loop running)."""
    return await asyncio.to_thread(send_raw, host, port, data, timeout, half_close=half_close)


def parse_status(response: bytes) -> int:
    """Status code of the final response in `response` (1xx interim ones skipped, 101 kept).

    0 when nothing was received; ValueError when the bytes are not an HTTP/1.x response.
    """
    rest = response
    while rest:
        head, _, rest = rest.partition(b"\r\n\r\n")
        line = head.split(b"\r\n", 1)[0]
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ValueError(f"not an HTTP/1.x status line: {line[:100]!r}")
        status = int(parts[1])
        if not (100 <= status < 200) or status == 101:
            return status
    return 0
