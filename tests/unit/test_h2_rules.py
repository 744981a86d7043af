"""HTTP/2 <-> HTTP/1.1 translation rules (pure): what the app sees, what the client gets."""

from __future__ import annotations

import pytest

from baton.proxy.h2 import request_head, response_headers
from baton.proxy.http import RequestRejected, scan_request, upstream_head


def head_for(headers: list[tuple[bytes, bytes]], has_body: bool = False) -> bytes:
    method, path, pairs = request_head(headers, has_body)
    info = scan_request(pairs, True)
    return upstream_head(method, path, info, client_ip=b"127.0.0.1", request_id=b"r1", target=b"t")


BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/a?b=1")]


def test_authority_becomes_host_and_wins_over_a_host_header() -> None:
    head = head_for([*BASE, (b":authority", b"shop.test"), (b"host", b"other.test")])
    assert head.startswith(b"GET /a?b=1 HTTP/1.1\r\n")
    assert b"host: shop.test\r\n" in head and b"other.test" not in head.split(b"X-Forwarded")[0]


def test_host_header_is_used_without_authority() -> None:
    assert b"host: shop.test\r\n" in head_for([*BASE, (b"host", b"shop.test")])


def test_cookie_crumbs_are_joined_into_one_header() -> None:
    head = head_for([*BASE, (b":authority", b"a"), (b"cookie", b"a=1"), (b"cookie", b"b=2")])
    assert head.count(b"cookie:") == 1 and b"cookie: a=1; b=2\r\n" in head


def test_body_without_length_is_forwarded_chunked_and_with_length_as_is() -> None:
    post = [(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"a")]
    assert b"Transfer-Encoding: chunked\r\n" in head_for(post, has_body=True)
    sized = head_for([*post, (b"content-length", b"5")], has_body=True)
    assert b"Content-Length: 5\r\n" in sized and b"chunked" not in sized
    assert b"chunked" not in head_for(post, has_body=False)


def test_connect_is_refused() -> None:
    with pytest.raises(RequestRejected) as err:
        request_head([(b":method", b"CONNECT"), (b":authority", b"a:443")], False)
    assert err.value.status == 501


def test_response_head_becomes_lowercase_h2_headers_without_connection_headers() -> None:
    status, headers = response_headers(
        b"HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nConnection: keep-alive\r\n"
        b"Keep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a=1\r\n"
        b"Set-Cookie: b=2\r\nVia: 1.1 baton"
    )
    assert status == 201
    assert headers == [
        (b":status", b"201"),
        (b"content-type", b"text/plain"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"via", b"1.1 baton"),
    ]
