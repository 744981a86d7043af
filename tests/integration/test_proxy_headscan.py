"""Request heads through a real proxy, whole or in pieces: the same answers either way.

A whole plain head in one read goes to Baton's head scanner (compiled builds); a head in
pieces, or one the scanner declines, goes to httptools. Whichever parsed it, the app sees
the same fields and the client the same answers, in order, also when a scanned head and
a body or a split head share a read.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from tests.integration.test_proxy_rejects import responses
from tests.support.procs import Backend
from tests.support.proxy import ProxyProcess

HEAD = (
    b"GET /headers HTTP/1.1\r\n"
    b"Host: app.test\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) headscan/1.0\r\n"
    b"Accept: text/html,*/*;q=0.8\r\n"
    b"X-Spaced: \t inner  value \t\r\n"
    b"X-Empty:\r\n"
    b"Cookie: a=1; b=2\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
)
PLAIN = b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n"


@pytest.fixture(scope="module")
def proxied() -> Iterator[ProxyProcess]:
    with Backend("v1") as backend, ProxyProcess() as proxy:
        proxy.route(("v1", 100, [backend.addr]))
        yield proxy


def exchange(port: int, pieces: list[bytes], answers: int, timeout: float = 10.0) -> bytes:
    """Send ``pieces`` one write each on one connection; read until ``answers`` responses."""
    deadline = time.monotonic() + timeout
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces:
            sock.sendall(piece)
        while (left := deadline - time.monotonic()) > 0:
            try:
                if len(responses(received)) >= answers:
                    return received
            except ValueError:
                pass  # a response still arriving
            sock.settimeout(left)
            data = sock.recv(65536)
            if not data:
                break
            received += data
    return received


def seen_by_app(answer: bytes) -> dict[str, str]:
    [(status, body)] = responses(answer)
    assert status == 200, answer[:300]
    seen = json.loads(body)
    assert isinstance(seen, dict)
    seen.pop("x-request-id")  # (one per request)
    return seen


def test_a_head_whole_or_byte_by_byte_reaches_the_app_the_same(proxied: ProxyProcess) -> None:
    whole = seen_by_app(exchange(proxied.port, [HEAD], 1))
    bytewise = seen_by_app(exchange(proxied.port, [HEAD[i : i + 1] for i in range(len(HEAD))], 1))
    assert whole == bytewise
    assert whole["x-spaced"] == "inner  value"  # (the app's server trims the trailing OWS)
    assert whole["x-empty"] == ""
    assert whole["cookie"] == "a=1; b=2"
    assert whole["via"] == "1.1 baton"


def test_a_head_split_at_every_offset_is_answered(proxied: ProxyProcess) -> None:
    for cut in range(1, len(PLAIN)):
        answer = exchange(proxied.port, [PLAIN[:cut], PLAIN[cut:]], 1)
        assert responses(answer) == [(200, b"v1")], (cut, answer[:200])


def test_a_scanned_head_then_a_body_then_a_split_head_in_one_connection(
    proxied: ProxyProcess,
) -> None:
    post = b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\r\nhello"
    first = PLAIN + post + PLAIN + PLAIN[:20]  # the last head ends in the next write
    answer = exchange(proxied.port, [first, PLAIN[20:]], 4)
    assert responses(answer) == [(200, b"v1"), (200, b"hello"), (200, b"v1"), (200, b"v1")]


def test_a_bad_head_after_scanned_ones_is_rejected_after_their_answers(
    proxied: ProxyProcess,
) -> None:
    bad = b"GET / HTTP/1.1\r\nHost: app.test\r\nX-A : one\r\n\r\n"  # whitespace before ":"
    answer = exchange(proxied.port, [PLAIN + PLAIN + bad], 3)
    assert [status for status, _ in responses(answer)] == [200, 200, 400]
