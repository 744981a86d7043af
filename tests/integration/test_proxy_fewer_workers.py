"""A takeover by a proxy with fewer workers loses no connection.

A proxy with N workers listens on N ``SO_REUSEPORT`` sockets per address, and the kernel
hashes every new connection onto one of them. A successor with fewer workers still gets all
N and serves every one (M sockets over its workers, round-robin; a single proxy serves them
all): closing one would reset the connections queued on it. Here, under a load that opens a
new connection for every request (so that connections are queued at every moment), the
proxy goes 3 workers -> 2 -> 1 (a single proxy) -> 2, each step a real takeover by a real
process, and not one request fails or is reset.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.support.h1 import parse_status
from tests.support.load import Load
from tests.support.procs import Backend
from tests.support.proxy import ProxyProcess, admin_call


def start_successor(proxy: ProxyProcess, workers: int) -> subprocess.Popen[bytes]:
    extra = ["--workers", str(workers)] if workers > 1 else []
    return subprocess.Popen(
        [sys.executable, "-m", "baton.proxy", "--admin", proxy.admin, "--takeover", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


async def took_over(proxy: ProxyProcess, new: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Wait until ``new`` answers on the proxy's admin socket; its /health."""
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        status, answer = await asyncio.to_thread(
            admin_call, proxy.admin, "GET", "/health", timeout=5
        )
        if status == 200 and answer["pid"] == new.pid:
            result: dict[str, Any] = answer
            return result
        assert new.poll() is None, new.stderr.read() if new.stderr else ""
        await asyncio.sleep(0.05)
    raise AssertionError(f"pid {new.pid} never took over")


async def exited(proc: subprocess.Popen[bytes]) -> int:
    """The retired proxy's exit status (it exits by itself once its work is done)."""
    return await asyncio.to_thread(proc.wait, 60)


@pytest.mark.timeout(240)
async def test_fewer_workers_by_takeover_under_new_connection_load_resets_nothing() -> None:
    with Backend("v1") as v1, ProxyProcess("--workers", "3") as proxy:
        proxy.route(("v1", 100, [v1.addr]))
        # A fresh connection per request, flat out: the accept queues are never empty.
        load = await Load().start(
            proxy.url,
            concurrency=24,
            max_requests=400_000,
            max_seconds=150,
            headers={"Connection": "close"},
        )
        successors: list[subprocess.Popen[bytes]] = []
        try:
            for workers in (2, 1, 2):
                await asyncio.sleep(1.0)
                new = start_successor(proxy, workers)
                successors.append(new)
                health = await took_over(proxy, new)
                assert len(health.get("workers") or [None]) == workers, health
            await asyncio.sleep(1.0)
            result = await load.stop()
            assert result.failures == [], result.summary()
            assert result.statuses.keys() == {200}, result.summary()
            assert result.total > 500, result.summary()
            # Every retired proxy exited by itself, cleanly.
            assert proxy.proc is not None and await exited(proxy.proc) == 0
            for old in successors[:-1]:
                assert await exited(old) == 0
        finally:
            await load.stop()
            for proc in successors:
                proc.terminate()
            for proc in successors:
                proc.wait(timeout=60)


async def fetch_fresh(port: int) -> int:
    """One request on a fresh connection (the kernel picks its socket of the group); its
    status, or -1 when it is not answered within 5 s (a socket nobody accepts on)."""
    try:
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b"GET / HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n")
                return parse_status(await reader.read())
            finally:
                writer.close()
    except (OSError, TimeoutError, ValueError):
        return -1


@pytest.mark.timeout(180)
async def test_a_restarted_worker_accepts_on_its_whole_share_of_a_larger_group() -> None:
    with Backend("v1") as v1, ProxyProcess("--workers", "3") as proxy:
        proxy.route(("v1", 100, [v1.addr]))
        new = start_successor(proxy, 2)
        try:
            health = await took_over(proxy, new)
            assert proxy.proc is not None and await exited(proxy.proc) == 0
            # Three sockets over two workers: worker 0 accepts on two of them.
            first = next(w for w in health["workers"] if w["index"] == 0)
            os.kill(first["pid"], signal.SIGKILL)
            deadline = time.monotonic() + 30
            replaced: dict[str, Any] = {}
            while time.monotonic() < deadline and not replaced:
                _, answer = await asyncio.to_thread(
                    admin_call, proxy.admin, "GET", "/health", timeout=5
                )
                replaced = next(
                    (
                        w
                        for w in answer.get("workers", [])
                        if w["index"] == 0 and w["pid"] not in (None, first["pid"])
                    ),
                    {},
                )
                await asyncio.sleep(0.05)
            assert replaced.get("restarts") == 1, replaced
            # Fresh connections land on every socket of the group: all are answered.
            statuses: list[int] = []
            for _ in range(15):
                statuses += await asyncio.gather(*(fetch_fresh(proxy.port) for _ in range(10)))
            assert statuses == [200] * 150, statuses
        finally:
            new.terminate()
            new.wait(timeout=60)
