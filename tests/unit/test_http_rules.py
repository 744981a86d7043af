"""Request and response header rules, without a network."""

from __future__ import annotations

from typing import Any

import pytest

from baton.proxy.failures import RateLimit
from baton.proxy.http import (
    FRAME_CHUNKED,
    FRAME_CLOSE,
    FRAME_LENGTH,
    FRAME_NONE,
    RequestRejected,
    absolute_form,
    client_head,
    local_response,
    replayable,
    scan_request,
    upgrade_refused,
    upstream_head,
    valid_host,
)

HOST = (b"Host", b"shop.test")


def raw_head(
    status: int, headers: list[tuple[bytes, bytes]], version: bytes = b"HTTP/1.1"
) -> bytes:
    """An upstream response head as it arrives (without the final blank line)."""
    lines = [b"%s %d OK" % (version, status)] + [n + b": " + v for n, v in headers]
    return b"\r\n".join(lines)


def test_upstream_head_sets_forwarding_headers_and_drops_hop_by_hop() -> None:
    info = scan_request(
        [
            HOST,
            (b"Connection", b"keep-alive, X-Private"),
            (b"X-Private", b"secret"),
            (b"Keep-Alive", b"timeout=5"),
            (b"X-Forwarded-For", b"10.0.0.1"),
            (b"Accept", b"*/*"),
        ],
        http11=True,
    )
    head = upstream_head(
        b"GET", b"/x", info, client_ip=b"127.0.0.2", request_id=b"r1", target=b"t:1"
    )
    lines = head.split(b"\r\n")
    assert lines[0] == b"GET /x HTTP/1.1"
    assert b"Host: shop.test" in lines
    assert b"Accept: */*" in lines
    assert b"X-Forwarded-For: 127.0.0.2" in lines  # the peer is not a trusted proxy
    assert b"X-Forwarded-Proto: http" in lines
    assert b"X-Forwarded-Host: shop.test" in lines
    assert b"X-Request-Id: r1" in lines
    assert b"Via: 1.1 baton" in lines
    for dropped in (b"Connection", b"Keep-Alive", b"X-Private"):
        assert not any(line.startswith(dropped + b":") for line in lines), dropped
    assert head.endswith(b"\r\n\r\n")


def test_existing_request_id_is_kept() -> None:
    info = scan_request([HOST, (b"X-Request-Id", b"abc")], http11=True)
    head = upstream_head(b"GET", b"/", info, client_ip=b"1", request_id=b"new", target=b"t:1")
    assert head.count(b"X-Request-Id") == 1 and b"X-Request-Id: abc" in head


def test_http10_without_host_gets_the_target_as_host() -> None:
    info = scan_request([], http11=False)
    head = upstream_head(b"GET", b"/", info, client_ip=b"1", request_id=b"r", target=b"127.0.0.1:9")
    assert b"Host: 127.0.0.1:9\r\n" in head


def test_chunked_request_is_forwarded_chunked() -> None:
    info = scan_request([HOST, (b"Transfer-Encoding", b"chunked")], http11=True)
    assert info.chunked and info.content_length is None
    head = upstream_head(b"POST", b"/", info, client_ip=b"1", request_id=b"r", target=b"t:1")
    assert b"Transfer-Encoding: chunked" in head


def test_upgrade_request_keeps_upgrade_headers() -> None:
    info = scan_request(
        [HOST, (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")], http11=True
    )
    head = upstream_head(b"GET", b"/ws", info, client_ip=b"1", request_id=b"r", target=b"t:1")
    assert b"Connection: upgrade\r\nUpgrade: websocket\r\n" in head


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([HOST, (b"Content-Length", b"1"), (b"Transfer-Encoding", b"chunked")], 400),
        ([HOST, (b"Content-Length", b"1"), (b"Content-Length", b"1")], 400),
        ([HOST, (b"Content-Length", b"x")], 400),
        ([HOST, (b"Content-Length", b"9" * 30)], 400),
        ([HOST, (b"Transfer-Encoding", b"gzip")], 400),
        ([HOST, (b"Transfer-Encoding", b"gzip, chunked")], 501),
        ([HOST, HOST], 400),
        ([], 400),
        ([HOST, (b"Expect", b"200-ok")], 417),
    ],
)
def test_ambiguous_requests_are_rejected(headers: list[tuple[bytes, bytes]], status: int) -> None:
    with pytest.raises(RequestRejected) as err:
        scan_request(headers, http11=True)
    assert err.value.status == status


