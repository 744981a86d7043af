"""Addresses and host names: config, the route table and the CLI flags agree on every value."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from baton.addresses import parse_address, parse_host
from baton.config import parse_config
from baton.errors import ConfigError, RouteTableError, UsageError
from baton.observe.endpoints import parse_address as parse_flag_address
from baton.proxy.routing import parse_table

GOOD_ADDRESSES = [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)),
    ("0.0.0.0:1", ("0.0.0.0", 1)),
    ("localhost:65535", ("localhost", 65535)),
    ("[::1]:8080", ("::1", 8080)),
    ("[::]:443", ("::", 443)),
    ("shop.internal:80", ("shop.internal", 80)),
    ("my_app:3000", ("my_app", 3000)),
]

BAD_ADDRESSES = [
    ("8080", "no ':PORT'"),
    (":8080", "host is empty"),
    ("[]:8080", "only an IPv6"),
    ("127.0.0.1:0", "1 to 65535"),
    ("127.0.0.1:65536", "1 to 65535"),
    ("127.0.0.1:", "1 to 65535"),
    ("127.0.0.1:80a", "1 to 65535"),
    ("127.0.0.1:٨٠", "1 to 65535"),  # Arabic-Indic digits pass str.isdigit()
    ("::1:8080", "goes in brackets"),
    ("[127.0.0.1]:8080", "only an IPv6"),
    ("[localhost]:8080", "only an IPv6"),
    ("http://x:80", "not a host name label"),
    ("-bad.example:80", "not a host name label"),
    ("a..b:80", "no empty label"),
    ("café.example:80", "not a host name label"),
    ("a b:80", "not a host name label"),
]


@pytest.mark.parametrize(("value", "expected"), GOOD_ADDRESSES)
def test_an_address_is_host_and_port(value: str, expected: tuple[str, int]) -> None:
    assert parse_address(value) == expected


@pytest.mark.parametrize(("value", "why"), BAD_ADDRESSES)
def test_a_bad_address_says_what_is_wrong(value: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_address(value)


def test_an_address_must_be_a_string() -> None:
    with pytest.raises(ValueError, match="string"):
        parse_address(8080)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("shop.example.com", "shop.example.com"),
        ("Shop.Example.COM", "shop.example.com"),
        ("shop.example.com.", "shop.example.com"),
        ("*.example.org", "*.example.org"),
        ("*.Example.org.", "*.example.org"),
        ("localhost", "localhost"),
        ("bad_name.example.com", "bad_name.example.com"),
        ("a" * 63 + ".test", "a" * 63 + ".test"),
    ],
)
def test_a_host_is_normalised(value: str, expected: str) -> None:
    assert parse_host(value) == expected


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "empty"),
        (".", "empty"),
        ("*.", "empty"),
        ("*", "not a host name label"),
        ("*.*.example.org", "not a host name label"),
        ("shop.*.org", "not a host name label"),
        ("shop.example.com:8080", "no port"),
        ("https://shop.example.com", "no port, no scheme"),
        ("b..c", "no empty label"),
        ("-shop.example", "not a host name label"),
        ("shop-.example", "not a host name label"),
        ("a" * 64 + ".test", "not a host name label"),
        (".".join(["a" * 60] * 5), "at most 253"),
        (" shop.example.com", "not a host name label"),
        ("café.example", "not a host name label"),
    ],
)
def test_a_bad_host_says_what_is_wrong(value: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_host(value)


def _accepts(check: Callable[[], object], error: type[Exception], value: str) -> bool:
    try:
        check()
    except error as exc:
        assert repr(value) in str(exc)  # the error quotes what was refused
        return False
    return True


def _route_table(listen: str, hosts: list[str]) -> None:
    release = {"name": "a", "weight": 100, "targets": ["127.0.0.1:9000"]}
    parse_table({"apps": {"w": {"listen": listen, "hosts": hosts, "releases": [release]}}})


def _config(listen: str, hosts: list[str]) -> None:
    parse_config(
        {"app": "w", "run": {"command": "x"}, "proxy": {"listen": listen, "hosts": hosts}},
        file="baton.yml",
    )


@pytest.mark.parametrize("value", [v for v, _ in GOOD_ADDRESSES + BAD_ADDRESSES])
def test_config_route_table_and_flags_agree_on_a_listen_address(value: str) -> None:
    verdicts = [
        _accepts(lambda: _config(value, []), ConfigError, value),
        _accepts(lambda: _route_table(value, []), RouteTableError, value),
        _accepts(lambda: parse_flag_address("--metrics", value), UsageError, value),
    ]
    assert verdicts in ([True] * 3, [False] * 3)


@pytest.mark.parametrize(
    "value", ["Shop.Example.COM", "*.example.org", "bad_name.example.com", "b..c", "-x.y", "*"]
)
def test_config_and_route_table_agree_on_a_host(value: str) -> None:
    verdicts = [
        _accepts(lambda: _config("127.0.0.1:8080", [value]), ConfigError, value),
        _accepts(lambda: _route_table("127.0.0.1:8080", [value]), RouteTableError, value),
    ]
    assert verdicts in ([True, True], [False, False])


def test_a_bad_listen_names_file_key_and_reason() -> None:
    with pytest.raises(ConfigError) as caught:
        _config("[127.0.0.1]:8080", [])
    message = str(caught.value)
    assert message.startswith("baton.yml: proxy.listen: expected an address like 127.0.0.1:8080")
    assert "only an IPv6 address goes in brackets" in message


def test_a_bad_target_names_the_route_table_field() -> None:
    release = {"name": "a", "weight": 100, "targets": ["::1:9000"]}
    with pytest.raises(RouteTableError, match=r"apps\.w\.releases\[0\]\.targets\[0\].*brackets"):
        parse_table({"apps": {"w": {"releases": [release]}}})
