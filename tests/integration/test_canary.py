"""Canary releases end to end: the real CLI, daemon, proxy and app processes, under real load.

Each test deploys v1 (an app's first deploy is a plain switch), then a canary of v2 while a
load generator keeps sending requests, and looks at what the clients saw. Steps are short
(2 s) and ``min_requests`` small so the file stays within a few minutes; the judge's own
statistics are covered by tests/unit/test_analysis.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.host import Host, assert_no_failures, served_after, start_load

pytestmark = pytest.mark.timeout(180)

STEPS = [{"weight": 10, "hold": "2s"}, {"weight": 50, "hold": "2s"}]


def canary(**extra: Any) -> dict[str, Any]:
    """A canary config section: two short steps, a judge content with little traffic."""
    section: dict[str, Any] = {
        "steps": STEPS,
        "analysis": {"min_requests": 30},
        "max_hold_extensions": 3,
    }
    section.update(extra)
    return {"deploy": {"strategy": "canary", "canary": section}}


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[Host]:
    h = Host(tmp_path)
    h.config(canary())
    try:
        up = await h.baton("up", "--detach", timeout=60)
        assert up.rc == 0, up
        first = await h.deploy("--version", "v1")
        assert first.rc == 0, first
        assert "plain blue-green switch" in first.out  # nothing to compare with yet
        yield h
    finally:
        await h.teardown()


async def history(host: Host) -> list[dict[str, Any]]:
    result = await host.baton("history", "--json")
    assert result.rc == 0, result
    deployments: list[dict[str, Any]] = json.loads(result.out)["deployments"]
    return deployments


def verdicts(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in deployment.get("canary", []) if e["kind"] == "verdict"]


async def wait_for_step(host: Host, step: int, timeout: float = 60.0) -> dict[str, Any]:
    """The app's running canary, once it reached ``step``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = (await host.status())["apps"]["shop"].get("canary")
        if found and found["step"] >= step:
            return dict(found)
        await asyncio.sleep(0.1)
    raise AssertionError(f"the canary never reached step {step}")


# -- a good release goes all the way --------------------------------------------------------------


async def test_a_good_canary_is_promoted_through_every_step_without_a_failed_request(
    host: Host,
) -> None:
    load = await start_load(host)
    started = time.monotonic()
    result = await host.deploy("--version", "v2", "--env", "APP_VERSION=v2")
    done = time.monotonic()
    await asyncio.sleep(0.5)
    outcome = await load.stop()
    assert result.rc == 0, result
    assert "step 1/2: v1 90%, v2 10%" in result.out, result.out
    assert "step 2/2: v1 50%, v2 50%" in result.out, result.out
    assert "shop v2 is live" in result.out
    assert_no_failures(outcome)
    assert set(outcome.statuses) == {200}, outcome.summary()
    assert served_after(outcome, started, done) == {"v1\n", "v2\n"}  # split, then promoted
    assert served_after(outcome, done) == {"v2\n"}
    status = (await host.status())["apps"]["shop"]
    assert status["live"] == "v2" and status["canary"] is None
    assert [(r["version"], r["weight"]) for r in status["releases"]] == [("v2", 100)]
    assert len(await host.running_instances()) == 2
    # Every verdict is in the history, with its figures.
    deployment = (await history(host))[0]
    assert deployment["status"] == "succeeded" and deployment["strategy"] == "canary"
    judged = verdicts(deployment)
    assert [v["step"] for v in judged if v["decision"] == "next"] == [1, 2]
    for verdict in judged:
        assert verdict["figures"]["canary_requests"] > 0
        assert verdict["figures"]["baseline_requests"] > 0
        assert "latency_p_value" in verdict["figures"]


# -- bad releases are aborted -------------------------------------------------------------------------


async def test_a_canary_failing_30_percent_of_requests_is_aborted_with_a_small_blast_radius(
    host: Host,
) -> None:
    load = await start_load(host)
    await asyncio.sleep(0.5)
    started = load.marker("deploy")
    result = await host.deploy(
        "--version", "v2", "--env", "APP_VERSION=v2", "--env", "ERROR_RATE=0.3"
    )
    done = load.marker("done")
    await asyncio.sleep(0.5)
    outcome = await load.stop()
    assert result.rc == 1, result
    # The proxy's fuse (by count) or the control plane's guard (by time), whichever sees the
    # 20th answer first: at this rate they race, and either aborts at once.
    assert "fuse tripped" in result.err or "guard:" in result.err, result
    assert "users are still on v1" in result.err, result
    assert_no_failures(outcome)  # every request was answered (the 500s are the app's)
    during = [s for s in outcome.timeline if started <= s.sent < done]
    failed = sum(1 for s in during if s.status == 500)
    share = failed / len(during)
    print(
        f"\nbad canary: {failed} of {len(during)} requests failed during the deploy ({share:.2%})"
    )
    # The canary's 500s to these GETs were retried on stable: clients saw (almost) none.
    assert share < 0.005, (failed, len(during))
    assert served_after(outcome, done) == {"v1\n"}
    status = (await host.status())["apps"]["shop"]
    assert status["live"] == "v1"
    assert [r["version"] for r in status["releases"]] == ["v1"]
    assert len(await host.running_instances()) == 2
    deployment = (await history(host))[0]
    assert deployment["status"] == "rolled_back"
    assert any(v["verdict"] == "fail" and v["decision"] == "abort" for v in verdicts(deployment))


