"""Certificates from a real ACME server (pebble, validation ON): HTTP-01 answered by the
proxy's plain listener, renewal under HTTPS load, on-demand issuance behind an ask URL,
and failures that leave the working certificate in place."""

from __future__ import annotations

import asyncio
import http.server
import os
import shutil
import stat
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from baton.deploy.proxyclient import ProxyClient
from baton.server.certs import CertManager
from tests.support.certs import client_context, names_of, served_certificate
from tests.support.load import Load
from tests.support.pebble import Pebble, available
from tests.support.procs import Backend, free_port, wait_port
from tests.support.proxy import ProxyProcess

pytestmark = pytest.mark.skipif(
    not available() and not os.environ.get("CI"), reason="pebble is not installed"
)


class AcmeSite:
    def __init__(self, tmp: Path, proxy: ProxyProcess, backend: Backend, pebble: Pebble) -> None:
        self.tmp = tmp
        self.proxy = proxy
        self.backend = backend
        self.pebble = pebble
        self.tls_port = free_port()
        self.client = ProxyClient(proxy.admin)
        self.apps: dict[str, tuple[list[str], dict[str, Any]]] = {}
        self.manager = CertManager(tmp / "state", self.client, lambda: list(self.apps.values()))
        self.root = tmp / "pebble-root.pem"

    def acme(self, **more: Any) -> dict[str, Any]:
        return {
            "acme": {
                "email": "ops@example.com",
                "directory": self.pebble.directory,
                "ca_bundle": self.pebble.ca_bundle,
                **more,
            }
        }

    def route(
        self, app: str, hosts: list[str], tls: dict[str, Any], on_demand: bool = False
    ) -> None:
        self.apps[app] = (hosts, tls)
        self.proxy.ok(
            "PUT",
            f"/apps/{app}",
            {
                "listen": f"127.0.0.1:{self.tls_port}",
                "http_listen": self.proxy.listen,
                "hosts": hosts,
                "releases": [{"name": "v1", "weight": 100, "targets": [self.backend.addr]}],
                "tls": {"acme_dir": str(self.manager.acme_dir), "on_demand": on_demand},
            },
        )

    def fetch_root(self) -> Path:
        self.root.write_bytes(self.pebble.root_pem())
        return self.root

    def curl(self, host: str) -> subprocess.CompletedProcess[str]:
        """curl with a verified chain against pebble's root, the name resolved to loopback."""
        return subprocess.run(
            [
                "curl",
                "-sS",
                "--max-time",
                "10",
                "--cacert",
                str(self.root),
                "--resolve",
                f"{host}:{self.tls_port}:127.0.0.1",
                f"https://{host}:{self.tls_port}/",
            ],
            capture_output=True,
            text=True,
            check=False,
        )


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[AcmeSite]:
    with Backend("v1") as backend, ProxyProcess() as proxy, Pebble(tmp_path, proxy.port) as pebble:
        s = AcmeSite(tmp_path, proxy, backend, pebble)
        try:
            yield s
        finally:
            await s.client.close()


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@needs_curl
async def test_fresh_app_gets_a_certificate_and_curl_verifies_the_chain(site: AcmeSite) -> None:
    site.route("shop", ["shop.test", "www.shop.test"], site.acme())
    await site.manager.check()
    assert site.manager.status()["shop.test"]["error"] is None, site.manager.status()
    wait_port(site.tls_port)
    site.fetch_root()
    for host in ("shop.test", "www.shop.test"):
        done = await asyncio.to_thread(site.curl, host)
        assert done.returncode == 0 and done.stdout == "v1", done.stderr
    # The account key and the pair are private to Baton.
    state = site.tmp / "state" / "acme"
    for path in (state / "account.json", *(state / "certs" / "shop.test").iterdir()):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # Plain HTTP now redirects to it.
    rows = site.proxy.ok("GET", "/tls")["certificates"]
    row = next(r for r in rows if r["host"] == "shop.test")
    assert row["source"] == "acme" and "Pebble" in row["issuer"]


