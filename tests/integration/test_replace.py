"""The daemon keeps a live release whole: an instance killed behind Baton's back is replaced.

Process runtime here; the Docker runtime's twin is in ``test_docker_deploy.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import Any

import pytest

from baton.runtime.process import ProcessRuntime, parse_ref
from tests.support.host import Host, assert_no_failures, start_load

pytestmark = pytest.mark.timeout(180)


async def wait_replaced(host: Host, app: str = "shop", timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = (await host.status())["apps"][app]
        if status["replaced"]:
            return status
        await asyncio.sleep(0.2)
    raise AssertionError(f"no replacement within {timeout:g}s: {status}")


async def test_a_killed_instance_is_replaced_by_one_of_the_same_release(host: Host) -> None:
    assert (await host.deploy("--version", "v1")).rc == 0
    before = await ProcessRuntime(host.state_dir).owned()
    assert len(before) == 2
    victim = before[0]
    load = await start_load(host)
    await asyncio.sleep(0.3)
    pid, _ = parse_ref(victim.ref)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    status = await wait_replaced(host)
    replaced_at = time.monotonic()
    await asyncio.sleep(1.0)
    outcome = await load.stop()
    assert_no_failures(outcome)
    assert set(outcome.bodies) == {"v1\n"}
    assert any(s.sent >= replaced_at for s in outcome.timeline)
    (record,) = status["replaced"]
    assert record["version"] == "v1"
    assert record["dead"] == [{"index": victim.index, "address": victim.address}]
    (release,) = status["releases"]
    assert release["version"] == "v1" and len(release["instances"]) == 2
    assert all(i["health"] == "healthy" for i in release["instances"])
    running = sorted(i.address for i in await ProcessRuntime(host.state_dir).owned())
    assert victim.address not in running and len(running) == 2
    assert sorted(i["address"] for i in release["instances"]) == running
    text = await host.baton("status")
    assert "replaced dead" in text.out, text


async def test_no_replacement_runs_while_the_app_deploys(host: Host) -> None:
    assert (await host.deploy("--version", "v1")).rc == 0
    old = await ProcessRuntime(host.state_dir).owned()
    deploying = asyncio.create_task(
        host.deploy("--version", "v2", "--env", "APP_VERSION=v2", "--env", "BOOT_DELAY=3")
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (await host.status())["apps"]["shop"]["deployment"]:
            break
        await asyncio.sleep(0.1)
    pid, _ = parse_ref(old[0].ref)
    os.killpg(pid, signal.SIGKILL)  # v1 dies while v2 boots: v2 is the answer, not a new v1
    result = await deploying
    assert result.rc == 0, result
    status = (await host.status())["apps"]["shop"]
    assert status["live"] == "v2" and status["replaced"] == []
    assert (await host.get())[1] == "v2\n"
