"""`baton upgrade`: the daemon replaces its proxy process under load without losing a request."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import pytest

from baton.runtime.process import pid_alive
from tests.support.host import Host, assert_no_failures, start_load

pytestmark = pytest.mark.timeout(300)


async def test_twenty_upgrades_in_a_row_under_load_lose_nothing(host: Host) -> None:
    assert (await host.deploy("--version", "v1")).rc == 0
    first = host.proxy_pid
    load = await start_load(host)
    retired: list[int] = []
    for _ in range(20):
        before = host.proxy_pid
        result = await host.baton("upgrade")
        assert result.rc == 0, result
        assert "without a gap" in result.out
        assert host.proxy_pid not in (None, before)
        assert before is not None
        retired.append(before)
    await asyncio.sleep(1.0)
    outcome = await load.stop()
    assert_no_failures(outcome)
    assert outcome.statuses.keys() == {200}
    assert set(outcome.bodies) == {"v1\n"}
    assert host.proxy_pid != first
    # Retired proxies exit by themselves once their connections are done.
    deadline = time.monotonic() + 40
    while any(pid_alive(pid) for pid in retired) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert not any(pid_alive(pid) for pid in retired)
    # The control plane drives the new proxy as before.
    assert (await host.deploy("--version", "v2", "--env", "APP_VERSION=v2")).rc == 0
    assert await host.get() == (200, "v2\n")


@pytest.mark.parametrize(
    ("proxy_command", "timeout", "why"),
    [
        (f"{sys.executable} -c 'import sys; sys.exit(3)'", "10s", "exited with status 3"),
        (f"{sys.executable} -c 'import time; time.sleep(60)'", "2s", "was not ready within 2s"),
    ],
    ids=["crashes", "hangs"],
)
async def test_a_broken_new_proxy_leaves_the_old_one_serving(
    host: Host, proxy_command: str, timeout: str, why: str
) -> None:
    assert (await host.deploy("--version", "v1")).rc == 0
    old = host.proxy_pid
    load = await start_load(host)
    await asyncio.sleep(0.5)
    result = await host.baton("upgrade", "--proxy-command", proxy_command, "--timeout", timeout)
    await asyncio.sleep(0.5)
    outcome = await load.stop()
    assert result.rc == 1, result
    assert why in result.err and "goes on serving" in result.err
    assert_no_failures(outcome)
    assert host.proxy_pid == old and old is not None and pid_alive(old)
    assert await host.get() == (200, "v1\n")
    # And a good upgrade still works afterwards.
    assert (await host.baton("upgrade")).rc == 0


async def test_the_control_plane_restarts_without_touching_the_proxy(host: Host) -> None:
    assert (await host.deploy("--version", "v1")).rc == 0
    proxy = host.proxy_pid
    server = host.server_pid
    assert proxy is not None and server is not None
    load = await start_load(host)
    os.kill(server, signal.SIGKILL)
    await asyncio.sleep(1.0)
    up = await host.baton("up", "--detach", timeout=60)
    assert up.rc == 0, up
    await asyncio.sleep(0.5)
    outcome = await load.stop()
    assert_no_failures(outcome)
    assert host.proxy_pid == proxy and pid_alive(proxy)  # adopted, not restarted
    assert host.server_pid not in (None, server)


async def test_bad_upgrade_flags_exit_2(host: Host) -> None:
    bad = await host.baton("upgrade", "--timeout", "soon")
    assert bad.rc == 2 and "--timeout" in bad.err