def test_response_framing() -> None:
    def framing(status: int, headers: list[tuple[bytes, bytes]], **kw: bool) -> tuple[int, bool]:
        args: dict[str, Any] = {
            "head_request": False,
            "client_http11": True,
            "client_keep_alive": True,
            "upgrade": False,
        }
        args.update(kw)
        info = client_head(status, raw_head(status, headers), **args)
        return info.framing, info.keep_alive

    assert framing(200, [(b"Content-Length", b"2")]) == (FRAME_LENGTH, True)
    assert framing(200, [(b"Transfer-Encoding", b"chunked")]) == (FRAME_CHUNKED, True)
    assert framing(200, []) == (FRAME_CHUNKED, True)  # until-close body re-chunked
    assert framing(200, [], client_http11=False) == (FRAME_CLOSE, False)
    assert framing(204, []) == (FRAME_NONE, True)
    assert framing(304, [(b"Content-Length", b"10")]) == (FRAME_NONE, True)
    assert framing(200, [(b"Content-Length", b"10")], head_request=True) == (FRAME_NONE, True)
    assert framing(200, [(b"Content-Length", b"2")], client_keep_alive=False) == (
        FRAME_LENGTH,
        False,
    )


def test_response_head_drops_hop_by_hop_and_adds_via() -> None:
    info = client_head(
        200,
        raw_head(
            200,
            [
                (b"Connection", b"close"),
                (b"Keep-Alive", b"x"),
                (b"Content-Length", b"2"),
                (b"X-App", b"1"),
            ],
        ),
        head_request=False,
        client_http11=True,
        client_keep_alive=True,
        upgrade=False,
    )
    assert info.head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Keep-Alive" not in info.head and b"Connection: close" not in info.head
    assert b"X-App: 1\r\n" in info.head and b"Via: 1.1 baton\r\n" in info.head


def test_local_response_is_complete_and_says_why() -> None:
    raw = local_response(503, "no healthy target for app 'shop'", close=False)
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable")
    assert b"Content-Length: %d" % len(body) in head
    assert b"no healthy target" in body
    assert b"Connection: close" in local_response(400, "x", close=True)


def test_response_head_from_http10_upstream_is_answered_as_http11() -> None:
    info = client_head(
        200,
        raw_head(200, [(b"content-length", b"2"), (b"VIA", b"1.0 lb")], version=b"HTTP/1.0"),
        head_request=False,
        client_http11=True,
        client_keep_alive=True,
        upgrade=False,
    )
    assert info.head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Via: 1.0 lb, 1.1 baton\r\n" in info.head
    assert info.head.count(b"ontent-") == 1 and b"Content-Length: 2\r\n" in info.head
    assert info.head.endswith(b"\r\n\r\n")


def test_response_headers_named_in_connection_are_dropped() -> None:
    info = client_head(
        200,
        raw_head(200, [(b"Connection", b"X-Hop"), (b"X-Hop", b"1"), (b"X-Keep", b"2")]),
        head_request=False,
        client_http11=True,
        client_keep_alive=True,
        upgrade=False,
    )
    assert b"X-Hop" not in info.head and b"X-Keep: 2\r\n" in info.head


# -- issue 12 ------------------------------------------------------------------------------

HOSTS = [
    (b"app.test", True),
    (b"app.test:8080", True),
    (b"APP.Test:", True),
    (b"127.0.0.1:80", True),
    (b"[::1]:8080", True),
    (b"[::1]", True),
    (b"xn--bcher-kva.example", True),
    (b"a%20b", True),
    (b"", True),  # RFC 9112 3.2: empty when the target has no authority
    (b"app.test/../admin", False),
    (b"app test", False),
    (b"user@app.test", False),
    (b"app.test<script>", False),
    (b"app.test:99999", False),
    (b"app.test:8o", False),
    (b"app.test:80:80", False),
    (b"[::1", False),
    (b"app.test\\", False),
    (b"a%zz", False),
]


@pytest.mark.parametrize(("value", "ok"), HOSTS, ids=[h.decode() or "empty" for h, _ in HOSTS])
def test_host_values_follow_rfc_9112(value: bytes, ok: bool) -> None:
    assert valid_host(value) is ok
    if ok:
        scan_request([(b"Host", value)], http11=True)
    else:
        with pytest.raises(RequestRejected) as err:
            scan_request([(b"Host", value)], http11=True)
        assert err.value.status == 400 and "Host" in err.value.message


def test_underscore_spellings_of_framing_and_forwarding_headers_are_dropped() -> None:
    info = scan_request(
        [
            HOST,
            (b"Transfer_Encoding", b"chunked"),
            (b"X_Forwarded_For", b"6.6.6.6"),
            (b"content_length", b"9"),
            (b"X_Real_IP", b"6.6.6.6"),
            (b"X_Custom_Thing", b"kept"),
        ],
        http11=True,
    )
    assert info.kept == [(b"Host", b"shop.test"), (b"X_Custom_Thing", b"kept")]


def test_connection_cannot_name_host_or_request_id_away() -> None:
    info = scan_request(
        [
            HOST,
            (b"Connection", b"Host, X-Request-Id, X-Hop"),
            (b"X-Request-Id", b"r"),
            (b"X-Hop", b"1"),
        ],
        http11=True,
    )
    head = upstream_head(b"GET", b"/", info, client_ip=b"1.2.3.4", request_id=b"r", target=b"t:1")
    assert b"Host: shop.test\r\n" in head and b"X-Request-Id: r\r\n" in head
    assert b"X-Hop" not in head


