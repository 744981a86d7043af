"""What a monitoring stack reads from a running daemon: ``--metrics`` scraped over HTTP and
parsed with prometheus_client's parser, and ``--log-format json`` lines, each of a
deployment's lines carrying its id and version."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.host import Host, assert_no_failures, start_load
from tests.support.procs import free_port

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[Host]:
    h = Host(tmp_path)
    h.config()
    h.metrics_port = free_port()  # type: ignore[attr-defined]
    try:
        up = await h.baton(
            "up",
            "--detach",
            "--metrics",
            f"127.0.0.1:{h.metrics_port}",  # type: ignore[attr-defined]
            "--log-format",
            "json",
            timeout=60,
        )
        assert up.rc == 0, up
        yield h
    finally:
        await h.teardown()


def scrape(
    port: int, path: str = "/metrics"
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


async def test_metrics_endpoint_serves_deployments_and_the_proxys_per_release_counts(
    host: Host,
) -> None:
    port: int = host.metrics_port  # type: ignore[attr-defined]
    assert (await host.deploy("--version", "v1")).rc == 0
    load = await start_load(host, seconds=60)
    result = await host.deploy("--version", "v2", "--env", "APP_VERSION=v2")
    outcome = await load.stop()
    assert result.rc == 0, result
    assert_no_failures(outcome)
    failed = await host.deploy("--version", "v3", "--command", "exit 3")
    assert failed.rc == 1, failed

    found = scrape(port)
    deploys = {
        labels: value
        for (name, labels), value in found.items()
        if name == "baton_deployments_total"
    }
    assert deploys[(("app", "shop"), ("kind", "deploy"), ("outcome", "succeeded"))] == 2
    assert deploys[(("app", "shop"), ("kind", "deploy"), ("outcome", "failed"))] == 1
    switch = (("app", "shop"), ("step", "switch"))
    assert found[("baton_deploy_step_duration_seconds_count", switch)] == 2
    # The proxy's per-release metrics, next to the control plane's, in the same scrape.
    # (v1 is gone from the proxy's metrics once it stopped; v2 is live.)
    served = sum(
        v
        for (name, labels), v in found.items()
        if name == "baton_requests_total" and ("release", "v2") in labels
    )
    assert served >= outcome.bodies["v2\n"] > 0
    assert ("baton_proxy_restarts_total", ()) in found
    # Each half alone too.
    assert not any(n == "baton_requests_total" for n, _ in scrape(port, "/metrics/control"))
    assert any(n == "baton_requests_total" for n, _ in scrape(port, "/metrics/proxy"))

    # JSON logs: every line parses; the deployment's lines carry its id and version.
    lines = [
        json.loads(line)
        for line in (host.state_dir / "logs" / "server.log").read_text().splitlines()
        if line.startswith("{")
    ]
    history = json.loads((await host.baton("history", "--json")).out)["deployments"]
    v2 = next(d for d in history if d["version"] == "v2")
    mine = [line for line in lines if line.get("deployment_id") == v2["id"]]
    assert {line["version"] for line in mine} == {"v2"}, mine
    assert {"step", "result"} <= {line.get("event") for line in mine}
    assert any("switch" in line["message"] for line in mine)


async def test_metrics_off_loopback_without_a_token_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    h = Host(tmp_path)
    result = await h.baton("up", "--detach", "--metrics", f"0.0.0.0:{free_port()}")
    assert result.rc == 2, result
    assert "BATON_METRICS_TOKEN" in result.err
    assert h.server_pid is None
    bad = await h.baton("up", "--detach", "--dashboard", "nowhere")
    assert bad.rc == 2 and "--dashboard: expected HOST:PORT" in bad.err, bad


async def test_the_proxy_access_log_carries_release_and_request_id(tmp_path: Path) -> None:
    h = Host(tmp_path)
    h.config()
    access = tmp_path / "access.log"
    try:
        up = await h.baton("up", "--detach", "--access-log", str(access), timeout=60)
        assert up.rc == 0, up
        assert (await h.deploy("--version", "v1")).rc == 0
        ids = [f"test-{n}" for n in range(20)]
        for rid in ids:
            reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
            writer.write(
                f"GET /?token=secret HTTP/1.1\r\nHost: x\r\nX-Request-Id: {rid}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200")
            writer.close()
        deadline = time.monotonic() + 20
        lines: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            if access.exists():
                lines = [json.loads(line) for line in access.read_text().splitlines()]
                if {line["request_id"] for line in lines} >= set(ids):
                    break
            await asyncio.sleep(0.1)
        mine = [line for line in lines if line["request_id"] in ids]
        assert len(mine) == 20, lines
        for line in mine:
            assert (line["app"], line["release"], line["status"]) == ("shop", "v1", 200)
            assert line["path"] == "/?..." and line["method"] == "GET"
        assert "secret" not in access.read_text()  # query strings (tokens) are not logged
    finally:
        await h.teardown()


async def test_the_dashboard_serves_tls_with_its_certificate_and_wants_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ssl
    import subprocess
    import urllib.error

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    token = "tls-dashboard-token-0123456789"
    monkeypatch.setenv("BATON_DASHBOARD_TOKEN", token)
    h = Host(tmp_path)
    h.config()
    port = free_port()
    try:
        up = await h.baton(
            "up", "--detach", "--dashboard", f"127.0.0.1:{port}",
            "--dashboard-cert", str(cert), "--dashboard-key", str(key), timeout=60,
        )  # fmt: skip
        assert up.rc == 0, up
        context = ssl.create_default_context(cafile=str(cert))

        def get(token_sent: str | None) -> int:
            request = urllib.request.Request(f"https://127.0.0.1:{port}/api/state")
            if token_sent:
                request.add_header("Authorization", f"Bearer {token_sent}")
            try:
                with urllib.request.urlopen(request, timeout=10, context=context) as r:
                    return int(r.status)
            except urllib.error.HTTPError as exc:
                return exc.code

        assert await asyncio.to_thread(get, None) == 401
        assert await asyncio.to_thread(get, "not-the-token-not-the-token") == 401
        assert await asyncio.to_thread(get, token) == 200
    finally:
        await h.teardown()
