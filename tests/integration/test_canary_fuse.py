"""A bad canary at full speed: the real CLI, daemon, proxy and app, the load generator as fast
as it goes. The proxy's fuse bounds the damage by a count of requests, retry on stable hides
the canary's 500s from clients, and the deploy is aborted with "fuse tripped" in history."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.host import Host, served_after
from tests.support.load import Load

pytestmark = pytest.mark.timeout(180)

MAX_FAILED = 50  # client-visible failures allowed, whatever the rate


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[Host]:
    h = Host(tmp_path)
    h.config(
        {
            "deploy": {
                "strategy": "canary",
                "canary": {
                    "steps": [{"weight": 10, "hold": "3s"}, {"weight": 50, "hold": "3s"}],
                    "analysis": {"min_requests": 30},
                },
            }
        }
    )
    try:
        up = await h.baton("up", "--detach", timeout=60)
        assert up.rc == 0, up
        first = await h.deploy("--version", "v1")
        assert first.rc == 0, first
        yield h
    finally:
        await h.teardown()


async def deployments(host: Host) -> list[dict[str, Any]]:
    result = await host.baton("history", "--json")
    assert result.rc == 0, result
    found: list[dict[str, Any]] = json.loads(result.out)["deployments"]
    return found


async def test_a_canary_failing_30_percent_at_full_speed_fails_at_most_a_few_dozen_requests(
    host: Host,
) -> None:
    load = await Load().start(host.url, concurrency=16, max_requests=2_000_000, max_seconds=90)
    await asyncio.sleep(1.0)
    started = load.marker("deploy")
    result = await host.deploy(
        "--version", "v2", "--env", "APP_VERSION=v2", "--env", "ERROR_RATE=0.3"
    )
    done = load.marker("done")
    await asyncio.sleep(1.0)
    outcome = await load.stop()
    assert result.rc == 1, result
    # The fuse trips at its 20th answer; the control plane's guard may report the same
    # 20 answers a moment earlier (the two race): either way the abort is immediate.
    by_fuse = "fuse tripped" in result.out + result.err
    assert by_fuse or "guard:" in result.err, result
    assert "users are still on v1" in result.err, result
    during = [s for s in outcome.timeline if started <= s.sent < done]
    failed = len(outcome.failures) + sum(
        1 for s in outcome.timeline if s.status is not None and s.status >= 500
    )
    rate = len(during) / max(done - started, 1e-3)
    print(f"\nfull speed: {failed} of {len(during)} requests failed ({rate:.0f} req/s)")
    assert failed <= MAX_FAILED, (failed, outcome.summary())
    assert len(during) > 200  # it was a real load, not a trickle
    assert served_after(outcome, done) == {"v1\n"}
    status = (await host.status())["apps"]["shop"]
    assert status["live"] == "v1"
    assert [r["version"] for r in status["releases"]] == ["v1"]
    deployment = (await deployments(host))[0]
    assert deployment["status"] == "rolled_back"
    fused = [e for e in deployment["canary"] if e.get("fuse")]
    if not by_fuse:
        return
    assert fused and fused[0]["decision"] == "abort", deployment["canary"]
    figures = fused[0]["figures"]
    assert figures["canary_requests"] >= 20 and figures["canary_errors"] > 0
    assert "fuse tripped" in fused[0]["reason"]
    # The abort came promptly after the trip (generous bound: a shared machine).
    assert fused[0]["ts"] - figures["tripped_at"] < 10.0
    assert time.monotonic() - started < 60.0
