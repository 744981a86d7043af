"""A canary across a fleet without edges (each host's proxy serves its own instances), in
namespaces: three app hosts, each its own daemon and proxy, clients on every host's address.
Every host runs the new release beside the old at the weight the controller wrote in one
etcd revision; the controller judges the sum of every host's figures with the single-host
canary's rules, then promotes everywhere or puts every host back."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import yaml

from baton.cluster import keys
from baton.cluster.controller import outcome as fleet_outcome
from baton.cluster.controller import submit
from baton.cluster.election import leader
from baton.cluster.etcd import Etcd
from baton.cluster.fleetcanary import host_canary
from baton.cluster.rollout import DEPLOYMENTS, RolloutResult, roll_out
from tests.support.etcd import EtcdCluster
from tests.support.fleet import (
    NAMES,
    PORT,
    FleetHost,
    configs,
    release,
    served_by_each,
    started_fleet,
)
from tests.support.host import Host, Result, assert_no_failures
from tests.support.load import Load, LoadResult
from tests.support.netns import NetHost, NetLab


def request(fleet_hosts: list[FleetHost], steps: Sequence[tuple[int, float]]) -> keys.DeployRequest:
    return keys.DeployRequest(
        release("v2", "f2"), tuple(NAMES), configs=configs(fleet_hosts), canary=tuple(steps),
        canary_max_error_rate=0.05, canary_min_requests=20,
    )  # fmt: skip


async def canary_under_load(
    cluster: EtcdCluster,
    fleet_hosts: list[FleetHost],
    env: dict[str, str],
    steps: Sequence[tuple[int, float]] = ((20, 3.0), (50, 3.0)),
) -> tuple[RolloutResult, list[LoadResult], float, float]:
    """v1 on every host, then a canary of v2 (with ``env``) under load on every host: the
    result, what each host's clients saw, when the canary began and when it ended."""
    async with Etcd(cluster.endpoints) as etcd:
        assert (await roll_out(etcd, release("v1", "f1"), NAMES, configs=configs(fleet_hosts))).ok
        for h in fleet_hosts:
            cfg = yaml.safe_load((h.root / "baton.yml").read_text())
            cfg["run"]["env"].update(env)
            cfg.setdefault("deploy", {})["canary"] = {"stickiness": "none"}
            (h.root / "baton.yml").write_text(yaml.safe_dump(cfg))
        loads = [
            await Load().start(
                h.url, concurrency=2, max_requests=200_000, max_seconds=240, delay=0.005
            )
            for h in fleet_hosts
        ]
        began = loads[0].marker("canary")
        result = await host_canary(etcd, request(fleet_hosts, steps), "test")
        after = loads[0].marker("ended")
        deadline = asyncio.get_running_loop().time() + 30
        while any(sum(s.sent >= after for s in load.timeline) < 20 for load in loads):
            assert asyncio.get_running_loop().time() < deadline, "no load after the canary"
            await asyncio.sleep(0.05)
        return result, [await load.stop() for load in loads], began, after


def seen(result: LoadResult, start: float, end: float | None = None) -> list[str]:
    return [
        s.body.split()[0]
        for s in result.timeline
        if s.body and s.sent >= start and (end is None or s.sent < end)
    ]


async def test_a_good_canary_without_edges_is_promoted_on_every_host_under_load(
    fleet: tuple[EtcdCluster, list[FleetHost]],
) -> None:
    cluster, fleet_hosts = fleet
    result, outcomes, began, after = await canary_under_load(cluster, fleet_hosts, {})
    assert result.ok, result
    for h, outcome in zip(fleet_hosts, outcomes, strict=True):
        assert_no_failures(outcome)
        assert set(outcome.statuses) == {200}, (h.net.name, outcome.summary())
        during = seen(outcome, began, after)
        assert 0.05 < during.count("v2") / len(during) < 0.95, (h.net.name, outcome.summary())
        assert set(seen(outcome, after)) == {"v2"}, h.net.name
    assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v2")


