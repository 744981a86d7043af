"""HTTP/2 to clients over TLS, as users rely on it: curl, h2load and a raw h2 client."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import h2.errors
import pytest

from tests.support.certs import self_signed
from tests.support.h2client import H2Client
from tests.support.procs import Backend, free_port
from tests.support.proxy import ProxyProcess, TlsProxyProcess

BackendFactory = Callable[..., Backend]


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed(tmp_path)


@pytest.fixture
def proxy(cert: tuple[Path, Path]) -> Iterator[ProxyProcess]:
    with TlsProxyProcess(*cert) as p:
        yield p


def curl(
    proxy: ProxyProcess, cert: Path, path: str, *args: str
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            "curl",
            "-sS",
            "--fail-with-body",
            "--http2",
            "--cacert",
            str(cert),
            *args,
            f"https://127.0.0.1:{proxy.port}{path}",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )


def h2load(proxy: ProxyProcess, *args: str, path: str = "/") -> dict[str, int]:
    """Run h2load (bounded by -n or -D); return its request counters."""
    out = subprocess.run(
        ["h2load", *args, f"https://127.0.0.1:{proxy.port}{path}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout
    assert "Application protocol: h2" in out, out
    m = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
    )
    s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert m and s, out
    keys = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
    counts = dict(zip(keys, map(int, m.groups()), strict=True))
    counts.update(zip(("2xx", "3xx", "4xx", "5xx"), map(int, s.groups()), strict=True))
    return counts


def served(proxy: ProxyProcess, release: str) -> int:
    return sum(proxy.release_metrics(release)["requests"].values())


# -- the basics ---------------------------------------------------------------------------


def test_curl_http2_request_reaches_the_app_as_http11_with_translated_headers(
    proxy: ProxyProcess, cert: tuple[Path, Path], backend: Backend
) -> None:
    proxy.route(("v1", 100, [backend.addr]))
    result = curl(proxy, cert[0], "/headers", "-H", "Cookie: a=1", "-H", "Cookie: b=2", "-i")
    assert result.returncode == 0, result.stderr
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/2 200"), head
    names = {ln.split(b":")[0] for ln in head.split(b"\r\n")[1:]}
    assert b"x-backend" in names and b"via" in names
    assert not names & {b"connection", b"keep-alive", b"transfer-encoding"}
    seen = json.loads(body)
    assert seen["host"] == f"127.0.0.1:{proxy.port}"  # :authority became Host
    assert seen["cookie"] == "a=1; b=2"  # crumbs joined into one Cookie header
    assert served(proxy, "v1") == 1


def test_http11_and_websocket_still_work_on_the_tls_listener(
    proxy: ProxyProcess, cert: tuple[Path, Path], backend: Backend
) -> None:
    proxy.route(("v1", 100, [backend.addr]))
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "--http1.1",
            "--cacert",
            str(cert[0]),
            "-w",
            "%{http_version}",
            f"https://127.0.0.1:{proxy.port}/",
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.stdout == b"v11.1", result

    async def websocket() -> list[str]:
        ctx = ssl.create_default_context(cafile=str(cert[0]))
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"wss://127.0.0.1:{proxy.port}/ws", ssl=ctx) as ws,
        ):
            first = await ws.receive_str(timeout=10)
            await ws.send_str("hello")
            return [first, await ws.receive_str(timeout=10)]

    assert asyncio.run(websocket()) == ["v1", "hello"]


def test_many_concurrent_streams_on_one_connection_all_succeed(
    proxy: ProxyProcess, backend_factory: BackendFactory
) -> None:
    a, b = backend_factory("v1"), backend_factory("v1")
    proxy.route(("v1", 100, [a.addr, b.addr]))
    counts = h2load(proxy, "-n", "3000", "-c", "2", "-m", "100")
    assert counts["succeeded"] == 3000 and counts["2xx"] == 3000, counts
    with H2Client(proxy.port) as client:
        sids = [client.request("/slow?s=0.3") for _ in range(100)]
        bodies = Counter(bytes(client.response(sid).body) for sid in sids)
    assert bodies == {b"v1": 100}
    assert served(proxy, "v1") == 3100
    assert proxy.release_metrics("v1")["in_flight"] == 0


def test_ten_megabyte_upload_and_download(
    proxy: ProxyProcess, cert: tuple[Path, Path], backend: Backend, tmp_path: Path
) -> None:
    proxy.route(("v1", 100, [backend.addr]))
    payload = tmp_path / "upload.bin"
    data = bytes(range(256)) * (10 * 4096)
    payload.write_bytes(data)
    up = curl(proxy, cert[0], "/echo", "--data-binary", f"@{payload}")
    assert up.returncode == 0, up.stderr
    assert hashlib.sha256(up.stdout).digest() == hashlib.sha256(data).digest()
    # A body without Content-Length (forwarded chunked), through the raw client too.
    with H2Client(proxy.port) as client:
        sid = client.request("/echo", method="POST", body=data)
        echoed = client.response(sid)
        assert echoed.status == 200 and bytes(echoed.body) == data
    down = curl(proxy, cert[0], "/big?kb=10240")
    assert down.returncode == 0 and len(down.stdout) == 10 * 1024 * 1024


def test_sse_events_reach_the_client_as_they_are_sent(
    proxy: ProxyProcess, backend: Backend
) -> None:
    proxy.route(("v1", 100, [backend.addr]))
    with H2Client(proxy.port) as client:
        sid = client.request("/stream?n=4&interval=0.3")
        stream = client.streams[sid]
        # The first event arrives while the app is still producing the others.
        client.wait(lambda: b"data: 0" in stream.body)
        assert not stream.ended
        client.response(sid)
    assert stream.status == 200 and stream.body.count(b"data: ") == 4
    assert stream.header(
        b"content-type",
    ).startswith(b"text/event-stream")  # type: ignore[union-attr]


def test_response_waits_for_the_clients_window_and_resumes(
    proxy: ProxyProcess, backend: Backend
) -> None:
    """A client that does not read: Baton sends its window's worth, then the rest later."""
    proxy.route(("v1", 100, [backend.addr]))
    with H2Client(proxy.port, auto_ack=False, window=65535) as client:
        sid = client.request("/big?kb=4096")
        stream = client.streams[sid]
        client.wait(lambda: len(stream.body) == 65535)
        with pytest.raises(TimeoutError):
            client.wait(lambda: len(stream.body) > 65535, timeout=1.0)
        client.auto_ack = True
        client.conn.acknowledge_received_data(65535, sid)
        client.flush()
        client.response(sid)
    assert stream.ended and len(stream.body) == 4096 * 1024


