"""X-Forwarded-* headers: believed from trusted proxies only, replaced from anyone else."""

from __future__ import annotations

import pytest

from baton.proxy.forwarded import is_trusted, parse_networks
from baton.proxy.http import scan_request, upstream_head

HEADERS = [
    (b"Host", b"internal:8080"),
    (b"X-Forwarded-For", b"203.0.113.9"),
    (b"X-Forwarded-Proto", b"https"),
    (b"X-Forwarded-Host", b"shop.example.com"),
]


def _forwarded(head: bytes) -> dict[str, str]:
    out = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b": ")
        if name.lower().startswith(b"x-forwarded-"):
            assert name.decode().lower() not in out, f"{name!r} twice"
            out[name.decode().lower()] = value.decode()
    return out


def _head(trusted: bool, headers: list[tuple[bytes, bytes]] = HEADERS) -> dict[str, str]:
    info = scan_request(headers, http11=True)
    return _forwarded(
        upstream_head(
            b"GET",
            b"/",
            info,
            client_ip=b"10.1.2.3",
            request_id=b"r",
            target=b"t:1",
            trusted=trusted,
        )
    )


def test_from_a_trusted_proxy_headers_are_kept_and_extended() -> None:
    assert _head(True) == {
        "x-forwarded-for": "203.0.113.9, 10.1.2.3",
        "x-forwarded-proto": "https",
        "x-forwarded-host": "shop.example.com",
    }


def test_from_anyone_else_headers_are_replaced() -> None:
    assert _head(False) == {
        "x-forwarded-for": "10.1.2.3",
        "x-forwarded-proto": "http",
        "x-forwarded-host": "internal:8080",
    }


def test_a_trusted_proxy_that_sends_none_gets_them_set() -> None:
    assert _head(True, [(b"Host", b"internal:8080")]) == {
        "x-forwarded-for": "10.1.2.3",
        "x-forwarded-proto": "http",
        "x-forwarded-host": "internal:8080",
    }


@pytest.mark.parametrize(
    ("networks", "peer", "trusted"),
    [
        ((), b"127.0.0.1", False),
        (("10.0.0.0/8",), b"10.200.0.1", True),
        (("10.0.0.0/8",), b"11.0.0.1", False),
        (("10.0.0.0/8",), b"::ffff:10.0.0.1", True),  # IPv4-mapped, as a dual-stack socket shows
        (("::1/128",), b"::1", True),
        (("2001:db8::/32",), b"2001:db8:1::5", True),
        (("127.0.0.1/32",), b"unknown", False),
        (("127.0.0.0/8", "192.168.0.0/16"), b"192.168.4.4", True),
    ],
)
def test_trust_is_decided_by_the_peer_address(
    networks: tuple[str, ...], peer: bytes, trusted: bool
) -> None:
    assert is_trusted(networks, peer) is trusted


def test_networks_are_validated_and_normalised() -> None:
    assert parse_networks(["10.0.0.0/8", "::1", "10.0.0.0/8"]) == ("10.0.0.0/8", "::1/128")
    for bad, words in (
        ("10.0.0.0/8", "expected a list"),
        (["10.0.0.1/8"], r"\[0\]: expected a CIDR"),  # host bits set
        (["x"], r"\[0\]"),
        ([8], r"\[0\]"),
    ):
        with pytest.raises(ValueError, match=words):
            parse_networks(bad)
