"""``baton proxy --workers 2``: two worker processes behave as one proxy to clients and to
the control plane (one admin API, tables acknowledged by every worker, summed counters)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from baton.runtime.process import pid_alive
from tests.support.certs import client_context, self_signed
from tests.support.h1 import parse_status
from tests.support.host import Host, assert_no_failures, served_after, start_load
from tests.support.load import Load
from tests.support.procs import Backend, ManagedProcess, free_port
from tests.support.proxy import ProxyProcess, admin_call

WORKERS = ("--workers", "2")


@pytest.fixture
def two_workers() -> Iterator[tuple[ProxyProcess, Backend, Backend]]:
    with Backend("v1") as v1, Backend("v2") as v2, ProxyProcess(*WORKERS) as proxy:
        proxy.route(("v1", 100, [v1.addr]))
        yield proxy, v1, v2


async def fetch(port: int, path: str = "/") -> tuple[int, bytes]:
    """One request on a fresh connection (each may meet either worker)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return parse_status(data), data.partition(b"\r\n\r\n")[2]


async def worker_prefixes(port: int, *, want: int = 2, limit: int = 600) -> Counter[str]:
    """Which workers answered (the request id's per-process prefix), over fresh connections
    sent 8 at a time until ``want`` workers were seen (at most ``limit`` requests)."""
    seen: Counter[str] = Counter()
    sent = 0
    while len(seen) < want and sent < limit:
        answers = await asyncio.gather(*(fetch(port, "/headers") for _ in range(8)))
        sent += 8
        for status, body in answers:
            assert status == 200
            seen[json.loads(body)["x-request-id"].split("-")[0]] += 1
    return seen


def health(proxy: ProxyProcess) -> dict[str, Any]:
    result: dict[str, Any] = proxy.ok("GET", "/health")
    return result


def answered_2xx(proxy: ProxyProcess, release: str = "v1") -> int:
    return int(proxy.release_metrics(release).get("requests", {}).get("2xx", 0))


async def test_two_workers_serve_under_load_and_both_take_requests(
    two_workers: tuple[ProxyProcess, Backend, Backend],
) -> None:
    proxy, _, _ = two_workers
    pids = {w["pid"] for w in health(proxy)["workers"]}
    assert len(pids) == 2 and proxy.pid not in pids
    load = await Load().start(proxy.url, concurrency=16, max_requests=100_000, max_seconds=30)
    seen = await worker_prefixes(proxy.port)
    await asyncio.sleep(1.0)
    result = await load.stop()
    assert len(seen) == 2, seen
    assert result.failures == [], result.summary()
    assert result.total > 100 and result.bodies.keys() == {"v1"}


async def test_counters_are_summed_over_the_workers(
    two_workers: tuple[ProxyProcess, Backend, Backend],
) -> None:
    proxy, v1, _ = two_workers
    seen = await worker_prefixes(proxy.port)
    assert len(seen) == 2, seen
    total = sum(seen.values())
    # The canary judge and verification read these: the whole traffic, not one worker's.
    assert answered_2xx(proxy) == total
    text = proxy.ok("GET", "/metrics")
    assert f'baton_requests_total{{app="web",release="v1",class="2xx"}} {total}' in text
    assert f'baton_request_duration_seconds_count{{app="web",release="v1"}} {total}' in text
    assert (
        f'baton_request_duration_seconds_bucket{{app="web",release="v1",le="+Inf"}} {total}' in text
    )
    targets = proxy.ok("GET", "/targets")["targets"]
    assert targets[v1.addr]["in_flight"] == 0 and targets[v1.addr]["healthy"] is True


