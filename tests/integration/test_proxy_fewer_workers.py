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
import subprocess
import sys
import time
from typing import Any

import pytest

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
