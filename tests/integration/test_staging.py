"""A staged release (``POST /deploy`` with ``"stage": true``) runs ready beside the live one
while the host's proxy keeps serving the old release; ``POST /staged/switch`` then switches
to it, ``POST /staged/discard`` stops it. Real daemon, proxy and app processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

from baton.cluster.agent import LocalDaemon
from baton.errors import BatonError
from tests.support.host import Host, assert_no_failures, host, served_after, start_load

__all__ = ["host"]


async def _stage(daemon: LocalDaemon, config: Path, version: str) -> list[dict[str, Any]]:
    """Deploy ``version`` staged; the events up to its ``staged`` step (the stream is left)."""
    body = {"config": str(config), "version": version, "env": {"APP_VERSION": version}}
    events: list[dict[str, Any]] = []
    async for event in daemon.deploy("/deploy", {**body, "stage": True}):
        events.append(event)
        if event.get("event") in ("result",) or event.get("step") == "staged":
            break
    return events


async def _decide(daemon: LocalDaemon, verb: str, app: str) -> dict[str, Any]:
    last: dict[str, Any] = {}
    async for event in daemon.deploy(f"/staged/{verb}", {"app": app}):
        last = event
    return last


def _release(status: dict[str, Any], version: str) -> dict[str, Any] | None:
    for release in status["apps"]["shop"]["releases"]:
        if release["version"] == version:
            return dict(release)
    return None


async def test_a_staged_release_runs_beside_the_live_one_until_its_switch(host: Host) -> None:
    assert (await host.deploy("--version", "v1")).rc == 0
    daemon = LocalDaemon(host.state_dir / "baton.sock")
    load = await start_load(host)
    try:
        events = await _stage(daemon, host.root / "baton.yml", "v2")
        assert events[-1].get("step") == "staged", events
        staged_at = load.marker("staged")
        status = await daemon.status()
        assert status["apps"]["shop"]["live"] == "v1"
        staged = _release(status, "v2")
        assert staged is not None and len(staged["instances"]) == 2, status
        assert {i["state"] for i in staged["instances"]} == {"ready"}, staged
        await asyncio.sleep(0.5)  # the proxy keeps serving v1 while v2 waits
        before_switch = load.marker("switch")
        result = await _decide(daemon, "switch", "shop")
        assert result.get("event") == "result" and result.get("ok"), result
        switched = load.marker("switched")
        await asyncio.sleep(0.5)
        outcome = await load.stop()
    finally:
        await daemon.close()
    assert_no_failures(outcome)
    assert served_after(outcome, staged_at, before_switch) == {"v1\n"}
    assert served_after(outcome, switched) == {"v2\n"}
    status = await host.status()
    assert status["apps"]["shop"]["live"] == "v2"


async def test_a_discarded_staged_release_stops_and_changes_nothing(host: Host) -> None:
    assert (await host.deploy("--version", "v1")).rc == 0
    before = await host.running_instances()
    daemon = LocalDaemon(host.state_dir / "baton.sock")
    try:
        events = await _stage(daemon, host.root / "baton.yml", "v2")
        assert events[-1].get("step") == "staged", events
        assert len(await host.running_instances()) == 4
        result = await _decide(daemon, "discard", "shop")
        assert result.get("event") == "result" and not result.get("ok"), result
        assert "discarded" in str(result.get("message")), result
        # Nothing is staged now: a second discard has nothing to do, a switch is refused.
        assert (await _decide(daemon, "discard", "shop")).get("ok") is True
        try:
            await _decide(daemon, "switch", "shop")
            raise AssertionError("a switch with nothing staged was accepted")
        except BatonError as exc:
            assert "no staged release of shop" in str(exc)
    finally:
        await daemon.close()
    assert await host.running_instances() == before
    assert await host.get("/") == (200, "v1\n")
    status = await host.status()
    assert status["apps"]["shop"]["live"] == "v1"
    assert _release(status, "v2") is None


async def test_stage_is_refused_for_a_rolling_deploy_and_for_a_bad_flag(host: Host) -> None:
    assert (await host.deploy("--version", "v1")).rc == 0
    daemon = LocalDaemon(host.state_dir / "baton.sock")
    config = str(host.root / "baton.yml")
    try:
        for body, words in (
            ({"config": config, "version": "v2", "stage": "yes"}, "stage: expected true or false"),
            (
                {"config": config, "version": "v2", "stage": True, "strategy": "rolling"},
                "only a blue-green deploy can be staged",
            ),
        ):
            try:
                async for _ in daemon.deploy("/deploy", body):
                    pass
                raise AssertionError(f"{body} was accepted")
            except BatonError as exc:
                assert words in str(exc), exc
    finally:
        await daemon.close()
    assert (await host.status())["apps"]["shop"]["live"] == "v1"


async def test_a_staged_release_left_undecided_is_discarded_after_stage_timeout(
    host: Host,
) -> None:
    host.config({"deploy": {"stage_timeout": "1s"}})
    assert (await host.deploy("--version", "v1")).rc == 0
    before = await host.running_instances()
    daemon = LocalDaemon(host.state_dir / "baton.sock")
    body = {"config": str(host.root / "baton.yml"), "version": "v2", "stage": True}
    events: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(60):  # generous: the bound under test is 1s
            async for event in daemon.deploy("/deploy", {**body, "env": {"APP_VERSION": "v2"}}):
                events.append(event)
    finally:
        await daemon.close()
    assert any(e.get("step") == "staged" for e in events), events
    result = events[-1]
    assert result.get("event") == "result" and not result.get("ok"), result
    assert "deploy.stage_timeout (1s)" in str(result.get("message")), result
    assert await host.running_instances() == before
    assert await host.get("/") == (200, "v1\n")
    status = await host.status()
    assert status["apps"]["shop"]["live"] == "v1"
    assert _release(status, "v2") is None


async def test_a_staged_release_does_not_outlive_its_daemon(host: Host) -> None:
    """The daemon is SIGKILLed while v2 is staged: v1 serves throughout, and the restarted
    daemon undoes the staged deployment (v2's instances stopped, nothing orphaned)."""
    assert (await host.deploy("--version", "v1")).rc == 0
    daemon = LocalDaemon(host.state_dir / "baton.sock")
    load = await start_load(host)
    try:
        events = await _stage(daemon, host.root / "baton.yml", "v2")
        assert events[-1].get("step") == "staged", events
        assert len(await host.running_instances()) == 4
    finally:
        await daemon.close()
    pid = host.server_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert (await host.baton("up", "--detach", timeout=60)).rc == 0
    restarted = load.marker("restarted")
    await asyncio.sleep(0.5)
    outcome = await load.stop()
    assert_no_failures(outcome)
    assert served_after(outcome, 0.0) == {"v1\n"}  # the staged release never saw a user
    assert served_after(outcome, restarted), outcome.summary()  # and v1 went on serving
    status = await host.status()
    app = status["apps"]["shop"]
    assert app["live"] == "v1" and app["deployment"] is None, app
    staged = _release(status, "v2")
    assert staged is None or not staged["instances"], staged
    routed = sorted(i["address"] for r in app["releases"] for i in r["instances"])
    assert routed == await host.running_instances()  # nothing orphaned, nothing missing
    assert len(routed) == 2
    history = json.loads((await host.baton("history", "--json")).out)["deployments"]
    assert history[0]["version"] == "v2" and history[0]["status"] != "succeeded", history[0]
    # The staged release's label can be deployed again and goes live.
    assert (await host.deploy("--version", "v2", "--env", "APP_VERSION=v2")).rc == 0
    assert await host.get("/") == (200, "v2\n")
