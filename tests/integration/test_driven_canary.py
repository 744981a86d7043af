"""A driven canary on one host (what a fleet canary without edges runs on each host), through
the daemon's real API socket with the agent's own client: it starts at the weight given,
moves only when told, holds with no timer of its own, and is promoted or aborted on
request; bad input is refused with a message naming what was wrong."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from baton.cluster.agent import LocalDaemon
from baton.errors import BatonError
from tests.support.host import Host, assert_no_failures, host, start_load

__all__ = ["host"]

pytestmark = pytest.mark.timeout(180)


async def follow(events: AsyncIterator[dict[str, Any]], into: list[dict[str, Any]]) -> None:
    async for event in events:
        into.append(event)


async def weight_applied(events: list[dict[str, Any]], weight: int) -> None:
    deadline = asyncio.get_running_loop().time() + 60
    while not any(e.get("event") == "canary_step" and e["weight"] == weight for e in events):
        assert asyncio.get_running_loop().time() < deadline, events[-5:]
        await asyncio.sleep(0.05)


async def test_a_driven_canary_moves_only_when_told_and_is_promoted_on_request(
    host: Host,
) -> None:
    assert (await host.deploy("--version", "v1")).rc == 0
    daemon = LocalDaemon(host.state_dir / "baton.sock")
    try:
        with pytest.raises(BatonError, match="canary_weight: expected a whole percentage"):
            async for _ in daemon.deploy(
                "/deploy", {"config": str(host.root / "baton.yml"), "canary_weight": "half"}
            ):
                pass
        with pytest.raises(BatonError, match="no driven canary of shop is running"):
            await daemon.call("/canary/weight", {"app": "shop", "weight": 50})
        assert (await host.status())["apps"]["shop"]["live"] == "v1"  # nothing changed
        load = await start_load(host)
        events: list[dict[str, Any]] = []
        body = {"config": str(host.root / "baton.yml"), "version": "v2", "canary_weight": 20}
        body["env"] = {"APP_VERSION": "v2"}
        following = asyncio.get_running_loop().create_task(
            follow(daemon.deploy("/deploy", body), events)
        )
        await weight_applied(events, 20)
        weights = {
            r["version"]: r["weight"] for r in (await host.status())["apps"]["shop"]["releases"]
        }
        assert (weights["v1"], weights["v2"]) == (80, 20)
        with pytest.raises(BatonError, match="weight: expected a whole percentage"):
            await daemon.call("/canary/weight", {"app": "shop", "weight": 120})
        await daemon.call("/canary/weight", {"app": "shop", "weight": 60})
        await weight_applied(events, 60)
        canary = (await host.status())["apps"]["shop"]["canary"]
        assert canary["driven"] and canary["weight"] == 60
        await asyncio.sleep(1.0)  # no timer of its own: it holds until told
        assert not following.done()
        await daemon.call("/promote", {"app": "shop"})
        await asyncio.wait_for(following, 60)
        outcome = await load.stop()
    finally:
        await daemon.close()
    assert events[-1]["event"] == "result" and events[-1]["ok"], events[-3:]
    assert_no_failures(outcome)
    assert (await host.status())["apps"]["shop"]["live"] == "v2"


async def test_an_aborted_driven_canary_leaves_users_on_the_live_release(host: Host) -> None:
    assert (await host.deploy("--version", "v1")).rc == 0
    daemon = LocalDaemon(host.state_dir / "baton.sock")
    try:
        events: list[dict[str, Any]] = []
        body = {"config": str(host.root / "baton.yml"), "version": "v2", "canary_weight": 30}
        following = asyncio.get_running_loop().create_task(
            follow(daemon.deploy("/deploy", body), events)
        )
        await weight_applied(events, 30)
        await daemon.call("/abort", {"app": "shop"})
        await asyncio.wait_for(following, 60)
    finally:
        await daemon.close()
    assert events[-1]["event"] == "result" and not events[-1]["ok"], events[-3:]
    assert (await host.status())["apps"]["shop"]["live"] == "v1"