def test_unanswered_streams_are_retried_on_another_target(
    proxy: ProxyProcess, backend: Backend
) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: connect refused
    proxy.route(("v1", 100, [dead, backend.addr]))
    with H2Client(proxy.port) as client:
        sids = [client.request("/") for _ in range(20)]
        results = [client.response(sid) for sid in sids]
    assert [(r.status, bytes(r.body)) for r in results] == [(200, b"v1")] * 20
    assert proxy.release_metrics("v1")["retries"] >= 1


def test_streams_in_flight_are_counted_per_target_for_draining(
    proxy: ProxyProcess, backend: Backend
) -> None:
    proxy.route(("v1", 100, [backend.addr]))

    def in_flight() -> int:
        return int(proxy.ok("GET", "/targets")["targets"][backend.addr]["in_flight"])

    with H2Client(proxy.port) as client:
        sids = [client.request("/slow?s=1") for _ in range(5)]
        client.wait(lambda: in_flight() == 5)
        for sid in sids:
            assert client.response(sid).status == 200
    assert in_flight() == 0


# -- bad input ------------------------------------------------------------------------------


def test_malformed_stream_is_reset_and_the_connection_keeps_serving(
    proxy: ProxyProcess, backend: Backend
) -> None:
    proxy.route(("v1", 100, [backend.addr]))
    with H2Client(proxy.port) as client:
        client.conn.config.validate_outbound_headers = False
        client.conn.config.normalize_outbound_headers = False
        bad = client.request("/", headers=[("connection", "keep-alive")])
        assert client.response(bad).reset == h2.errors.ErrorCodes.PROTOCOL_ERROR
        smuggle = client.request("/", headers=[("x-a", "1\r\nX-Evil: 1")])
        assert client.response(smuggle).reset == h2.errors.ErrorCodes.PROTOCOL_ERROR
        ok = client.response(client.request("/"))
        assert ok.status == 200 and bytes(ok.body) == b"v1"


