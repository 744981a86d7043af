"""Hitless proxy upgrade: a new proxy takes the listening sockets over from the old one."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import aiohttp
import pytest

from tests.support.h1 import parse_status
from tests.support.load import Load
from tests.support.procs import Backend
from tests.support.proxy import ProxyProcess, admin_call


@pytest.fixture
def proxied() -> Iterator[tuple[ProxyProcess, Backend]]:
    with Backend("v1") as backend, ProxyProcess() as proxy:
        proxy.route(("v1", 100, [backend.addr]))
        yield proxy, backend


def start_successor(proxy: ProxyProcess, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "baton.proxy", "--admin", proxy.admin, "--takeover", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def serving_pid(proxy: ProxyProcess) -> int:
    return int(admin_call(proxy.admin, "GET", "/health", timeout=5)[1]["pid"])


async def take_over(proxy: ProxyProcess) -> subprocess.Popen[bytes]:
    new = start_successor(proxy)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if await asyncio.to_thread(serving_pid, proxy) == new.pid:
                return new
        except (OSError, KeyError):
            pass
        assert new.poll() is None, new.stderr.read() if new.stderr else ""
        await asyncio.sleep(0.05)
    raise AssertionError("the successor never took over")


def wait_exit(proc: subprocess.Popen[bytes], timeout: float = 40) -> int:
    return proc.wait(timeout=timeout)


async def probe_fresh_connections(port: int, stop: asyncio.Event, statuses: list[int]) -> None:
    """One request per new connection, ~100 a second, until ``stop`` (at most 30,000).

    Keep-alive load moves to a new proxy only after the old one says Connection: close;
    fresh connections meet the new proxy the moment it shares the listening sockets.
    """
    while not stop.is_set() and len(statuses) < 30_000:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            statuses.append(parse_status(data))
        except (OSError, TimeoutError, ValueError):
            statuses.append(-1)
        await asyncio.sleep(0.01)


async def test_twenty_upgrades_under_keepalive_load_lose_nothing(
    proxied: tuple[ProxyProcess, Backend],
) -> None:
    proxy, _ = proxied
    first_pid = serving_pid(proxy)
    load = await Load().start(proxy.url, concurrency=16, max_requests=500_000, max_seconds=120)
    probe_stop, probed = asyncio.Event(), list[int]()
    probe = asyncio.create_task(probe_fresh_connections(proxy.port, probe_stop, probed))
    generations: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(20):
            await asyncio.sleep(0.2)
            generations.append(await take_over(proxy))
        await asyncio.sleep(1.0)
        probe_stop.set()
        await probe
        assert len(probed) > 100 and set(probed) == {200}, Counter(probed)
        result = await load.stop()
        assert result.failures == [], result.summary()
        assert result.statuses.keys() == {200}
        assert result.total > 1000
        # Every retired proxy exited by itself, cleanly; the last one serves.
        assert proxy.proc is not None and proxy.proc.wait(timeout=40) == 0
        for old in generations[:-1]:
            assert wait_exit(old) == 0
        assert serving_pid(proxy) == generations[-1].pid != first_pid
        routes = admin_call(proxy.admin, "GET", "/routes")[1]
        assert routes["apps"]["web"]["releases"][0]["name"] == "v1"
    finally:
        for proc in generations:
            proc.terminate()
        for proc in generations:
            proc.wait(timeout=40)


async def test_successor_that_dies_before_taking_over_changes_nothing(
    proxied: tuple[ProxyProcess, Backend],
) -> None:
    proxy, _ = proxied
    old_pid = serving_pid(proxy)
    load = await Load().start(proxy.url, concurrency=8, max_requests=100_000, max_seconds=60)
    # A "new proxy" that takes the sockets, then crashes before it says STOP.
    crash = subprocess.run(
        [
            sys.executable,
            "-c",
            "import socket,sys;"
            "from baton.proxy.handoff import Takeover;"
            f"t=Takeover({proxy.admin!r}); socks=t.receive(); sys.exit(3)",
        ],
        capture_output=True,
        timeout=30,
    )
    assert crash.returncode == 3, crash.stderr
    # A new proxy that cannot start at all (bad option).
    bad = start_successor(proxy, "--max-header-size", "1")
    assert bad.wait(timeout=30) != 0
    await asyncio.sleep(1.0)
    result = await load.stop()
    assert result.failures == [], result.summary()
    assert serving_pid(proxy) == old_pid
    assert proxy.alive
    # And a real successor still works afterwards.
    new = await take_over(proxy)
    try:
        assert proxy.proc is not None and proxy.proc.wait(timeout=40) == 0
    finally:
        new.terminate()
        new.wait(timeout=40)


async def test_websocket_and_sse_survive_an_upgrade(proxied: tuple[ProxyProcess, Backend]) -> None:
    proxy, _ = proxied
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{proxy.url}/ws")
        assert await ws.receive_str(timeout=5) == "v1"
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"GET /stream?n=8&interval=0.5 HTTP/1.1\r\nHost: a\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"data: 0\n\n"), 10)
        new = await take_over(proxy)
        try:
            # Old connections keep working on the retiring proxy...
            for i in range(5):
                await ws.send_str(f"after upgrade {i}")
                assert await ws.receive_str(timeout=5) == f"after upgrade {i}"
            rest = await asyncio.wait_for(reader.readuntil(b"data: 7\n\n"), 15)
            assert b"data: 6" in rest
            # ...while new ones reach the new proxy.
            async with session.get(f"{proxy.url}/") as resp:
                assert resp.status == 200 and await resp.text() == "v1"
            assert proxy.proc is not None and proxy.proc.poll() is None  # still draining
            await ws.close()
            writer.close()
            assert proxy.proc.wait(timeout=40) == 0  # retires once its connections are done
        finally:
            new.terminate()
            new.wait(timeout=40)


def test_admin_socket_and_listener_belong_to_the_successor(
    proxied: tuple[ProxyProcess, Backend],
) -> None:
    proxy, backend = proxied
    new = asyncio.run(take_over(proxy))
    try:
        assert proxy.proc is not None and proxy.proc.wait(timeout=40) == 0
        # The old proxy is gone: the admin path and the port are the successor's.
        assert serving_pid(proxy) == new.pid
        proxy.route(("v1", 100, [backend.addr]), app="second", hosts=["second.test"])
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: second.test\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"v1")
        assert json.loads(json.dumps(admin_call(proxy.admin, "GET", "/routes")[1]))["apps"]
    finally:
        new.terminate()
        new.wait(timeout=40)