async def test_switch_with_two_workers_loses_nothing_and_old_release_gets_nothing_after_ack(
    two_workers: tuple[ProxyProcess, Backend, Backend],
) -> None:
    proxy, v1, v2 = two_workers
    load = await Load().start(proxy.url, concurrency=16, max_requests=200_000, max_seconds=60)
    await worker_prefixes(proxy.port)  # both workers busy
    await asyncio.sleep(0.5)
    generation = await asyncio.to_thread(proxy.route, ("v2", 100, [v2.addr]))
    acked = time.monotonic()  # every worker acknowledged the new table
    assert [w["generation"] for w in health(proxy)["workers"]] == [generation] * 2
    drained = await asyncio.to_thread(
        proxy.ok, "POST", "/drain", {"targets": [v1.addr], "wait": 10}
    )
    assert drained["drained"] is True, drained
    await asyncio.sleep(1.0)
    result = await load.stop()
    assert result.failures == [], result.summary()
    assert served_after(result, acked) == {"v2"}
    assert result.bodies["v1"] > 0 and result.bodies["v2"] > 0


async def test_a_killed_worker_is_replaced_and_totals_never_go_backwards(
    two_workers: tuple[ProxyProcess, Backend, Backend],
) -> None:
    proxy, _, v2 = two_workers
    load = await Load().start(
        proxy.url, concurrency=8, max_requests=200_000, max_seconds=60, delay=0.002
    )
    await worker_prefixes(proxy.port)
    before = health(proxy)["workers"]
    totals = [answered_2xx(proxy)]
    os.kill(before[0]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    replaced: dict[str, Any] = {}
    while time.monotonic() < deadline:
        totals.append(answered_2xx(proxy))
        workers = health(proxy)["workers"]
        replaced = next((w for w in workers if w["index"] == before[0]["index"]), {})
        if replaced and replaced["pid"] not in (None, before[0]["pid"]):
            break
        await asyncio.sleep(0.05)
    assert replaced and replaced["pid"] != before[0]["pid"] and replaced["restarts"] == 1
    mark = time.monotonic()
    # The replacement carries the current table: a switch reaches it like any worker.
    generation = await asyncio.to_thread(proxy.route, ("v2", 100, [v2.addr]))
    switched = time.monotonic()
    assert {w["generation"] for w in health(proxy)["workers"]} == {generation}
    after = []
    for _ in range(20):
        after.append(answered_2xx(proxy, "v2"))
        await asyncio.sleep(0.05)
    seen = await worker_prefixes(proxy.port)
    assert len(seen) == 2, seen  # the replacement accepts
    result = await load.stop()
    # The judge never sees a total shrink: not when a worker dies, not when it comes back.
    assert totals == sorted(totals) and totals[-1] > totals[0], totals
    assert after == sorted(after) and after[-1] > 0, after
    # Only connections the killed worker held can have failed; nothing after it was replaced.
    assert len(result.failures) <= 8, result.summary()
    assert all(s.ok for s in result.timeline if s.sent >= mark), result.summary()
    assert served_after(result, switched) == {"v2"}


def start_successor(proxy: ProxyProcess, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "baton.proxy", "--admin", proxy.admin, "--takeover", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


async def probe(port: int, stop: asyncio.Event, statuses: list[int]) -> None:
    """Fresh connections, ~100 a second, until ``stop`` (at most 30,000)."""
    while not stop.is_set() and len(statuses) < 30_000:
        try:
            statuses.append((await fetch(port))[0])
        except (OSError, TimeoutError, ValueError):
            statuses.append(-1)
        await asyncio.sleep(0.01)


async def test_takeover_of_two_workers_under_load_fails_no_request(
    two_workers: tuple[ProxyProcess, Backend, Backend],
) -> None:
    proxy, _, _ = two_workers
    old = health(proxy)
    load = await Load().start(proxy.url, concurrency=16, max_requests=300_000, max_seconds=90)
    probe_stop, probed = asyncio.Event(), list[int]()
    prober = asyncio.create_task(probe(proxy.port, probe_stop, probed))
    successors: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(2):  # workers -> workers, twice
            await asyncio.sleep(0.5)
            new = start_successor(proxy, *WORKERS)
            successors.append(new)
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                status, answer = await asyncio.to_thread(
                    admin_call, proxy.admin, "GET", "/health", timeout=5
                )
                if status == 200 and answer["pid"] == new.pid:
                    break
                assert new.poll() is None, new.stderr.read() if new.stderr else ""
                await asyncio.sleep(0.05)
            assert len(health(proxy)["workers"]) == 2
        await asyncio.sleep(1.0)
        probe_stop.set()
        await prober
        result = await load.stop()
        assert result.failures == [], result.summary()
        assert len(probed) > 50 and set(probed) == {200}, Counter(probed)
        # The retired supervisors (and their workers) exit by themselves, cleanly.
        assert proxy.proc is not None and proxy.proc.wait(timeout=60) == 0
        assert successors[0].wait(timeout=60) == 0
        for w in old["workers"]:
            with pytest.raises(ProcessLookupError):
                os.kill(w["pid"], 0)
        assert proxy.ok("GET", "/routes")["apps"]["web"]["releases"][0]["name"] == "v1"
    finally:
        probe_stop.set()
        for proc in successors:
            proc.terminate()
        for proc in successors:
            proc.wait(timeout=60)


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "999"])
def test_bad_worker_count_is_refused_with_a_clear_error(value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "baton.proxy", "--admin", "/nonexistent/x.sock", "--workers", value],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--workers" in result.stderr and "'auto'" in result.stderr, result.stderr