def test_stream_over_the_concurrency_limit_is_refused_not_the_connection(
    proxy: ProxyProcess, backend: Backend
) -> None:
    proxy.route(("v1", 100, [backend.addr]))
    with H2Client(proxy.port, ignore_limits=True) as client:
        client.wait(lambda: client.conn.remote_settings.max_concurrent_streams == 100)
        sids = [client.request("/slow?s=0.5") for _ in range(101)]
        results = [client.response(sid) for sid in sids]
        assert [r.status for r in results[:100]] == [200] * 100
        assert results[100].reset == h2.errors.ErrorCodes.REFUSED_STREAM
        assert client.response(client.request("/")).status == 200


def test_header_block_over_the_limit_ends_only_that_connection(
    proxy: ProxyProcess, backend: Backend
) -> None:
    proxy.route(("v1", 100, [backend.addr]))
    with H2Client(proxy.port) as client:
        client.wait(lambda: client.conn.remote_settings.max_header_list_size == 65536)
        client.request("/", headers=[("x-big", "a" * 70_000)])
        client.wait(lambda: client.goaway is not None)
        assert client.goaway is not None
        assert client.goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    with H2Client(proxy.port) as client:
        assert client.response(client.request("/")).status == 200


def test_garbage_frames_end_the_connection_with_goaway_not_a_crash(
    proxy: ProxyProcess, backend: Backend
) -> None:
    proxy.route(("v1", 100, [backend.addr]))
    with H2Client(proxy.port) as client:
        client.response(client.request("/"))
        client.sock.sendall(b"\x00\x00\x04\x09\x00\x00\x00\x00\x01garbage-frames" * 4)
        client.wait(lambda: client.goaway is not None or client.closed)
    with H2Client(proxy.port) as client:
        assert client.response(client.request("/")).status == 200


def test_unknown_host_gets_404_on_its_stream(proxy: ProxyProcess, backend: Backend) -> None:
    proxy.route(("v1", 100, [backend.addr]), hosts=["app.test"])
    with H2Client(proxy.port) as client:
        missing = client.response(client.request("/", authority="other.test"))
        found = client.response(client.request("/", authority="app.test"))
    assert missing.status == 404 and b"no route" in missing.body
    assert found.status == 200


# -- releases ---------------------------------------------------------------------------------


def test_canary_split_with_cookie_stickiness_per_stream(
    proxy: ProxyProcess, backend_factory: BackendFactory
) -> None:
    v1, v2 = backend_factory("v1"), backend_factory("v2")
    secret = "pin-secret-0123456789"
    proxy.route(
        ("v1", 50, [v1.addr]), ("v2", 50, [v2.addr]), stickiness="cookie", release_secret=secret
    )
    with H2Client(proxy.port) as client:
        fresh = [client.response(client.request("/")) for _ in range(60)]
        seen = Counter(bytes(s.body) for s in fresh)
        assert seen[b"v1"] > 5 and seen[b"v2"] > 5, seen
        cookie = fresh[0].header(b"set-cookie")
        assert cookie is not None and cookie.startswith(b"baton_release=")
        kept = cookie.split(b";")[0].decode()
        sticky = Counter(
            bytes(client.response(client.request("/", headers=[("cookie", kept)])).body)
            for _ in range(30)
        )
        pin = [("x-baton-release", "v2"), ("x-baton-secret", secret)]
        pinned = Counter(
            bytes(client.response(client.request("/", headers=pin)).body) for _ in range(10)
        )
    assert sticky == {bytes(fresh[0].body): 30}
    assert pinned == {b"v2": 10}
    assert served(proxy, "v1") + served(proxy, "v2") == 100