async def test_a_canary_three_times_slower_is_aborted(host: Host) -> None:
    steps = [{"weight": 50, "hold": "2s"}]
    host.config({**canary(steps=steps), "run": {"env": {"LATENCY_MS": "5"}}})
    slow = ("--env", "APP_VERSION=v1", "--strategy", "blue-green")
    assert (await host.deploy("--version", "v1b", *slow)).rc == 0
    load = await start_load(host)
    result = await host.deploy(
        "--version", "v2", "--env", "APP_VERSION=v2", "--env", "LATENCY_MS=15"
    )
    done = time.monotonic()
    await asyncio.sleep(0.5)
    outcome = await load.stop()
    assert result.rc == 1, result
    assert "slower in two windows in a row" in result.err, result
    assert_no_failures(outcome)
    assert set(outcome.statuses) == {200}
    assert served_after(outcome, done) == {"v1\n"}
    assert (await host.status())["apps"]["shop"]["live"] == "v1b"
    judged = verdicts((await history(host))[0])
    decisions = [v["decision"] for v in judged if v["decision"] != "extend"]  # low traffic
    assert decisions == ["confirm", "abort"], judged
    assert judged[-1]["figures"]["latency_ratio_p95"] > 1.25  # the limit
    assert judged[-1]["figures"]["latency_p_value"] < 0.05


# -- stickiness ---------------------------------------------------------------------------------------


