"""PROXY protocol headers, v1 and v2: what a load balancer sends, and what is refused."""

from __future__ import annotations

import struct

import pytest

from baton.errors import ProxyProtocolError
from baton.proxy.proxy_protocol import V2_SIGNATURE, parse_header, v1_header, v2_header

HTTP = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def _v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(body)) + body


UNIX_BODY = b"/run/src.sock".ljust(108, b"\x00") + b"/run/dst.sock".ljust(108, b"\x00")

# (name, bytes, family, client_ip, source_port)
VALID = [
    ("v1 tcp4", b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 80\r\n", "tcp4", "203.0.113.7", 51234),
    (
        "v1 tcp6",
        b"PROXY TCP6 2001:db8::7 ::1 51234 443\r\n",
        "tcp6",
        "2001:db8::7",
        51234,
    ),
    ("v1 unknown", b"PROXY UNKNOWN\r\n", "unknown", None, 0),
    ("v1 unknown with addresses", b"PROXY UNKNOWN ff 1.2.3.4 1 2\r\n", "unknown", None, 0),
    ("v1 port 0", b"PROXY TCP4 10.0.0.1 10.0.0.2 0 65535\r\n", "tcp4", "10.0.0.1", 0),
    (
        "v2 tcp4",
        v2_header(("198.51.100.4", 40000), ("127.0.0.1", 8080)),
        "tcp4",
        "198.51.100.4",
        40000,
    ),
    ("v2 tcp6", v2_header(("2001:db8::9", 40001), ("::1", 8080)), "tcp6", "2001:db8::9", 40001),
    (
        "v2 tcp4 with TLVs",
        v2_header(("198.51.100.5", 1), ("127.0.0.1", 2), tlvs=b"\x04\x00\x03abc"),
        "tcp4",
        "198.51.100.5",
        1,
    ),
    ("v2 LOCAL", v2_header(None, None), "unspec", None, 0),
    ("v2 LOCAL with TLV", v2_header(None, None, tlvs=b"\x04\x00\x01x"), "unspec", None, 0),
    ("v2 unix", _v2(1, 0x31, UNIX_BODY), "unix", None, 0),
    ("v2 unspec proxy", _v2(1, 0x00, b""), "unspec", None, 0),
    (
        "v2 udp4",
        _v2(1, 0x12, bytes([10, 0, 0, 1, 10, 0, 0, 2]) + struct.pack("!HH", 5, 6)),
        "udp4",
        "10.0.0.1",
        5,
    ),
]


@pytest.mark.parametrize(
    ("name", "raw", "family", "client_ip", "port"), VALID, ids=[v[0] for v in VALID]
)
def test_valid_headers_give_the_real_client(
    name: str, raw: bytes, family: str, client_ip: str | None, port: int
) -> None:
    header = parse_header(raw + HTTP)
    assert header is not None
    assert header.consumed == len(raw)  # the client's own bytes start right after
    assert header.family == family
    assert header.client_ip == client_ip
    assert header.source_port == port


def test_unix_paths_are_reported_but_not_a_client_ip() -> None:
    header = parse_header(_v2(1, 0x31, UNIX_BODY))
    assert header is not None and header.source == "/run/src.sock"
    assert header.destination == "/run/dst.sock" and header.client_ip is None


@pytest.mark.parametrize(
    "raw",
    [
        v1_header(("203.0.113.7", 1), ("127.0.0.1", 80)),
        v2_header(("198.51.100.4", 40000), ("127.0.0.1", 8080)),
        v2_header(("2001:db8::9", 1), ("::1", 2), tlvs=b"\x04\x00\x03abc"),
    ],
)
def test_a_header_split_anywhere_waits_for_the_rest(raw: bytes) -> None:
    for cut in range(len(raw)):
        assert parse_header(raw[:cut]) is None, cut
    header = parse_header(raw)
    assert header is not None and header.consumed == len(raw)


# (name, bytes, words of the error)
INVALID = [
    ("plain HTTP", HTTP, "missing PROXY protocol header"),
    ("TLS hello", b"\x16\x03\x01\x02\x00", "missing"),
    ("lower-case proxy", b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "missing"),
    ("v1 no space", b"PROXYTCP4", "missing"),
    ("v1 too long", b"PROXY TCP4 " + b"1" * 120, "longer than 107"),
    ("v1 LF only", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "CRLF"),
    ("v1 missing port", b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "expected PROXY TCP4|TCP6"),
    ("v1 extra field", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "expected PROXY TCP4|TCP6"),
    ("v1 double space", b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "expected"),
    ("v1 udp", b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    ("v1 bad address", b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n", "invalid source address"),
    ("v1 v6 in TCP4", b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "not IPv4"),
    ("v1 v4 in TCP6", b"PROXY TCP6 ::1 5.6.7.8 1 2\r\n", "not IPv6"),
    ("v1 port too big", b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "invalid source port"),
    ("v1 port leading zero", b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "invalid source port"),
    ("v1 port sign", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n", "invalid destination port"),
    ("v2 bad signature", b"\r\n\r\n\x00\r\nQUIT\r" + b"\x21\x11\x00\x0c", "missing"),
    ("v2 version 1", V2_SIGNATURE + b"\x11\x11\x00\x00", "unsupported version 1"),
    ("v2 command 2", V2_SIGNATURE + b"\x22\x11\x00\x00", "unknown command 2"),
    ("v2 family 0x41", _v2(1, 0x41, b"x" * 12), "unknown address family 0x41"),
    ("v2 tcp4 too short", _v2(1, 0x11, b"\x01\x02\x03\x04"), "need 12 bytes"),
    ("v2 tcp6 too short", _v2(1, 0x21, b"\x00" * 12), "need 36 bytes"),
    ("v2 unix too short", _v2(1, 0x31, b"/x\x00"), "need 216 bytes"),
    ("v2 oversized", V2_SIGNATURE + b"\x21\x11\xff\xff", "over"),
]


@pytest.mark.parametrize(("name", "raw", "words"), INVALID, ids=[v[0] for v in INVALID])
def test_invalid_headers_are_refused_with_a_reason(name: str, raw: bytes, words: str) -> None:
    with pytest.raises(ProxyProtocolError, match=words):
        parse_header(raw)


def test_nothing_yet_means_wait() -> None:
    assert parse_header(b"") is None
    assert parse_header(b"PRO") is None
    assert parse_header(V2_SIGNATURE[:5]) is None