async def test_blue_green_switch_under_h2load_loses_nothing(
    proxy: ProxyProcess, backend_factory: BackendFactory
) -> None:
    v1, v2 = backend_factory("v1"), backend_factory("v2")
    proxy.route(("v1", 100, [v1.addr]))
    run = asyncio.create_task(
        asyncio.to_thread(h2load, proxy, "-D", "4", "-c", "4", "-m", "8", "--warm-up-time", "0")
    )
    await asyncio.sleep(1.5)
    await asyncio.to_thread(proxy.route, ("v2", 100, [v2.addr]))
    counts = await run
    assert counts["failed"] == 0 and counts["errored"] == 0 and counts["timeout"] == 0, counts
    assert counts["succeeded"] == counts["done"] == counts["2xx"] > 100, counts
    assert served(proxy, "v2") > 0
    assert proxy.ok("GET", "/targets")["targets"].get(v1.addr, {}).get("in_flight", 0) == 0


def test_proxy_stop_sends_goaway_and_finishes_the_stream_in_flight(
    proxy: ProxyProcess, backend: Backend
) -> None:
    proxy.route(("v1", 100, [backend.addr]))
    client = subprocess.Popen(
        ["nghttp", "-v", f"https://127.0.0.1:{proxy.port}/slow?s=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while proxy.release_metrics("v1").get("in_flight") != 1:
            assert time.monotonic() < deadline and client.poll() is None
            time.sleep(0.02)
        proxy.signal(signal.SIGTERM)
        out, _ = client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
    assert "recv GOAWAY frame" in out and "last_stream_id=13" in out, out
    assert ":status: 200" in out and "END_STREAM" in out, out
    assert proxy.proc is not None and proxy.proc.wait(timeout=30) == 0  # a clean exit


def test_takeover_under_http2_load_loses_nothing(
    proxy: ProxyProcess, cert: tuple[Path, Path], backend: Backend
) -> None:
    """curl keeps multiplexing requests while a new proxy takes the TLS listener over."""
    proxy.route(("v1", 100, [backend.addr]))
    url = f"https://127.0.0.1:{proxy.port}/"
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    errors: list[str] = []

    def load() -> None:
        while not stop.is_set():
            args = ["curl", "-sS", "--http2", "--cacert", str(cert[0]), "--parallel"]
            args += ["--parallel-max", "8", "-w", "%{http_code} %{http_version}\\n"]
            for _ in range(40):
                args += [url, "-o", "/dev/null"]
            done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
            outcomes.update(done.stdout.split("\n")[:-1])
            if done.returncode != 0:
                errors.append(done.stderr)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        successor = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "baton.proxy",
                "--admin",
                proxy.admin,
                "--takeover",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 30
            while proxy.ok("GET", "/health")["pid"] != successor.pid:
                assert time.monotonic() < deadline and successor.poll() is None
                time.sleep(0.05)
            assert proxy.proc is not None and proxy.proc.wait(timeout=40) == 0  # old one retired
            while sum(proxy.release_metrics("v1")["requests"].values()) < 100:
                assert time.monotonic() < deadline + 30
                time.sleep(0.05)
        finally:
            stop.set()
            loader.join(timeout=90)
            successor.terminate()
            successor.wait(timeout=40)
    finally:
        stop.set()
    assert errors == []
    assert set(outcomes) == {"200 2"}, outcomes
    assert outcomes["200 2"] > 200