async def sticky_client(host: Host, seen: list[tuple[float, str]], stop: asyncio.Event) -> None:
    """A browser: keeps the cookie the proxy sets and sends it with every request."""
    cookie = ""
    while not stop.is_set():
        reader, writer = await asyncio.open_connection("127.0.0.1", host.port)
        extra = f"Cookie: {cookie}\r\n" if cookie else ""
        writer.write(f"GET / HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        for line in head.decode("latin-1").split("\r\n"):
            if line.lower().startswith("set-cookie: baton_release="):
                cookie = line.split(":", 1)[1].strip().split(";", 1)[0]
        seen.append((time.time(), body.decode()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


async def test_a_sticky_client_stays_on_one_release_for_the_whole_canary(host: Host) -> None:
    load = await start_load(host)
    deploying = asyncio.create_task(host.deploy("--version", "v2", "--env", "APP_VERSION=v2"))
    await wait_for_step(host, 1)
    stop = asyncio.Event()
    clients: list[list[tuple[float, str]]] = []
    tasks: list[asyncio.Task[None]] = []
    # New clients arrive (10 every 0.1 s, at most 150) until both releases have some: at the
    # first step's 10% a fixed 30 all land on v1 about once in 24 runs.
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        for _ in range(10):
            clients.append([])
            tasks.append(asyncio.create_task(sticky_client(host, clients[-1], stop)))
        await asyncio.sleep(0.1)
        if {seen[0][1] for seen in clients if seen} == {"v1\n", "v2\n"}:
            break
    result = await deploying
    stop.set()
    await asyncio.gather(*tasks)
    outcome = await load.stop()
    assert result.rc == 0, result
    assert_no_failures(outcome)
    promoted = next(
        e["ts"] for e in (await history(host))[0]["canary"] if e.get("step") == "promote"
    )
    first = {seen[0][1] for seen in clients}
    assert first == {"v1\n", "v2\n"}, first  # both releases had sticky users
    for seen in clients:
        before = {body for ts, body in seen if ts < promoted}
        assert len(before) == 1, seen  # never flipped while the traffic was split
        assert seen[-1][1] == "v2\n"  # and everyone ends on the promoted release


# -- promote and abort by hand ------------------------------------------------------------------------


async def test_baton_promote_skips_the_remaining_steps(host: Host) -> None:
    host.config(canary(steps=[{"weight": 10, "hold": "60s"}, {"weight": 50, "hold": "60s"}]))
    load = await start_load(host)
    deploying = asyncio.create_task(host.deploy("--version", "v2", "--env", "APP_VERSION=v2"))
    running = await wait_for_step(host, 1)
    assert running["version"] == "v2" and running["weight"] == 10
    # The figures show once the daemon's traffic sample (every second) holds v2's answers.
    deadline = time.monotonic() + 15
    status = await host.baton("status")
    while "p95" not in status.out and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        status = await host.baton("status")
    assert "canary v2 (stable v1): step 1/2 at 10%" in status.out, status
    assert "p95" in status.out and "req/s" in status.out, status
    promoted = await host.baton("promote")
    result = await deploying
    done = time.monotonic()
    await asyncio.sleep(0.3)
    outcome = await load.stop()
    assert promoted.rc == 0, promoted
    assert "promote requested" in promoted.out and "shop v2 is live" in promoted.out
    assert result.rc == 0, result
    assert "step 2/2" not in result.out
    assert_no_failures(outcome)
    assert served_after(outcome, done) == {"v2\n"}
    assert (await host.status())["apps"]["shop"]["live"] == "v2"
    nothing = await host.baton("promote")
    assert nothing.rc == 2 and "no canary deployment of shop is running" in nothing.err


async def test_baton_abort_sends_users_back_and_the_deploy_exits_1(host: Host) -> None:
    host.config(canary(steps=[{"weight": 50, "hold": "60s"}]))
    load = await start_load(host)
    deploying = asyncio.create_task(host.deploy("--version", "v2", "--env", "APP_VERSION=v2"))
    await wait_for_step(host, 1)
    aborted = await host.baton("abort", "--app", "shop")
    result = await deploying
    done = time.monotonic()
    await asyncio.sleep(0.3)
    outcome = await load.stop()
    assert aborted.rc == 0, aborted
    assert result.rc == 1, result
    assert "aborted by `baton abort` at step 1 (50%)" in result.err
    assert "users are still on v1" in result.err
    assert_no_failures(outcome)
    assert served_after(outcome, done) == {"v1\n"}
    status = (await host.status())["apps"]["shop"]
    assert status["live"] == "v1" and [r["version"] for r in status["releases"]] == ["v1"]
    assert len(await host.running_instances()) == 2


# -- a crash mid-canary ---------------------------------------------------------------------------------


async def test_a_daemon_killed_mid_canary_goes_back_to_the_stable_release_on_restart(
    host: Host,
) -> None:
    host.config(canary(steps=[{"weight": 50, "hold": "60s"}]))
    load = await start_load(host)
    deploying = asyncio.create_task(host.deploy("--version", "v2", "--env", "APP_VERSION=v2"))
    await wait_for_step(host, 1)
    pid = host.server_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert (await deploying).rc == 3
    assert (await host.baton("up", "--detach", timeout=60)).rc == 0
    after = time.monotonic()
    await asyncio.sleep(0.5)
    outcome = await load.stop()
    assert_no_failures(outcome)
    assert served_after(outcome, after) == {"v1\n"}
    status = (await host.status())["apps"]["shop"]
    assert status["live"] == "v1" and status["deployment"] is None
    assert sorted(i["address"] for r in status["releases"] for i in r["instances"]) == (
        await host.running_instances()
    )
    deployment = (await history(host))[0]
    assert deployment["status"] == "aborted" and "canary" in deployment["error"]


# -- bad configs ---------------------------------------------------------------------------------------


BAD_CONFIGS: list[tuple[dict[str, Any], str, str]] = [
    ({"steps": [{"weight": 0, "hold": "2s"}]}, "deploy.canary.steps[0].weight", "≥ 1"),
    ({"steps": [{"weight": 101, "hold": "2s"}]}, "deploy.canary.steps[0].weight", "≤ 100"),
    ({"steps": [{"weight": 5}]}, "deploy.canary.steps[0].hold", "required"),
    ({"steps": [{"weight": 5, "hold": "2s", "wait": 1}]}, "deploy.canary.steps[0].wait", "hold"),
    ({"steps": []}, "deploy.canary.steps", "at least one step"),
    ({"stickiness": "sticky"}, "deploy.canary.stickiness", "header:<name>"),
    ({"analysis": {"max_error_rate": 5}}, "deploy.canary.analysis.max_error_rate", "5%"),
    ({"analysis": {"confidence": 1}}, "deploy.canary.analysis.confidence", "50% and 100%"),
    ({"max_hold_extensions": -1}, "deploy.canary.max_hold_extensions", "≥ 0"),
    ({"release_secret": "short"}, "deploy.canary.release_secret", "16 characters"),
]


async def test_a_bad_canary_config_exits_2_naming_the_file_and_the_key(host: Host) -> None:
    for section, key, expected in BAD_CONFIGS:
        path = host.config(canary(**section), name="bad.yml")
        for command in (["deploy", "-c", str(path)], ["check", "-c", str(path)]):
            result = await host.baton(*command)
            assert result.rc == 2, (section, result)
            assert f"{path}: {key}:" in result.err and expected in result.err, (section, result)
    assert (await host.status())["apps"]["shop"]["live"] == "v1"