async def test_a_failing_canary_without_edges_is_rolled_back_on_every_host(
    fleet: tuple[EtcdCluster, list[FleetHost]],
) -> None:
    cluster, fleet_hosts = fleet
    result, outcomes, _, after = await canary_under_load(
        cluster, fleet_hosts, {"ERROR_RATE": "0.3"}
    )
    assert not result.ok and "canary at 20%: error rate" in result.message, result
    for h, outcome in zip(fleet_hosts, outcomes, strict=True):
        assert_no_failures(outcome)  # answers, some the canary's 500s: none broken
        assert set(seen(outcome, after)) == {"v1"}, (h.net.name, outcome.summary())
    assert any(500 in o.statuses for o in outcomes)
    assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v1")


async def test_a_slow_canary_without_edges_is_rolled_back_by_the_latency_rule_without_errors(
    fleet: tuple[EtcdCluster, list[FleetHost]],
) -> None:
    cluster, fleet_hosts = fleet
    result, outcomes, _, after = await canary_under_load(
        cluster, fleet_hosts, {"LATENCY_MS": "80"}, steps=((30, 3.0),)
    )
    assert not result.ok and "slower" in result.message, result
    for h, outcome in zip(fleet_hosts, outcomes, strict=True):
        assert_no_failures(outcome)
        assert set(outcome.statuses) == {200}, (h.net.name, outcome.summary())
        assert set(seen(outcome, after)) == {"v1"}, h.net.name
    assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v1")


async def test_a_new_leader_resumes_a_canary_at_its_step_instead_of_restarting_it(
    fleet: tuple[EtcdCluster, list[FleetHost]],
) -> None:
    cluster, fleet_hosts = fleet
    steps = ((20, 2.0), (50, 8.0))
    async with Etcd(cluster.endpoints) as etcd:
        assert (await roll_out(etcd, release("v1", "f1"), NAMES, configs=configs(fleet_hosts))).ok
        loads = [
            await Load().start(
                h.url, concurrency=2, max_requests=200_000, max_seconds=240, delay=0.005
            )
            for h in fleet_hosts
        ]
        first = asyncio.get_running_loop().create_task(
            host_canary(etcd, request(fleet_hosts, steps), "leader1")
        )
        deadline = asyncio.get_running_loop().time() + 120
        while True:  # the first leader reaches the second step, then dies
            kv = await etcd.get(DEPLOYMENTS + "shop")
            step = json.loads(kv.value).get("canary", {}) if kv is not None else {}
            if step.get("step") == 1:
                break
            assert not first.done(), first.result()
            assert asyncio.get_running_loop().time() < deadline, "the canary never got to 50%"
            await asyncio.sleep(0.1)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        result = await host_canary(etcd, request(fleet_hosts, steps), "leader2")
        outcomes = [await load.stop() for load in loads]
        assert result.ok, result
        for name in NAMES:
            kv = await etcd.get(keys.progress_key(name, "shop"))
            assert kv is not None
            progress = keys.Progress.from_json(kv.value)
            # Each weight was applied once: the canary went on at 50%, not back to 20%.
            assert progress.steps.count("canary 20%") == 1, progress
            assert progress.steps.count("canary 50%") == 1, progress
    for outcome in outcomes:
        assert_no_failures(outcome)
    assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v2")


