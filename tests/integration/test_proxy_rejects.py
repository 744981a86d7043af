"""Requests Baton must refuse: each case is exact request bytes -> the status Baton answers.

A rejected request is never forwarded: after all the cases the release behind the proxy
has served nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.h1 import parse_status, send_raw
from tests.support.procs import Backend
from tests.support.proxy import ProxyProcess

H = b"Host: app.test\r\n"

# (case id, request bytes, expected status)
REJECTED: list[tuple[str, bytes, int]] = [
    (
        "cl-and-te",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "te-and-cl",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("cl-not-a-number", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: abc\r\n\r\n", 400),
    ("cl-negative", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
    ("cl-with-sign", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello", 400),
    ("cl-list", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5, 5\r\n\r\nhello", 400),
    (
        "cl-duplicate-same",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        400,
    ),
    (
        "cl-duplicate-different",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    ),
    (
        "te-not-chunked-last",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n",
        400,
    ),
    ("te-unknown", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n", 400),
    ("request-line-garbage", b"GARBAGE\r\n\r\n", 400),
    ("request-line-no-version", b"GET /\r\n" + H + b"\r\n", 400),
    ("request-line-bad-version", b"GET / HTTP/9.9\r\n" + H + b"\r\n", 400),
    ("method-with-bad-char", b"G(T / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("url-with-space", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("header-name-with-space", b"GET / HTTP/1.1\r\n" + H + b"Bad Header: x\r\n\r\n", 400),
    ("header-name-with-control", b"GET / HTTP/1.1\r\n" + H + b"Bad\x01: x\r\n\r\n", 400),
    ("header-without-colon", b"GET / HTTP/1.1\r\n" + H + b"NoColonHere\r\n\r\n", 400),
    ("header-obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X-A: one\r\n two\r\n\r\n", 400),
    ("space-before-colon", b"GET / HTTP/1.1\r\n" + H + b"X-A : one\r\n\r\n", 400),
    ("http11-without-host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("duplicate-host", b"GET / HTTP/1.1\r\n" + H + b"Host: other.test\r\n\r\n", 400),
    ("unsupported-expect", b"GET / HTTP/1.1\r\n" + H + b"Expect: magic\r\n\r\n", 417),
    (
        "header-block-over-limit",
        b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n",
        431,
    ),
    (
        "many-headers-over-limit",
        b"GET / HTTP/1.1\r\n"
        + H
        + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(700))
        + b"\r\n",
        431,
    ),
    ("url-over-limit", b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n" + H + b"\r\n", 431),
]


@pytest.fixture(scope="module")
def proxied() -> Iterator[tuple[ProxyProcess, Backend]]:
    with Backend("v1") as backend, ProxyProcess("--header-timeout", "1s") as proxy:
        proxy.route(("v1", 100, [backend.addr]))
        yield proxy, backend


@pytest.mark.parametrize(
    ("request_bytes", "expected"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED]
)
def test_bad_request_gets_clear_4xx_and_close(
    proxied: tuple[ProxyProcess, Backend], request_bytes: bytes, expected: int
) -> None:
    proxy, _ = proxied
    response = send_raw("127.0.0.1", proxy.port, request_bytes, timeout=5)
    assert parse_status(response) == expected, response[:300]
    assert b"Connection: close" in response
    body = response.split(b"\r\n\r\n", 1)[1]
    assert body.startswith(str(expected).encode()), "the body says what was wrong"


def test_rejected_requests_were_never_forwarded(proxied: tuple[ProxyProcess, Backend]) -> None:
    proxy, _ = proxied
    before = proxy.release_metrics("v1")
    for _, request_bytes, _ in REJECTED:
        send_raw("127.0.0.1", proxy.port, request_bytes, timeout=5)
    after = proxy.release_metrics("v1")
    served_before = sum(before.get("requests", {}).values()) if before else 0
    served_after = sum(after.get("requests", {}).values()) if after else 0
    assert served_after == served_before


def test_valid_request_still_served(proxied: tuple[ProxyProcess, Backend]) -> None:
    """The rules are not so strict that a normal request fails (guards the cases above)."""
    proxy, _ = proxied
    ok = send_raw("127.0.0.1", proxy.port, b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    assert parse_status(ok) == 200 and ok.endswith(b"v1")
    post = send_raw(
        "127.0.0.1",
        proxy.port,
        b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    assert parse_status(post) == 200 and post.endswith(b"hello")


def test_slow_client_headers_get_408(proxied: tuple[ProxyProcess, Backend]) -> None:
    proxy, _ = proxied
    # Half a request, then silence: the proxy (header timeout 1 s) answers 408 and closes.
    response = send_raw("127.0.0.1", proxy.port, b"GET / HTTP/1.1\r\nHost: app", timeout=8)
    assert parse_status(response) == 408


def test_connection_that_sends_nothing_is_closed_after_header_timeout(
    proxied: tuple[ProxyProcess, Backend],
) -> None:
    proxy, _ = proxied
    response = send_raw("127.0.0.1", proxy.port, b"", timeout=8)
    # Closed by the proxy within the time-out (send_raw returns at close, not at 8 s).
    assert response == b"" or parse_status(response) == 408
