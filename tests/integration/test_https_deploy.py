"""HTTPS end to end: `baton up`, `baton deploy`, `baton upgrade` and `baton status` with
``proxy.tls`` from files and from a real ACME server (pebble)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.certs import TestCA, client_context
from tests.support.host import Host, assert_no_failures
from tests.support.load import Load
from tests.support.pebble import Pebble, available
from tests.support.procs import free_port

pytestmark = pytest.mark.timeout(300)


class HttpsHost(Host):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.http_port = free_port()

    def https_config(self, tls: dict[str, Any], **extra: Any) -> Path:
        return self.config(
            {
                "proxy": {
                    "hosts": ["shop.test"],
                    "http_listen": f"127.0.0.1:{self.http_port}",
                    "tls": tls,
                },
                **extra,
            }
        )


@pytest.fixture
async def https_host(tmp_path: Path) -> AsyncIterator[HttpsHost]:
    h = HttpsHost(tmp_path)
    h.config()
    try:
        up = await h.baton("up", "--detach", timeout=60)
        assert up.rc == 0, up
        yield h
    finally:
        await h.teardown()


def curl(host: HttpsHost, ca: Path, path: str = "/") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            str(ca),
            "--resolve",
            f"shop.test:{host.port}:127.0.0.1",
            f"https://shop.test:{host.port}{path}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )


async def test_https_deploys_and_an_upgrade_under_load_serve_every_request(
    https_host: HttpsHost,
) -> None:
    host = https_host
    ca = TestCA(host.root)
    cert, key = ca.issue(["shop.test"], "shop")
    host.https_config({"certificate": str(cert), "key": str(key), "hsts": "1y"})
    first = await host.deploy("--version", "v1")
    assert first.rc == 0, first
    load = await Load().start(
        ("127.0.0.1", host.port),
        path="/",
        host_header="shop.test",
        tls=client_context(ca.path),
        concurrency=6,
        max_requests=2_000_000,
        max_seconds=150,
        delay=0.002,
    )
    try:
        second = await host.deploy("--version", "v2", "--env", "APP_VERSION=v2")
        assert second.rc == 0, second
        upgrade = await host.baton("upgrade", "--timeout", "60s")
        assert upgrade.rc == 0, upgrade
        await asyncio.sleep(0.5)
    finally:
        result = await load.stop()
    assert_no_failures(result)
    assert {s.value.strip() for s in result.timeline[-20:]} == {"v2"}
    # Plain HTTP redirects; the status names the certificate.
    reader, writer = await asyncio.open_connection("127.0.0.1", host.http_port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 308")
    assert f"Location: https://shop.test:{host.port}/x".encode() in raw
    status = await host.status()
    row = next(r for r in status["certificates"] if r["host"] == "shop.test")
    assert row["source"] == "file" and row["path"] == str(cert) and not row["error"]
    text = await host.baton("status")
    assert "certificates" in text.out and "Baton Test CA" in text.out


@pytest.mark.skipif(
    not (available() and shutil.which("curl")), reason="pebble or curl is not installed"
)
async def test_an_acme_app_gets_its_certificate_from_pebble_through_the_daemon(
    https_host: HttpsHost,
) -> None:
    host = https_host
    with Pebble(host.root, host.http_port) as pebble:
        host.https_config(
            {
                "acme": {
                    "email": "ops@example.com",
                    "directory": pebble.directory,
                    "ca_bundle": pebble.ca_bundle,
                }
            }
        )
        deployed = await host.deploy("--version", "v1")
        assert deployed.rc == 0, deployed
        root = host.root / "pebble-root.pem"
        root.write_bytes(pebble.root_pem())
        loop = asyncio.get_running_loop()
        end = loop.time() + 60
        done = await asyncio.to_thread(curl, host, root)
        while done.returncode != 0 and loop.time() < end:
            await asyncio.sleep(0.5)
            done = await asyncio.to_thread(curl, host, root)
        assert done.returncode == 0 and done.stdout.strip() == "v1", done.stderr
        status = await host.status()
        row = next(r for r in status["certificates"] if r["host"] == "shop.test")
        assert row["source"] == "acme" and "Pebble" in row["issuer"] and not row["error"]
        assert row["last_renewal"]


async def test_a_deploy_with_a_certificate_for_other_names_changes_nothing(
    https_host: HttpsHost,
) -> None:
    host = https_host
    ca = TestCA(host.root)
    cert, key = ca.issue(["shop.test"], "shop")
    other_cert, other_key = ca.issue(["other.test"], "other")
    host.https_config({"certificate": str(cert), "key": str(key)})
    assert (await host.deploy("--version", "v1")).rc == 0
    host.https_config({"certificate": str(other_cert), "key": str(other_key)})
    bad = await host.deploy("--version", "v2", "--env", "APP_VERSION=v2")
    assert bad.rc != 0, bad
    assert str(other_cert) in bad.out + bad.err and "shop.test" in bad.out + bad.err, bad
    done = await asyncio.to_thread(curl, host, ca.path)
    assert done.returncode == 0 and done.stdout.strip() == "v1", done.stderr


async def test_a_restarted_proxy_serves_https_again_with_the_same_certificate(
    https_host: HttpsHost,
) -> None:
    host = https_host
    ca = TestCA(host.root)
    cert, key = ca.issue(["shop.test"], "shop")
    host.https_config({"certificate": str(cert), "key": str(key)})
    assert (await host.deploy("--version", "v1")).rc == 0
    old = host.proxy_pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    loop = asyncio.get_running_loop()
    end = loop.time() + 30
    done = await asyncio.to_thread(curl, host, ca.path)
    while (done.returncode != 0 or host.proxy_pid in (None, old)) and loop.time() < end:
        await asyncio.sleep(0.2)
        done = await asyncio.to_thread(curl, host, ca.path)
    assert done.returncode == 0 and done.stdout.strip() == "v1", done.stderr
    assert host.proxy_pid not in (None, old)
