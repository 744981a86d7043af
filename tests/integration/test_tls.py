"""HTTPS in the proxy: certificates from files chosen by SNI, replaced without a restart,
redirects from plain HTTP, HSTS, X-Forwarded-Proto, and hitless upgrades with TLS sockets."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_proxy_upgrade import serving_pid, take_over, wait_exit
from tests.support.certs import (
    TestCA,
    client_context,
    names_of,
    served_certificate,
    write_atomic,
)
from tests.support.load import Load
from tests.support.procs import Backend, free_port, wait_port
from tests.support.proxy import ProxyProcess


class Site:
    """A proxy with one backend, a plain listener (the proxy's own) and a TLS one."""

    def __init__(self, proxy: ProxyProcess, backend: Backend, ca: TestCA, tmp: Path) -> None:
        self.proxy = proxy
        self.backend = backend
        self.ca = ca
        self.tmp = tmp
        self.tls_port = free_port()
        self.tls_listen = f"127.0.0.1:{self.tls_port}"

    def route(self, app: str = "web", **fields: Any) -> tuple[int, Any]:
        spec = {
            "listen": self.tls_listen,
            "http_listen": self.proxy.listen,
            "releases": [{"name": "v1", "weight": 100, "targets": [self.backend.addr]}],
            **fields,
        }
        return self.proxy.call("PUT", f"/apps/{app}", spec)

    def tls(self, cert: Path, key: Path, **more: Any) -> dict[str, Any]:
        return {"certificate": str(cert), "key": str(key), **more}


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    ca = TestCA(tmp_path)
    with Backend("v1") as backend, ProxyProcess() as proxy:
        yield Site(proxy, backend, ca, tmp_path)


def https_get(
    port: int, host: str, path: str, ca: Path, *, sni: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTPS request on a fresh connection, verifying the chain and the name."""
    ctx = client_context(ca)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=sni or host) as s,
    ):
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return _parse(data)


def http_get(port: int, host: str, path: str) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return _parse(data)


def _parse(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def test_sni_picks_the_right_certificate_for_two_hosts_on_one_listener(site: Site) -> None:
    a_cert, a_key = site.ca.issue(["a.test"], "a")
    b_cert, b_key = site.ca.issue(["b.test", "*.b.test"], "b")
    assert site.route("app-a", hosts=["a.test"], tls=site.tls(a_cert, a_key))[0] == 200
    status, body = site.route("app-b", hosts=["b.test", "*.b.test"], tls=site.tls(b_cert, b_key))
    assert status == 200, body
    wait_port(site.tls_port)
    assert names_of(served_certificate(site.tls_port, "a.test")) == ["a.test"]
    assert names_of(served_certificate(site.tls_port, "b.test")) == ["b.test", "*.b.test"]
    assert names_of(served_certificate(site.tls_port, "x.b.test")) == ["b.test", "*.b.test"]
    # No SNI: the listener's default (the first app's pair) rather than a failed handshake.
    assert names_of(served_certificate(site.tls_port, None)) == ["a.test"]
    # A verified request on each name reaches the backend.
    for host in ("a.test", "b.test", "x.b.test"):
        status, _, body = https_get(site.tls_port, host, "/", site.ca.path)
        assert (status, body) == (200, b"v1")


def test_plain_http_redirects_to_https_and_tls_answers_carry_hsts_and_forwarded_proto(
    site: Site,
) -> None:
    cert, key = site.ca.issue(["shop.test"], "shop")
    status, body = site.route(hosts=["shop.test"], tls=site.tls(cert, key, hsts=31536000))
    assert status == 200, body
    wait_port(site.tls_port)
    status, headers, _ = http_get(site.proxy.port, "shop.test", "/cart?x=1")
    assert status == 308
    assert headers["location"] == f"https://shop.test:{site.tls_port}/cart?x=1"
    status, headers, body = https_get(site.tls_port, "shop.test", "/headers", site.ca.path)
    assert status == 200
    assert headers["strict-transport-security"] == "max-age=31536000"
    assert json.loads(body)["x-forwarded-proto"] == "https"
    # redirect: false serves plain HTTP too (marked as such), without HSTS.
    status, body = site.route(hosts=["shop.test"], tls=site.tls(cert, key, redirect=False))
    assert status == 200, body
    status, headers, body = http_get(site.proxy.port, "shop.test", "/headers")
    assert status == 200 and "strict-transport-security" not in headers
    assert json.loads(body)["x-forwarded-proto"] == "http"


def test_acme_challenge_on_the_plain_listener_is_answered_not_redirected(site: Site) -> None:
    cert, key = site.ca.issue(["shop.test"], "shop")
    assert site.route(hosts=["shop.test"], tls=site.tls(cert, key))[0] == 200
    token = "tok-123_abc"
    site.proxy.ok("PUT", f"/acme/challenges/{token}", {"key_authorization": f"{token}.thumb"})
    status, _, body = http_get(site.proxy.port, "shop.test", f"/.well-known/acme-challenge/{token}")
    assert (status, body) == (200, f"{token}.thumb".encode())
    site.proxy.ok("DELETE", f"/acme/challenges/{token}")
    status, _, _ = http_get(site.proxy.port, "shop.test", f"/.well-known/acme-challenge/{token}")
    assert status == 308


def test_bad_certificates_are_refused_naming_the_file_and_nothing_changes(site: Site) -> None:
    good_cert, good_key = site.ca.issue(["shop.test"], "shop")
    other_cert, other_key = site.ca.issue(["other.test"], "other")
    assert site.route(hosts=["shop.test"], tls=site.tls(good_cert, good_key))[0] == 200
    wait_port(site.tls_port)
    before = site.proxy.ok("GET", "/routes")

    status, body = site.route(hosts=["shop.test"], tls=site.tls(good_cert, other_key))
    assert status == 400 and str(other_key) in body["error"] and "does not belong" in body["error"]

    status, body = site.route(hosts=["shop.test"], tls=site.tls(other_cert, other_key))
    assert status == 400 and str(other_cert) in body["error"] and "shop.test" in body["error"]

    missing = site.tmp / "missing.crt"
    status, body = site.route(hosts=["shop.test"], tls=site.tls(missing, good_key))
    assert status == 400 and str(missing) in body["error"]

    garbage = site.tmp / "garbage.key"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    status, body = site.route(hosts=["shop.test"], tls=site.tls(good_cert, garbage))
    assert status == 400 and str(garbage) in body["error"] and "not a key" not in body["error"]

    assert site.proxy.ok("GET", "/routes") == before
    status, _, body = https_get(site.tls_port, "shop.test", "/", site.ca.path)
    assert (status, body) == (200, b"v1")


async def test_certificate_replaced_on_disk_is_served_to_new_connections_without_a_failure(
    site: Site,
) -> None:
    cert, key = site.ca.issue(["shop.test"], "shop", serial=1001)
    assert site.route(hosts=["shop.test"], tls=site.tls(cert, key))[0] == 200
    wait_port(site.tls_port)
    assert served_certificate(site.tls_port, "shop.test").serial_number == 1001
    load = await Load().start(
        ("127.0.0.1", site.tls_port),
        path="/",
        host_header="shop.test",
        tls=client_context(site.ca.path),
        concurrency=6,
        max_requests=200_000,
        max_seconds=60,
    )
    # Fresh connections throughout too: each one is a new handshake.
    fresh = Load()
    await fresh.start(
        ("127.0.0.1", site.tls_port),
        path="/",
        host_header="shop.test",
        tls=client_context(site.ca.path),
        concurrency=2,
        max_requests=200_000,
        max_seconds=60,
        headers={"Connection": "close"},
    )
    try:
        await asyncio.sleep(0.5)
        # Replace the pair the way certbot does: new files renamed over the old ones.
        cert_pem, key_pem = site.ca.issue_pem(["shop.test"], serial=1002)
        write_atomic(key, key_pem)
        write_atomic(cert, cert_pem)
        await _until(lambda: served_certificate(site.tls_port, "shop.test").serial_number == 1002)
        # A bad replacement is reported and the pair in service stays.
        write_atomic(cert, b"garbage")
        await _until(lambda: _tls_error(site) is not None)
        assert str(cert) in str(_tls_error(site))
        assert served_certificate(site.tls_port, "shop.test").serial_number == 1002
        await asyncio.sleep(0.5)
    finally:
        result = await load.stop()
        fresh_result = await fresh.stop()
    assert result.failures == [] and fresh_result.failures == [], (
        result.summary(),
        fresh_result.summary(),
    )
    assert result.total > 100 and fresh_result.total > 20
    assert result.statuses.keys() == {200} == fresh_result.statuses.keys()


def _tls_error(site: Site) -> str | None:
    rows = site.proxy.ok("GET", "/tls")["certificates"]
    return next((r["error"] for r in rows if r.get("error")), None)


async def _until(check: Any, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if await asyncio.to_thread(check):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


async def test_upgrade_under_https_load_loses_nothing(site: Site) -> None:
    cert, key = site.ca.issue(["shop.test"], "shop")
    assert site.route(hosts=["shop.test"], tls=site.tls(cert, key))[0] == 200
    wait_port(site.tls_port)
    proxy = site.proxy
    first = serving_pid(proxy)
    kwargs: dict[str, Any] = {
        "path": "/",
        "host_header": "shop.test",
        "tls": client_context(site.ca.path),
        "max_requests": 200_000,
        "max_seconds": 90,
    }
    load = await Load().start(("127.0.0.1", site.tls_port), concurrency=8, **kwargs)
    fresh = await Load().start(
        ("127.0.0.1", site.tls_port), concurrency=2, headers={"Connection": "close"}, **kwargs
    )
    generations = []
    try:
        for _ in range(3):
            await asyncio.sleep(0.5)
            generations.append(await take_over(proxy))
        await asyncio.sleep(1.0)
        result = await load.stop()
        fresh_result = await fresh.stop()
        assert result.failures == [] and fresh_result.failures == [], (
            result.summary(),
            fresh_result.summary(),
        )
        assert result.statuses.keys() == {200} == fresh_result.statuses.keys()
        assert serving_pid(proxy) == generations[-1].pid != first
        assert proxy.proc is not None and proxy.proc.wait(timeout=40) == 0
        for old in generations[:-1]:
            assert wait_exit(old) == 0
        # The new proxy serves the same certificate, with a verified chain.
        status, _, body = https_get(site.tls_port, "shop.test", "/", site.ca.path)
        assert (status, body) == (200, b"v1")
    finally:
        for proc in generations:
            proc.terminate()
        for proc in generations:
            proc.wait(timeout=40)


def test_verified_chain_rejects_a_name_the_certificate_does_not_cover(site: Site) -> None:
    cert, key = site.ca.issue(["shop.test"], "shop")
    assert site.route(hosts=["shop.test"], tls=site.tls(cert, key))[0] == 200
    wait_port(site.tls_port)
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(site.tls_port, "shop.test", "/", site.ca.path, sni="evil.test")


def test_a_listener_cannot_switch_between_plain_and_https_in_place(site: Site) -> None:
    cert, key = site.ca.issue(["shop.test"], "shop")
    plain = {
        "listen": site.proxy.listen,  # bound at start, plain
        "releases": [{"name": "v1", "weight": 100, "targets": [site.backend.addr]}],
    }
    status, body = site.proxy.call("PUT", "/apps/web", {**plain, "tls": site.tls(cert, key)})
    assert status == 400 and "already serves plain HTTP" in body["error"]
    assert site.route(hosts=["shop.test"], tls=site.tls(cert, key))[0] == 200
    wait_port(site.tls_port)
    status, body = site.proxy.call(
        "PUT", "/apps/other", {**plain, "listen": site.tls_listen, "hosts": ["other.test"]}
    )
    assert status == 400 and "needs proxy.tls" in body["error"]
    status, body = site.proxy.call(
        "PUT",
        "/apps/other",
        {**plain, "listen": "127.0.0.1:1", "http_listen": site.tls_listen, "hosts": ["o.test"]},
    )
    assert status == 400 and "HTTPS listener" in body["error"]
    status, _, body = https_get(site.tls_port, "shop.test", "/", site.ca.path)
    assert (status, body) == (200, b"v1")


async def test_websocket_works_over_the_https_listener(site: Site) -> None:
    import aiohttp

    cert, key = site.ca.issue(["shop.test"], "shop")
    assert site.route(hosts=["shop.test"], tls=site.tls(cert, key))[0] == 200
    wait_port(site.tls_port)
    ctx = client_context(site.ca.path)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            # Connect to loopback, send SNI shop.test and verify the chain for that name.
            f"https://127.0.0.1:{site.tls_port}/ws",
            ssl=ctx,
            server_hostname="shop.test",
            headers={"Host": "shop.test"},
        ) as ws,
    ):
        assert (await ws.receive_str()) == "v1"
        await ws.send_str("over tls")
        assert (await ws.receive_str()) == "over tls"
