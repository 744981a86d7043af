"""The route table, without a network: validation, matching, weights."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from baton.errors import RouteTableError
from baton.proxy.forwarded import is_trusted
from baton.proxy.routing import (
    RouteTable,
    cookie_release,
    normalise_host,
    parse_table,
    set_cookie,
    sticky_point,
)


def table(apps: dict[str, Any]) -> RouteTable[str, str]:
    specs = parse_table({"apps": apps})
    return RouteTable.build(specs, lambda addr, spec: addr, lambda app, rel: f"{app}/{rel}", 1)


def app(target: str = "127.0.0.1:9000", **fields: Any) -> dict[str, Any]:
    return {"releases": [{"name": "v1", "weight": 100, "targets": [target]}], **fields}


def matched(
    t: RouteTable[str, str], host: str, path: str, listen: str = "127.0.0.1:8080"
) -> str | None:
    found = t.match(listen, host, path)
    return None if found is None else found.name


def test_exact_host_beats_wildcard_beats_any_host() -> None:
    t = table(
        {
            "exact": app(hosts=["shop.example.com"]),
            "wild": app(hosts=["*.example.com"]),
            "deeper": app(hosts=["*.eu.example.com"]),
            "any": app(),
        }
    )
    assert matched(t, "shop.example.com", "/") == "exact"
    assert matched(t, "blog.example.com", "/") == "wild"
    assert matched(t, "x.eu.example.com", "/") == "deeper"
    assert matched(t, "example.com", "/") == "any"  # *.example.com needs a subdomain
    assert matched(t, "other.org", "/") == "any"


def test_longest_prefix_wins_on_segment_boundaries() -> None:
    t = table(
        {
            "root": app(hosts=["a.test"]),
            "api": app(hosts=["a.test"], path_prefix="/api"),
            "v2": app(hosts=["a.test"], path_prefix="/api/v2/"),
        }
    )
    assert matched(t, "a.test", "/") == "root"
    assert matched(t, "a.test", "/api") == "api"
    assert matched(t, "a.test", "/api?x=1") == "api"
    assert matched(t, "a.test", "/api/users") == "api"
    assert matched(t, "a.test", "/api/v2/users") == "v2"
    assert matched(t, "a.test", "/apis") == "root"


def test_no_route_is_none() -> None:
    t = table({"only": app(hosts=["a.test"])})
    assert matched(t, "b.test", "/") is None
    assert matched(t, "a.test", "/", listen="127.0.0.1:9999") is None


def test_apps_on_other_listeners_do_not_match() -> None:
    t = table({"a": app(listen="127.0.0.1:8081"), "b": app(listen="127.0.0.1:8082")})
    assert matched(t, "x", "/", listen="127.0.0.1:8081") == "a"
    assert matched(t, "x", "/", listen="127.0.0.1:8082") == "b"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"Shop.Example.COM", "shop.example.com"),
        (b"shop.example.com:8080", "shop.example.com"),
        (b"[::1]:8080", "[::1]"),
        (b"", ""),
        (None, ""),
    ],
)
def test_host_header_normalised(raw: bytes | None, expected: str) -> None:
    assert normalise_host(raw) == expected


def test_pick_release_follows_weights() -> None:
    t = table(
        {
            "web": {
                "releases": [
                    {"name": "stable", "weight": 75, "targets": ["127.0.0.1:1"]},
                    {"name": "canary", "weight": 25, "targets": ["127.0.0.1:2"]},
                    {"name": "idle", "weight": 0, "targets": ["127.0.0.1:3"]},
                ]
            }
        }
    )
    web = t.apps["web"]
    points = iter([i / 1000 for i in range(1000)])
    counts: Counter[str] = Counter()
    for _ in range(1000):
        picked = web.pick_release(points.__next__)
        assert picked is not None
        counts[picked.name] += 1
    assert counts == {"stable": 750, "canary": 250}


def test_all_weights_zero_picks_nothing() -> None:
    t = table({"web": {"releases": [{"name": "a", "weight": 0, "targets": []}]}})
    assert t.apps["web"].pick_release() is None


BAD_TABLES: list[tuple[str, Any, str]] = [
    ("not an object", [], "route table"),
    ("unknown field", {"apps": {}, "x": 1}, "unknown field 'x'"),
    ("empty releases", {"apps": {"w": {"releases": []}}}, "apps.w.releases"),
    (
        "weight > 100",
        {"apps": {"w": app() | {"releases": [{"name": "a", "weight": 101, "targets": []}]}}},
        "weight",
    ),
    (
        "bool weight",
        {"apps": {"w": {"releases": [{"name": "a", "weight": True, "targets": []}]}}},
        "weight",
    ),
    ("port 0", {"apps": {"w": app("127.0.0.1:0")}}, "targets[0]"),
    ("no port", {"apps": {"w": app("localhost")}}, "targets[0]"),
    ("bad host", {"apps": {"w": app(hosts=["a b"])}}, "hosts[0]"),
    ("prefix", {"apps": {"w": app(path_prefix="x")}}, "path_prefix"),
    ("health kind", {"apps": {"w": app(health={"kind": "udp"})}}, "health.kind"),
    ("health interval", {"apps": {"w": app(health={"interval": 0})}}, "health.interval"),
    ("timeout type", {"apps": {"w": app(response_timeout="10s")}}, "response_timeout"),
    (
        "same route twice",
        {"apps": {"a": app(hosts=["x.test"]), "b": app(hosts=["x.test"])}},
        "already used by app 'a'",
    ),
]


@pytest.mark.parametrize(
    ("value", "fragment"), [c[1:] for c in BAD_TABLES], ids=[c[0] for c in BAD_TABLES]
)
def test_invalid_table_names_the_field(value: Any, fragment: str) -> None:
    with pytest.raises(RouteTableError) as err:
        parse_table(value)
    assert fragment in str(err.value)


def test_table_round_trips_through_json() -> None:
    t = table({"web": app(hosts=["A.test"], path_prefix="/api/")})
    again = table(t.to_json()["apps"])
    assert again.to_json()["apps"] == t.to_json()["apps"]
    assert t.to_json()["apps"]["web"]["hosts"] == ["a.test"]
    assert t.to_json()["apps"]["web"]["path_prefix"] == "/api"


@given(st.text(alphabet="abcdefghij/-?", max_size=20))
def test_match_never_raises_and_any_host_catch_all_always_matches(path: str) -> None:
    t = table({"api": app(path_prefix="/api"), "root": app(hosts=["z.test"])})
    assert matched(t, "z.test", path) in ("root",)
    assert matched(t, "other", "/api" + path) in ("api", None)


# -- stickiness ----------------------------------------------------------------------------


def test_sticky_point_is_stable_and_spread() -> None:
    assert sticky_point(b"client-1") == sticky_point(b"client-1")
    points = [sticky_point(b"user-%d" % i) for i in range(2000)]
    assert all(0 <= p < 1 for p in points)
    share = sum(p >= 0.75 for p in points) / len(points)
    assert 0.2 < share < 0.3  # roughly uniform


def test_cookie_release_reads_only_batons_cookie() -> None:
    assert cookie_release(b"a=1; baton_release=v2; b=3") == "v2"
    assert cookie_release(b"baton_release=feature%2Fx") == "feature/x"
    assert cookie_release(b"other_baton_release=v2") is None
    assert cookie_release(None) is None
    assert set_cookie("feature/x").startswith(b"baton_release=feature%2Fx; Path=/")


@pytest.mark.parametrize("value", ["sticky", "header:", "header:bad name", 3])
def test_invalid_stickiness_is_rejected(value: object) -> None:
    with pytest.raises(RouteTableError) as err:
        parse_table({"apps": {"w": app(stickiness=value)}})
    assert "stickiness" in str(err.value)


def test_short_release_secret_is_rejected() -> None:
    with pytest.raises(RouteTableError, match="release_secret"):
        parse_table({"apps": {"w": app(release_secret="short")}})


def test_pin_from_takes_networks_and_matches_client_addresses() -> None:
    spec = parse_table(
        {
            "apps": {
                "web": {
                    "releases": [{"name": "v1", "targets": ["127.0.0.1:9"]}],
                    "pin_from": ["10.0.0.0/8", "::1"],
                }
            }
        }
    )["web"]
    assert spec.pin_from == ("10.0.0.0/8", "::1/128")
    assert is_trusted(spec.pin_from, b"10.9.9.9")
    assert is_trusted(spec.pin_from, b"::ffff:10.0.0.1")
    assert is_trusted(spec.pin_from, b"::1")
    assert not is_trusted(spec.pin_from, b"127.0.0.1")  # loopback is not trusted by default
    assert not is_trusted(spec.pin_from, b"unknown")
    with pytest.raises(RouteTableError, match=r"apps\.web\.pin_from\[0\]"):
        parse_table(
            {"apps": {"web": {"releases": [{"name": "v1", "targets": []}], "pin_from": ["x"]}}}
        )
    with pytest.raises(RouteTableError, match=r"apps\.web\.pin_from\[0\]: expected a CIDR"):
        parse_table(  # host bits set: a typo more often than not
            {
                "apps": {
                    "web": {"releases": [{"name": "v1", "targets": []}], "pin_from": ["10.1.2.3/8"]}
                }
            }
        )


def test_proxy_protocol_and_tls_on_one_app_is_refused() -> None:
    app = {
        "releases": [{"name": "v1", "targets": ["127.0.0.1:9"]}],
        "proxy_protocol": True,
        "tls": {"certificate": "/etc/ssl/a.pem", "key": "/etc/ssl/a.key"},
    }
    with pytest.raises(RouteTableError, match=r"apps\.web\.proxy_protocol: expected false"):
        parse_table({"apps": {"web": app}})