async def test_forced_renewal_under_https_load_loses_nothing(site: AcmeSite) -> None:
    site.route("shop", ["shop.test"], site.acme())
    await site.manager.check()
    wait_port(site.tls_port)
    root = site.fetch_root()
    first = served_certificate(site.tls_port, "shop.test").serial_number
    kwargs: dict[str, Any] = {
        "path": "/",
        "host_header": "shop.test",
        "tls": client_context(root),
        "max_requests": 200_000,
        "max_seconds": 90,
    }
    load = await Load().start(("127.0.0.1", site.tls_port), concurrency=6, **kwargs)
    fresh = await Load().start(
        ("127.0.0.1", site.tls_port), concurrency=2, headers={"Connection": "close"}, **kwargs
    )
    try:
        await asyncio.sleep(0.5)
        await site.manager.check(force=True)
        await asyncio.sleep(0.5)
        renewed = served_certificate(site.tls_port, "shop.test").serial_number
    finally:
        result = await load.stop()
        fresh_result = await fresh.stop()
    assert renewed != first
    assert site.manager.status()["shop.test"]["error"] is None
    assert result.failures == [] and fresh_result.failures == [], (
        result.summary(),
        fresh_result.summary(),
    )
    assert result.statuses.keys() == {200} == fresh_result.statuses.keys()
    assert result.total > 50 and fresh_result.total > 10


async def test_failed_renewal_keeps_the_working_certificate_and_says_why(site: AcmeSite) -> None:
    site.route("shop", ["shop.test"], site.acme())
    await site.manager.check()
    wait_port(site.tls_port)
    serving = served_certificate(site.tls_port, "shop.test").serial_number
    dead = f"https://127.0.0.1:{free_port()}/dir"
    # Due for renewal (more than pebble's validity left to wait), from a dead directory.
    site.route("shop", ["shop.test"], site.acme(directory=dead, renew_before=20 * 365 * 86400))
    await site.manager.check()
    error = site.manager.status()["shop.test"]["error"]
    assert error is not None and dead in error and "unreachable" in error
    assert served_certificate(site.tls_port, "shop.test").serial_number == serving
    # Back-off: the next round does not hammer the server again at once.
    assert site.manager.names["shop.test"].failures == 1
    await site.manager.check()
    assert site.manager.names["shop.test"].failures == 1
    assert served_certificate(site.tls_port, "shop.test").serial_number == serving


class _Ask(http.server.BaseHTTPRequestHandler):
    allowed = {"ok.apps.test"}
    asked: list[str] = []

    def do_GET(self) -> None:
        domain = self.path.partition("domain=")[2]
        self.asked.append(domain)
        self.send_response(200 if domain in self.allowed else 403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def ask_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ask)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/ask"
    finally:
        server.shutdown()
        server.server_close()


@needs_curl
async def test_on_demand_issuance_follows_the_ask_url(site: AcmeSite, ask_url: str) -> None:
    site.route("apps", ["*.apps.test"], {**site.acme(), "on_demand_ask": ask_url}, on_demand=True)
    wait_port(site.tls_port)
    site.fetch_root()
    # A client asks for two names; neither has a certificate yet (the default answers).
    for name in ("ok.apps.test", "no.apps.test"):
        assert names_of(served_certificate(site.tls_port, name)) != [name]
    assert set(site.proxy.ok("GET", "/tls")["wanted"]) == {"ok.apps.test", "no.apps.test"}
    await site.manager.check()
    assert set(_Ask.asked) >= {"ok.apps.test", "no.apps.test"}
    status = site.manager.status()
    assert status["ok.apps.test"]["error"] is None, status
    assert "refused by the ask URL" in str(status["no.apps.test"]["error"])
    done = await asyncio.to_thread(site.curl, "ok.apps.test")
    assert done.returncode == 0 and done.stdout == "v1", done.stderr
    assert names_of(served_certificate(site.tls_port, "no.apps.test")) != ["no.apps.test"]
    assert not (site.manager.acme_dir / "no.apps.test").exists()