async def proxy_workers(host: Host, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Wait until the host's proxy runs ``count`` workers (the daemon acts on proxy.workers)."""
    sock = str(host.state_dir / "proxy.sock")
    deadline = time.monotonic() + timeout
    answer: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            status, answer = await asyncio.to_thread(admin_call, sock, "GET", "/health", timeout=5)
            workers: list[dict[str, Any]] = answer.get("workers", []) if status == 200 else []
            if len(workers) == count and all(
                w["generation"] == answer["generation"] for w in workers
            ):
                return workers
        await asyncio.sleep(0.1)
    raise AssertionError(f"the proxy never ran {count} workers: {answer}")


@pytest.mark.timeout(300)
async def test_baton_upgrade_with_two_workers_under_load_fails_no_request(host: Host) -> None:
    host.config({"proxy": {"workers": 2}})
    assert (await host.deploy("--version", "v1")).rc == 0
    first = await proxy_workers(host, 2)  # the daemon gave its proxy two workers, hitlessly
    load = await start_load(host)
    retired: list[int] = []
    for _ in range(3):
        before = host.proxy_pid
        result = await host.baton("upgrade")
        assert result.rc == 0, result
        assert before is not None and host.proxy_pid not in (None, before)
        retired.append(before)
        await proxy_workers(host, 2)
    await asyncio.sleep(1.0)
    outcome = await load.stop()
    assert_no_failures(outcome)
    assert set(outcome.bodies) == {"v1\n"}
    deadline = time.monotonic() + 60
    gone = [*retired, *(w["pid"] for w in first)]
    while any(pid_alive(pid) for pid in gone) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert not any(pid_alive(pid) for pid in gone)
    # The control plane drives the workers as one proxy: a deploy switches every one.
    assert (await host.deploy("--version", "v2", "--env", "APP_VERSION=v2")).rc == 0
    assert {(await host.get())[1] for _ in range(20)} == {"v2\n"}


APP = Path(__file__).resolve().parents[2] / "examples" / "app" / "app.py"


async def test_a_fuse_trip_in_one_worker_takes_the_canary_out_of_every_worker(
    two_workers: tuple[ProxyProcess, Backend, Backend],
) -> None:
    proxy, v1, _ = two_workers
    port = free_port()
    env = {"APP_VERSION": "v2", "ERROR_RATE": "1.0", "SHUTDOWN_GRACE": "1"}
    with ManagedProcess(
        [sys.executable, str(APP), "--port", str(port)], port=port, env=env, name="canary"
    ) as canary:
        releases = [
            {"name": "v1", "weight": 50, "targets": [v1.addr]},
            {
                "name": "v2",
                "weight": 50,
                "targets": [f"127.0.0.1:{canary.port}"],
                "fuse": {"max_error_rate": 0.01, "min_requests": 20, "deployment": "41"},
            },
        ]
        spec = {"listen": proxy.listen, "retry_on_stable": ["GET"], "releases": releases}
        proxy.ok("PUT", "/apps/web", spec)
        result = await Load().run(proxy.url, concurrency=8, max_requests=400, max_seconds=30)
        assert result.failures == [] and set(result.bodies) == {"v1"}, result.summary()
        fuses = proxy.ok("GET", "/fuses")
        assert fuses["trips"] >= 1 and fuses["apps"]["web"]["v2"]["tripped"] is True
        assert {(e["release"], e["deployment"]) for e in fuses["events"]} == {("v2", "41")}
        weights = {
            r["name"]: r["weight"] for r in proxy.ok("GET", "/routes")["apps"]["web"]["releases"]
        }
        assert weights == {"v1": 100, "v2": 0}
        failed = proxy.release_metrics("v2")["requests"]["5xx"]
        # Neither worker sends the canary anything now; nor after the control plane, not
        # knowing yet, pushes its next step (whichever worker applies it first).
        for step in (50, 75):
            releases[0]["weight"], releases[1]["weight"] = 100 - step, step
            proxy.ok("PUT", "/apps/web", spec)
            seen = await worker_prefixes(proxy.port)
            assert len(seen) == 2, seen
            assert proxy.release_metrics("v2")["requests"]["5xx"] == failed


async def test_active_health_checks_run_once_and_reach_every_worker(
    two_workers: tuple[ProxyProcess, Backend, Backend],
) -> None:
    proxy, _, _ = two_workers
    checks: list[float] = []
    healthy = True

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"GET /up "):
                    checks.append(time.monotonic())
                    status = b"200 OK" if healthy else b"503 Unavailable"
                else:
                    status = b"200 OK"
                writer.write(b"HTTP/1.1 %s\r\nContent-Length: 2\r\n\r\nok" % status)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    health_spec = {
        "kind": "http",
        "path": "/up",
        "interval": 0.1,
        "timeout": 1.0,
        "rise": 2,
        "fall": 2,
    }
    try:
        spec = {
            "listen": proxy.listen,
            "health": health_spec,
            "queue_timeout": 0,
            "releases": [{"name": "v1", "weight": 100, "targets": [address]}],
        }
        await asyncio.to_thread(proxy.ok, "PUT", "/apps/web", spec)
        await asyncio.sleep(2.0)  # a window of checks: one checker makes at most ~20
        window = [t for t in checks if t >= checks[0] + 0.05] if checks else []
        assert 3 <= len(window) <= 22, len(window)

        async def statuses() -> set[int]:
            return {s for s, _ in await asyncio.gather(*(fetch(proxy.port) for _ in range(24)))}

        healthy = False  # every worker ejects it, though only one process checks
        deadline = time.monotonic() + 20
        while await statuses() != {503} and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert await statuses() == {503}
        assert proxy.ok("GET", "/targets")["targets"][address]["healthy"] is False
        healthy = True  # and every worker takes it back
        while await statuses() != {200} and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert await statuses() == {200}
    finally:
        server.close()


