"""TLS rules without a network: name matching, redirects, the route's tls field, pairs."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from baton.deploy.plan import tls_route
from baton.errors import CertificateError, RouteTableError
from baton.proxy.routing import parse_app
from baton.proxy.tls import (
    CertPair,
    alpn_protocols,
    covers,
    host_matches,
    hsts_header,
    https_location,
    parse_tls,
    protocol_for_alpn,
)
from baton.server.certs import backoff, needs_issue, rate_limit
from tests.support.certs import TestCA


def test_a_wildcard_covers_exactly_one_label() -> None:
    assert host_matches("*.example.com", "a.example.com")
    assert not host_matches("*.example.com", "example.com")
    assert not host_matches("*.example.com", "a.b.example.com")
    assert host_matches("Shop.Example.com", "shop.example.com.")
    assert covers(["*.example.com"], "*.example.com")
    assert not covers(["a.example.com"], "*.example.com")


def test_redirect_location_keeps_host_path_and_names_the_tls_port() -> None:
    assert https_location("0.0.0.0:443", b"shop.test:80", b"/a?b=1") == b"https://shop.test/a?b=1"
    assert https_location("0.0.0.0:8443", b"shop.test", b"/") == b"https://shop.test:8443/"
    assert https_location("127.0.0.1:8443", None, b"*") == b"https://127.0.0.1:8443/"
    assert https_location("[::]:443", b"[::1]:80", b"/x") == b"https://[::1]/x"


def test_tls_field_of_the_route_table_is_validated() -> None:
    spec = parse_tls({"certificate": "/c", "key": "/k", "hsts": 60}, "apps.web.tls")
    assert (
        spec is not None
        and spec.redirect
        and hsts_header(spec) == (b"Strict-Transport-Security: max-age=60\r\n")
    )
    for bad, words in [
        ({"certificate": "/c"}, "both"),
        ({}, "acme_dir"),
        ({"certificate": "c", "key": "/k"}, "absolute"),
        ({"acme_dir": "/a", "redirect": "yes"}, "redirect"),
        ({"acme_dir": "/a", "hsts": -1}, "hsts"),
        ({"acme_dir": "/a", "key_bytes": "x"}, "unknown field"),
    ]:
        with pytest.raises(RouteTableError, match=words):
            parse_tls(bad, "apps.web.tls")
    base = {"releases": [{"name": "v1", "targets": ["127.0.0.1:9"]}]}
    with pytest.raises(RouteTableError, match="http_listen"):
        parse_app("web", {**base, "listen": "127.0.0.1:8443", "http_listen": "127.0.0.1:8443"})
    app = parse_app("web", {**base, "http_listen": "127.0.0.1:8081", "tls": {"acme_dir": "/a"}})
    assert app.to_json()["tls"]["acme_dir"] == "/a"
    assert parse_app("web", app.to_json()) == app


def test_route_gets_paths_not_key_material() -> None:
    files = tls_route({"tls": {"certificate": "/c", "key": "/k", "redirect": False}}, "/s")
    assert files == {
        "tls": {"redirect": False, "certificate": "/c", "key": "/k"},
        "http_listen": "0.0.0.0:80",
    }
    acme = tls_route(
        {"http_listen": "127.0.0.1:81", "tls": {"acme": {"email": "a@b.co"}, "hsts": 5}}, "/s"
    )
    assert acme["tls"] == {"redirect": True, "hsts": 5, "acme_dir": "/s", "on_demand": False}
    assert tls_route({"listen": "127.0.0.1:8080"}, "/s") == {}


def test_pairs_are_checked_before_use_and_errors_name_file_and_host(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    cert, key = ca.issue(["a.test"], "a")
    _, other_key = ca.issue(["b.test"], "b")
    pair = CertPair.load(str(cert), str(key), ["a.test"], "file")
    assert pair.info.names == ["a.test"] and "Baton Test CA" in pair.info.issuer
    with pytest.raises(CertificateError, match=r"b\.key: this key does not belong"):
        CertPair.load(str(cert), str(other_key), ["a.test"], "file")
    with pytest.raises(CertificateError, match=r"not for host 'c\.test'"):
        CertPair.load(str(cert), str(key), ["c.test"], "file")
    with pytest.raises(
        CertificateError, match=r"nope\.crt: cannot read the certificate for a\.test"
    ):
        CertPair.load(str(tmp_path / "nope.crt"), str(key), ["a.test"], "file")


def test_renewal_is_due_within_renew_before_and_failures_back_off(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    cert, _ = ca.issue(["a.test"], "a", days=20)
    now = datetime.datetime.now(datetime.UTC)
    assert needs_issue(cert, 30 * 86400, now)
    assert not needs_issue(cert, 10 * 86400, now)
    assert needs_issue(tmp_path / "missing.pem", 10, now)
    assert backoff(1) < backoff(2) < backoff(3) and backoff(100) == 3600


def test_alpn_offers_and_chooses_http1_until_h2_registers() -> None:
    assert alpn_protocols() == ["http/1.1"]
    assert protocol_for_alpn("h2") is None and protocol_for_alpn(None) is None


def test_on_demand_issuance_is_rate_limited_per_minute() -> None:
    issued: list[float] = []
    for i in range(10):
        allowed, issued = rate_limit(issued, 100.0 + i)
        assert allowed
    allowed, issued = rate_limit(issued, 110.0)
    assert not allowed and len(issued) == 10
    allowed, issued = rate_limit(issued, 161.0)  # the first two fell out of the minute
    assert allowed and len(issued) == 9
