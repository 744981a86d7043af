"""End to end with the daemon: a dead proxy or a dead single instance is not an outage.

The real CLI, daemon, proxy and app processes (``tests.support.host.Host``), under continuous load.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import pytest

from baton.runtime.process import ProcessRuntime, parse_ref
from tests.integration.test_replace import wait_replaced
from tests.support.host import Host, assert_no_failures, start_load

pytestmark = pytest.mark.timeout(240)

# What a client connection open at the moment of a SIGKILL may see: the kernel resets it.
CUT_BY_THE_KILL = {
    "reset",
    "closed_before_response",
    "closed_idle_keepalive",
    "incomplete_headers",
    "incomplete_body",
}


async def test_a_proxy_killed_under_load_is_restarted_and_never_answers_404(host: Host) -> None:
    assert (await host.deploy("--version", "v1")).rc == 0
    old = host.proxy_pid
    assert old is not None
    load = await start_load(host)
    await asyncio.sleep(1.0)  # (the daemon collects the proxy's sockets within 0.25 s)
    killed = load.marker("killed")
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while host.proxy_pid in (None, old):
        assert time.monotonic() < deadline, "the daemon did not restart the proxy"
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.5)
    back = load.marker("back")
    await asyncio.sleep(0.5)
    result = await load.stop()
    print(f"\nproxy SIGKILL under load: {result.summary()}")
    # Every answer came from the app: no 404 (an empty table), no 502/503.
    assert result.statuses.keys() == {200}, result.summary()
    assert set(result.bodies) == {"v1\n"}, result.summary()
    # Only the connections open at the kill were cut (one each, at most), and nothing was
    # refused: the daemon holds the listening sockets while the proxy is away.
    kinds = result.failure_kinds()
    assert set(kinds) <= CUT_BY_THE_KILL, result.summary()
    assert sum(kinds.values()) <= 6, result.summary()  # start_load's concurrency
    assert all(s.ok for s in result.timeline if s.sent >= back), result.summary()
    assert any(s.ok for s in result.timeline if s.sent >= killed)
    assert (await host.status())["proxy"]["restarts"] >= 1


async def test_killing_the_only_instance_under_load_fails_no_request(host: Host) -> None:
    host.config({"instances": 1})
    assert (await host.deploy("--version", "v1")).rc == 0
    (victim,) = await ProcessRuntime(host.state_dir).owned()
    load = await start_load(host)
    await asyncio.sleep(0.5)
    pid, _ = parse_ref(victim.ref)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    killed = load.marker("killed")
    await wait_replaced(host)
    replaced = load.marker("replaced")
    await asyncio.sleep(1.0)
    result = await load.stop()
    waited = [s for s in result.timeline if killed <= s.sent < replaced]
    print(
        f"\nonly instance SIGKILLed under load: {result.summary()}; {len(waited)} sent before"
        f" the replacement was routed, longest {max((s.t - s.sent for s in waited), default=0):.2f}s"
    )
    # They waited in the proxy's queue for the replacement instead of failing.
    assert_no_failures(result)
    assert result.statuses.keys() == {200}, result.summary()
    assert any(s.sent >= replaced for s in result.timeline)
    assert waited, "no request was sent while the app had no instance"
    (running,) = await ProcessRuntime(host.state_dir).owned()
    assert running.address != victim.address
