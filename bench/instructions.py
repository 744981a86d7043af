"""Per-request cost of the proxy's HTTP/1.1 exchange code, on a socket-free loop.

    .venv/bin/python bench/instructions.py [--requests 20000] [--valgrind]

What it drives: a real ``Proxy`` with a one-app route table, a real ``ClientConnection``
and a real pooled ``UpstreamConnection``, each given an in-memory transport instead of a
socket. Every round the client transport delivers one keep-alive request (as a browser
sends it) to ``ClientConnection.data_received``; the request head the proxy writes to the
upstream transport is checked, then the upstream transport delivers an nginx-like answer to
``UpstreamConnection.data_received``; the response the proxy writes back to the client is
checked. So one round is request -> route -> upstream head -> response head -> metrics, the
whole HTTP/1.1 hot path, with no kernel and no event-loop turn in it.

Without ``--valgrind`` it reports requests/s of that loop. With ``--valgrind`` it runs
itself twice under ``valgrind --tool=callgrind`` (N and 3N requests) and reports user-space
instructions per request as the difference over the extra 2N requests, so start-up, imports
and the table build cancel out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
try:  # the installed Baton (compiled by `make`, or BATON_PURE=1 for its fallback)
    import baton  # noqa: F401
except ImportError:  # a bare checkout: the sources
    sys.path.insert(0, str(REPO / "src"))

from baton.build import describe  # noqa: E402
from baton.proxy.routing import RouteTable, parse_table  # noqa: E402
from baton.proxy.server import ClientConnection, Proxy  # noqa: E402
from baton.proxy.upstream import UpstreamConnection  # noqa: E402

LISTEN = "127.0.0.1:8080"
TARGET = "127.0.0.1:9000"
REQUEST = (
    b"GET /api/items?page=2 HTTP/1.1\r\n"
    b"Host: app.test\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) bench/1.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"Cookie: session=abc123; theme=dark\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: nginx/1.22.1\r\n"
    b"Date: Mon, 30 Nov 2026 06:00:00 GMT\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 16\r\n"
    b"Connection: keep-alive\r\n"
    b"Cache-Control: no-store\r\n"
    b"\r\n"
    b'{"items": [1,2]}'
)


class MemoryTransport:
    """What the protocols need of a transport; written bytes are collected, not sent."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.written: list[bytes] = []
        self.closing = False
        self.write = self.written.append  # (a C call, as a real transport's write is)

    def take(self) -> bytes:
        data = b"".join(self.written)
        self.written.clear()
        return data

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default


def _table_specs() -> dict[str, Any]:
    return parse_table(
        {
            "apps": {
                "web": {
                    "listen": LISTEN,
                    "hosts": ["app.test"],
                    "releases": [{"name": "r1", "weight": 100, "targets": [TARGET]}],
                }
            }
        }
    )


async def run(requests: int) -> float:
    """Drive ``requests`` keep-alive exchanges; returns the seconds they took."""
    proxy = Proxy()
    proxy.table = RouteTable.build(_table_specs(), proxy._target, proxy.metrics.get, 1)
    target = proxy.targets[TARGET]
    up = UpstreamConnection(target)
    up_transport = MemoryTransport(("127.0.0.1", 9000))
    up.connection_made(up_transport)  # type: ignore[arg-type]
    target.put_idle(up, 256)
    client = ClientConnection(proxy, LISTEN)
    client_transport = MemoryTransport(("127.0.0.1", 40000))
    client.connection_made(client_transport)  # type: ignore[arg-type]

    def one() -> None:
        client.data_received(REQUEST)
        sent = up_transport.take()
        if not sent.startswith(b"GET /api/items?page=2 HTTP/1.1\r\n"):
            raise SystemExit(f"unexpected upstream request: {sent[:200]!r}")
        up.data_received(RESPONSE)
        answer = client_transport.take()
        if not answer.startswith(b"HTTP/1.1 200 OK\r\n") or not answer.endswith(b"[1,2]}"):
            raise SystemExit(f"unexpected response: {answer[:300]!r}")

    one()  # the first exchange warms caches (lru, interned names) outside the count
    started = time.perf_counter()
    for _ in range(requests):
        one()
    elapsed = time.perf_counter() - started
    m = proxy.metrics.get("web", "r1")
    if m.status[1] != requests + 1 or client_transport.closing:
        raise SystemExit(f"exchanges went wrong: {m.status} closed={client_transport.closing}")
    return elapsed


def _loop_policy() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _callgrind_total(requests: int, workdir: Path) -> int:
    out = workdir / f"callgrind.{requests}.out"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        __file__,
        "--requests",
        str(requests),
        "--quiet",
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    for line in out.read_text().splitlines():
        m = re.match(r"(?:summary|totals): (\d+)", line)
        if m:
            return int(m.group(1))
    raise SystemExit(f"no totals in {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--valgrind", action="store_true", help="instructions per request")
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    if args.valgrind:
        if shutil.which("valgrind") is None:
            parser.error("--valgrind needs valgrind installed")
        n = args.requests
        with tempfile.TemporaryDirectory(prefix="baton-instr-") as tmp:
            low = _callgrind_total(n, Path(tmp))
            high = _callgrind_total(3 * n, Path(tmp))
        per = (high - low) / (2 * n)
        print(
            f"instructions/request: {per:,.0f}  (callgrind, {n} vs {3 * n} requests; {describe()})"
        )
        return
    _loop_policy()
    elapsed = asyncio.run(run(args.requests))
    if not args.quiet:
        rate = args.requests / elapsed
        print(f"requests/s: {rate:,.0f}  ({args.requests} exchanges in {elapsed:.2f} s)")


if __name__ == "__main__":
    main()