async def test_baton_deploy_with_the_canary_strategy_and_no_edges_runs_it_on_every_host(
    fleet: tuple[EtcdCluster, list[FleetHost]], tmp_path: Path
) -> None:
    cluster, fleet_hosts = fleet
    (tmp_path / "shared").mkdir()
    config = Host(tmp_path / "shared").config(
        {
            "hosts": NAMES,
            "proxy": {"listen": f"0.0.0.0:{PORT}"},
            "deploy": {
                "strategy": "canary",
                "canary": {
                    "steps": [{"weight": 30, "hold": "3s"}],
                    "stickiness": "none",
                    "analysis": {"min_requests": 20, "max_error_rate": "5%"},
                },
            },
        }
    )
    cli = fleet_hosts[0]

    async def deploy(version: str) -> Result:
        return await cli.baton(
            "deploy", "-c", str(config), "--version", version, "--env",
            f"APP_VERSION={version}", "--cluster", cluster.endpoints_text,
        )  # fmt: skip

    first = await deploy("v1")  # a first deploy: nothing to compare with, a plain rollout
    assert first.rc == 0, first
    loads = [
        await Load().start(h.url, concurrency=2, max_requests=200_000, max_seconds=240, delay=0.005)
        for h in fleet_hosts
    ]
    began = loads[0].marker("deploy")
    second = await deploy("v2")
    after = loads[0].marker("deployed")
    deadline = asyncio.get_running_loop().time() + 30
    while any(sum(s.sent >= after for s in load.timeline) < 20 for load in loads):
        assert asyncio.get_running_loop().time() < deadline, "no load after the deploy"
        await asyncio.sleep(0.05)
    outcomes = [await load.stop() for load in loads]
    assert second.rc == 0 and "a canary on every host at once" in second.out, second
    for name in NAMES:
        assert f"{name}: deploying canary 30%" in second.out, second
        assert f"{name}: done" in second.out, second
    for h, outcome in zip(fleet_hosts, outcomes, strict=True):
        assert_no_failures(outcome)
        during = seen(outcome, began, after)
        assert 0.05 < during.count("v2") / len(during) < 0.95, (h.net.name, outcome.summary())
        assert set(seen(outcome, after)) == {"v2"}, h.net.name
    assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v2")


@pytest.fixture
async def split_fleet(
    netlab: NetLab, tmp_path: Path
) -> AsyncIterator[tuple[EtcdCluster, list[FleetHost], list[FleetHost]]]:
    """Three hosts with the app role only and two with the controller role only: a leader
    can die without taking an app host with it."""

    def roles(net: NetHost) -> list[str]:
        return ["--roles", "app" if net.name in NAMES else "controller"]

    async with started_fleet(netlab, tmp_path, [*NAMES, "ctl1", "ctl2"], roles) as (
        etcd,
        started,
    ):
        yield etcd, started[:3], started[3:]


async def test_a_canary_whose_controller_is_killed_goes_on_at_its_step_under_a_new_leader(
    split_fleet: tuple[EtcdCluster, list[FleetHost], list[FleetHost]],
) -> None:
    cluster, app_hosts, controllers = split_fleet
    async with Etcd(cluster.endpoints) as etcd:
        await submit(etcd, keys.DeployRequest(release("v1", "f1"), tuple(NAMES),
                                              configs=configs(app_hosts)))  # fmt: skip
        assert (await fleet_outcome(etcd, "shop", "f1", 180))["state"] == "succeeded"
        for h in app_hosts:
            cfg = yaml.safe_load((h.root / "baton.yml").read_text())
            cfg.setdefault("deploy", {})["canary"] = {"stickiness": "none"}
            (h.root / "baton.yml").write_text(yaml.safe_dump(cfg))
        loads = [
            await Load().start(
                h.url, concurrency=2, max_requests=200_000, max_seconds=240, delay=0.005
            )
            for h in app_hosts
        ]
        await submit(etcd, request(app_hosts, ((20, 2.0), (50, 6.0))))
        deadline = asyncio.get_running_loop().time() + 120
        while True:  # the canary is at its second step: then its controller dies
            kv = await etcd.get(DEPLOYMENTS + "shop")
            record = json.loads(kv.value) if kv is not None else {}
            if record.get("deployment") == "f2" and record.get("canary", {}).get("step") == 1:
                break
            assert asyncio.get_running_loop().time() < deadline, "the canary never got to 50%"
            await asyncio.sleep(0.1)
        boss = await leader(etcd)
        killed = next(h for h in controllers if h.net.name == boss)
        assert killed.server_pid is not None
        os.kill(killed.server_pid, signal.SIGKILL)
        final = await fleet_outcome(etcd, "shop", "f2", 180)
        assert await leader(etcd) not in (None, boss)
        outcomes = [await load.stop() for load in loads]
        assert final["state"] == "succeeded", final
        for name in NAMES:
            kv = await etcd.get(keys.progress_key(name, "shop"))
            assert kv is not None
            progress = keys.Progress.from_json(kv.value)
            assert progress.steps.count("canary 20%") == 1, progress  # not started again
            assert progress.steps.count("canary 50%") == 1, progress
    for seen_by in outcomes:
        assert_no_failures(seen_by)
    assert await served_by_each(app_hosts) == dict.fromkeys(NAMES, "v2")