async def test_an_https_app_added_later_is_served_by_every_worker(
    two_workers: tuple[ProxyProcess, Backend, Backend], tmp_path: Path
) -> None:
    proxy, v1, _ = two_workers
    cert, key = self_signed(tmp_path, ("app.test",))
    port = free_port()
    spec: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "hosts": ["app.test"],
        "tls": {"certificate": str(cert), "key": str(key)},
        "releases": [{"name": "v1", "weight": 100, "targets": [v1.addr]}],
    }
    # A certificate that does not match is refused naming the file; the address stays free.
    bad = {**spec, "tls": {"certificate": str(cert), "key": str(tmp_path / "missing.pem")}}
    status, answer = proxy.call("PUT", "/apps/secure", bad)
    assert status == 400 and "missing.pem" in answer["error"], answer
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # nobody holds it
    proxy.ok("PUT", "/apps/secure", spec)
    ctx = client_context(cert)

    async def one() -> str:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="app.test"
        )
        try:
            writer.write(b"GET /headers HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        assert parse_status(data) == 200, data
        body = json.loads(data.partition(b"\r\n\r\n")[2])
        return str(body["x-request-id"]).split("-")[0]

    seen: set[str] = set()
    for _ in range(50):
        seen.update(await asyncio.gather(*(one() for _ in range(8))))
        if len(seen) == 2:
            break
    assert len(seen) == 2, seen