ABSOLUTE = [
    (b"/plain", b"shop.test", b"/plain", b"shop.test"),
    (b"http://shop.test/a?b", b"shop.test", b"/a?b", b"shop.test"),
    (b"HTTP://SHOP.test", b"shop.test", b"/", b"shop.test"),
    (b"https://shop.test:8443/x", b"shop.test:8443", b"/x", b"shop.test:8443"),
    (b"http://shop.test/x", None, b"/x", b"shop.test"),  # HTTP/1.0 without Host
]


@pytest.mark.parametrize(("url", "host", "path", "routed_by"), ABSOLUTE)
def test_absolute_form_is_routed_by_its_authority(
    url: bytes, host: bytes | None, path: bytes, routed_by: bytes
) -> None:
    info = scan_request([(b"Host", host)] if host is not None else [], http11=host is not None)
    assert absolute_form(url, info) == path
    assert info.host == routed_by
    head = upstream_head(b"GET", path, info, client_ip=b"1.2.3.4", request_id=b"r", target=b"t:1")
    assert head.count(b"\r\nHost: ") == 1


@pytest.mark.parametrize(
    "url", [b"http://other.test/", b"http://u@shop.test/", b"ftp://shop.test/", b"shop.test/x"]
)
def test_absolute_form_that_conflicts_or_is_not_http_is_400(url: bytes) -> None:
    info = scan_request([HOST], http11=True)
    with pytest.raises(RequestRejected) as err:
        absolute_form(url, info)
    assert err.value.status == 400


@pytest.mark.parametrize(
    ("method", "sent", "body_held", "ok"),
    [
        (b"POST", False, True, True),  # connect refused: the app saw nothing
        (b"POST", True, True, False),  # the app may have acted on it
        (b"PATCH", True, True, False),
        (b"GET", True, True, True),
        (b"PUT", True, True, True),
        (b"DELETE", True, True, True),
        (b"PUT", True, False, False),  # body no longer held
        (b"GET", False, False, False),
    ],
)
def test_only_requests_safe_to_replay_are_replayed(
    method: bytes, sent: bool, body_held: bool, ok: bool
) -> None:
    assert replayable(method, sent=sent, body_held=body_held) is ok


@pytest.mark.parametrize(
    ("requested", "headers", "ok"),
    [
        (b"websocket", [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")], True),
        (b"websocket", [(b"Upgrade", b"WebSocket")], True),
        (None, [(b"Upgrade", b"websocket")], False),
        (b"websocket", [(b"Upgrade", b"h2c")], False),
        (b"websocket", [], False),
    ],
)
def test_101_opens_a_tunnel_only_to_the_protocol_asked_for(
    requested: bytes | None, headers: list[tuple[bytes, bytes]], ok: bool
) -> None:
    assert (upgrade_refused(requested, raw_head(101, headers)) is None) is ok


def test_transfer_coding_other_than_chunked_is_kept_and_body_runs_until_close() -> None:
    info = client_head(
        200,
        raw_head(200, [(b"Transfer-Encoding", b"gzip")]),
        head_request=False,
        client_http11=True,
        client_keep_alive=True,
        upgrade=False,
    )
    assert info.until_close and info.framing == FRAME_CHUNKED
    assert b"Transfer-Encoding: gzip, chunked\r\n" in info.head
    chunked = client_head(
        200,
        raw_head(200, [(b"Transfer-Encoding", b"gzip, chunked")]),
        head_request=False,
        client_http11=True,
        client_keep_alive=True,
        upgrade=False,
    )
    assert not chunked.until_close
    assert b"Transfer-Encoding: gzip, chunked\r\n" in chunked.head


def test_failure_log_is_rate_limited_and_says_how_many_it_suppressed() -> None:
    limit = RateLimit(per_second=2)
    assert limit.allow(10.0) == (True, 0)
    assert limit.allow(10.1) == (True, 0)
    assert limit.allow(10.2) == (False, 0)
    assert limit.allow(10.9) == (False, 0)
    assert limit.allow(11.0) == (True, 2)  # the next line reports the two suppressed
    assert limit.allow(11.1) == (True, 0)


def test_baton_flags_is_counted_not_forwarded() -> None:
    from baton.proxy.http import client_head, flag_cohorts

    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nBaton-Flags: new-checkout=on, banner=fancy"
    info = client_head(
        200, raw, head_request=False, client_http11=True, client_keep_alive=True, upgrade=False
    )
    assert b"baton-flags" not in info.head.lower()
    assert info.flags is not None
    assert flag_cohorts(info.flags) == [("new-checkout", "on"), ("banner", "fancy")]
    # an app's malformed entries are skipped, never an error; at most 16 pairs are taken
    assert flag_cohorts(b"=x, a b=c, ok=yes, bad=, =") == [("ok", "yes")]
    assert len(flag_cohorts(b",".join(b"f%d=on" % i for i in range(40)))) == 16
