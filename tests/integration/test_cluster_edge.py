"""Edge proxies in namespaces: three app hosts and one edge (each its own daemon and proxy,
etcd on the lab's gateway). Clients reach the app only through the edge, on its private
address; a blue-green deploy across the fleet is one cutover of the edge's table, from one
etcd revision, under continuous load."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from baton.cluster import keys
from baton.cluster.cutover import CutoverResult, blue_green
from baton.cluster.edge import EdgeRoute, edge_key, publish, published, wait_applied
from baton.cluster.etcd import Etcd
from baton.cluster.fleetcanary import canary, edge_canary
from baton.cluster.rollout import DEPLOYMENTS, roll_out
from tests.support.etcd import EtcdCluster
from tests.support.fleet import (
    NAMES,
    PORT,
    FleetHost,
    configs,
    kill_daemon,
    load_seen,
    load_through,
    release,
    served_by_each,
)
from tests.support.host import Host, Result, assert_no_failures
from tests.support.load import LoadResult


def set_env(h: FleetHost, env: dict[str, str]) -> None:
    """Add ``env`` to the app's environment in ``h``'s own baton.yml (its next release)."""
    cfg = yaml.safe_load((h.root / "baton.yml").read_text())
    cfg["run"]["env"].update(env)
    (h.root / "baton.yml").write_text(yaml.safe_dump(cfg))


async def v1_behind_the_edge(
    etcd: Etcd, fleet_hosts: list[FleetHost], edge: FleetHost, version: str = "v1"
) -> int:
    """v1 on every host, then the edge route to all of them (``version`` names the edge's
    release) applied by every edge; the route's revision."""
    assert (await roll_out(etcd, release("v1", "f1"), NAMES, configs=configs(fleet_hosts))).ok
    route = EdgeRoute("shop", f"{edge.net.address}:{PORT}", tuple(NAMES), version)
    revision = await publish(etcd, route)
    await wait_applied(etcd, revision, 30)
    return revision


def edge_app_deploy(
    cluster: EtcdCluster, cli: FleetHost, edge: FleetHost, root: Path, extra: dict[str, Any]
) -> Callable[[str], Awaitable[Result]]:
    """``baton deploy`` (run on ``cli``) of a shared baton.yml naming the fleet's hosts and
    ``edge``'s listen address, plus ``extra``: a function of the version."""
    root.mkdir()
    base = {"hosts": NAMES, "proxy": {"listen": f"0.0.0.0:{PORT}"}}
    config = Host(root).config({**base, "edge": {"listen": f"{edge.net.address}:{PORT}"}, **extra})

    async def deploy(version: str) -> Result:
        return await cli.baton(
            "deploy", "-c", str(config), "--version", version, "--env",
            f"APP_VERSION={version}", "--cluster", cluster.endpoints_text,
        )  # fmt: skip

    return deploy


async def test_blue_green_across_the_fleet_is_one_cutover_at_the_edge_under_load(
    fleet: tuple[EtcdCluster, list[FleetHost]], edge: FleetHost
) -> None:
    cluster, fleet_hosts = fleet
    listen = f"{edge.net.address}:{PORT}"
    async with Etcd(cluster.endpoints) as etcd:
        await v1_behind_the_edge(etcd, fleet_hosts, edge)
        load = await load_through(edge)
        await load_seen(load, 0.0, what="the start")  # the edge answers before anything moves
        result = await blue_green(
            etcd, release("v2", "f2"), NAMES, listen=listen, previous="v1",
            configs=configs(fleet_hosts),
        )  # fmt: skip
        await load_seen(load, load.marker("done"))
        # A route naming a host that never joined is refused by the edge: it keeps routing.
        await publish(etcd, EdgeRoute("shop", listen, ("web1", "ghost"), "v2"))
        await load_seen(load, load.marker("bad route"), what="the bad route")
        outcome = await load.stop()
    assert result.ok, result
    assert result.green == ["web1", "web2"] and result.blue == ["web3"]
    assert_no_failures(outcome)
    versions = [
        s.body.strip().split()[0] for s in sorted(outcome.timeline, key=lambda s: s.t) if s.body
    ]
    assert set(versions) == {"v1", "v2"}, outcome.summary()
    # One cutover: once a client got v2, every request sent afterwards got v2 too.
    first_v2 = min(s.t for s in outcome.timeline if s.body and s.body.startswith("v2"))
    late = {s.body.split()[0] for s in outcome.timeline if s.sent >= first_v2 and s.body}
    assert late == {"v2"}, outcome.summary()
    assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v2")


async def test_baton_deploy_of_an_app_behind_edges_is_one_cutover_under_load(
    fleet: tuple[EtcdCluster, list[FleetHost]], edge: FleetHost, tmp_path: Path
) -> None:
    cluster, fleet_hosts = fleet
    deploy = edge_app_deploy(cluster, fleet_hosts[0], edge, tmp_path / "shared", {})
    first = await deploy("v1")  # no edge route yet: a plain rollout, then the edges' route
    assert first.rc == 0, first
    assert "blue-green through the edges" in first.out, first
    assert (await edge.get("/"))[1].startswith("v1")
    load = await load_through(edge)
    second = await deploy("v2")
    await load_seen(load, load.marker("deployed"))
    outcome = await load.stop()
    assert second.rc == 0, second
    for name in NAMES:
        assert f"{name}: done" in second.out, second
    assert_no_failures(outcome)
    first_v2 = min(s.t for s in outcome.timeline if s.body and s.body.startswith("v2"))
    late = {s.body.split()[0] for s in outcome.timeline if s.sent >= first_v2 and s.body}
    assert late == {"v2"}, outcome.summary()
    assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v2")


async def test_a_release_failing_on_green_leaves_the_whole_fleet_on_the_old_one_under_load(
    fleet: tuple[EtcdCluster, list[FleetHost]], edge: FleetHost
) -> None:
    cluster, fleet_hosts = fleet
    listen = f"{edge.net.address}:{PORT}"
    async with Etcd(cluster.endpoints) as etcd:
        await v1_behind_the_edge(etcd, fleet_hosts, edge)
        set_env(fleet_hosts[1], {"FAIL_ON_START": "1"})  # v2 cannot start on web2, a green host
        load = await load_through(edge)
        result = await blue_green(
            etcd, release("v2", "f2"), NAMES, listen=listen, previous="v1",
            configs=configs(fleet_hosts),
        )  # fmt: skip
        await load_seen(load, load.marker("failed"))
        outcome = await load.stop()
        assert not result.ok and "web2" in result.message, result
        assert result.cutover_revision is None
        back = await etcd.get("/baton/edges/shop")
        assert back is not None and EdgeRoute.from_json(back.value).hosts == tuple(NAMES)
    assert_no_failures(outcome)
    assert {s.body.split()[0] for s in outcome.timeline if s.body} == {"v1"}, outcome.summary()
    assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v1")


async def test_a_rolling_deploy_behind_the_edge_and_a_failing_one_fail_no_request(
    fleet: tuple[EtcdCluster, list[FleetHost]], edge: FleetHost
) -> None:
    cluster, fleet_hosts = fleet
    async with Etcd(cluster.endpoints) as etcd:
        await v1_behind_the_edge(etcd, fleet_hosts, edge, version="fleet")
        load = await load_through(edge)
        rolled = await roll_out(etcd, release("v2", "f2"), NAMES, configs=configs(fleet_hosts))
        assert rolled.ok, rolled  # one host at a time, each switching behind the edge
        set_env(fleet_hosts[1], {"FAIL_ON_START": "1"})  # v3 cannot start on the 2nd host
        failed = await roll_out(etcd, release("v3", "f3"), NAMES, configs=configs(fleet_hosts))
        after = load.marker("unwound")
        await load_seen(load, after, what="the deploys")
        outcome = await load.stop()
    assert not failed.ok and failed.reverted == ["web1", "web2"], failed
    assert_no_failures(outcome)
    assert {s.body.split()[0] for s in outcome.timeline if s.body} >= {"v1", "v2"}
    assert {s.body.split()[0] for s in outcome.timeline if s.body and s.sent >= after} == {"v2"}
    assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v2")


async def test_an_app_host_that_dies_leaves_the_edges_rotation_without_failed_requests(
    fleet: tuple[EtcdCluster, list[FleetHost]], edge: FleetHost
) -> None:
    cluster, fleet_hosts = fleet
    async with Etcd(cluster.endpoints) as etcd:
        await v1_behind_the_edge(etcd, fleet_hosts, edge)
    load = await load_through(edge)
    web3 = fleet_hosts[2]
    for pid in (web3.server_pid, web3.proxy_pid):  # the daemon first: it would restart it
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    after = load.marker("web3 died")
    deadline = asyncio.get_running_loop().time() + 30
    while sum(s.sent >= after for s in load.timeline) < 300:
        assert asyncio.get_running_loop().time() < deadline, "the edge stopped answering"
        await asyncio.sleep(0.05)
    outcome = await load.stop()
    assert_no_failures(outcome)
    assert {s.body for s in outcome.timeline if s.sent >= after} == {"v1\n"}


async def canary_under_load(
    cluster: EtcdCluster, fleet_hosts: list[FleetHost], edge: FleetHost, green_env: dict[str, str]
) -> tuple[CutoverResult, LoadResult, float, float]:
    """v1 everywhere, then a canary of v2 at 30% through the edge under load; the result,
    what the clients saw, when the canary step began and when it all ended."""
    listen = f"{edge.net.address}:{PORT}"
    async with Etcd(cluster.endpoints) as etcd:
        await v1_behind_the_edge(etcd, fleet_hosts, edge)
        for h in fleet_hosts[:2]:  # the green hosts
            set_env(h, green_env)
        load = await load_through(edge)
        began = load.marker("canary")
        result = await canary(
            etcd, release("v2", "f2"), NAMES, listen=listen, previous="v1",
            steps=[(30, 4.0)], max_error_rate=0.05, configs=configs(fleet_hosts),
        )  # fmt: skip
        after = load.marker("ended")
        await load_seen(load, after, what="the canary")
        return result, await load.stop(), began, after


async def test_a_canary_across_the_fleet_splits_every_edges_traffic_then_cuts_over(
    fleet: tuple[EtcdCluster, list[FleetHost]], edge: FleetHost
) -> None:
    cluster, fleet_hosts = fleet
    result, outcome, began, after = await canary_under_load(cluster, fleet_hosts, edge, {})
    assert result.ok and result.cutover_revision is not None, result
    assert_no_failures(outcome)
    assert set(outcome.statuses) == {200}, outcome.summary()
    during = [s.body.split()[0] for s in outcome.timeline if s.body and began <= s.sent < after]
    share = during.count("v2") / len(during)
    assert 0.05 < share < 0.95, outcome.summary()  # both releases answered at the edge
    assert {s.body.split()[0] for s in outcome.timeline if s.body and s.sent >= after} == {"v2"}
    assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v2")


@pytest.mark.parametrize(
    ("green_env", "why"),
    [
        # On the fleet's summed figures: answers, some of them the canary's 500s.
        ({"ERROR_RATE": "0.5"}, "canary at 30%: error rate"),
        # By the latency rule: slow, but every answer fine.
        ({"LATENCY_MS": "80"}, "canary at 30%: slower"),
    ],
    ids=["errors", "latency"],
)
async def test_a_failing_canary_at_the_edges_leaves_every_host_on_the_old_one(
    fleet: tuple[EtcdCluster, list[FleetHost]], edge: FleetHost, green_env: dict[str, str], why: str
) -> None:
    cluster, fleet_hosts = fleet
    result, outcome, _, after = await canary_under_load(cluster, fleet_hosts, edge, green_env)
    assert not result.ok and why in result.message, result
    assert result.cutover_revision is None
    assert_no_failures(outcome)  # no broken answers
    if "ERROR_RATE" in green_env:
        assert 500 in outcome.statuses, outcome.summary()
    else:
        assert set(outcome.statuses) == {200}, outcome.summary()
    late = {s.body.split()[0] for s in outcome.timeline if s.body and s.sent >= after}
    assert late == {"v1"}, outcome.summary()
    assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v1")


async def test_baton_deploy_with_the_canary_strategy_runs_it_at_the_edges_under_load(
    fleet: tuple[EtcdCluster, list[FleetHost]], edge: FleetHost, tmp_path: Path
) -> None:
    cluster, fleet_hosts = fleet
    canary_deploy = {
        "strategy": "canary",
        "canary": {
            "steps": [{"weight": 30, "hold": "4s"}],
            "analysis": {"min_requests": 20, "max_error_rate": "5%"},
        },
    }
    deploy = edge_app_deploy(
        cluster, fleet_hosts[0], edge, tmp_path / "shared", {"deploy": canary_deploy}
    )
    first = await deploy("v1")
    assert first.rc == 0, first
    load = await load_through(edge)
    began = load.marker("deploy")
    second = await deploy("v2")
    after = load.marker("deployed")
    await load_seen(load, after)
    outcome = await load.stop()
    assert second.rc == 0 and "a canary through the edges" in second.out, second
    assert_no_failures(outcome)
    during = [s.body.split()[0] for s in outcome.timeline if s.body and began <= s.sent < after]
    assert 0.05 < during.count("v2") / len(during) < 0.95, outcome.summary()
    assert {s.body.split()[0] for s in outcome.timeline if s.body and s.sent >= after} == {"v2"}
    assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v2")


async def test_a_new_leader_resumes_a_canary_at_the_edges_at_its_step(
    fleet: tuple[EtcdCluster, list[FleetHost]], edge: FleetHost
) -> None:
    cluster, fleet_hosts = fleet
    listen = f"{edge.net.address}:{PORT}"
    async with Etcd(cluster.endpoints) as etcd:
        since = await v1_behind_the_edge(etcd, fleet_hosts, edge)
        load = await load_through(edge)
        request = keys.DeployRequest(
            release("v2", "f2"), tuple(NAMES), configs=configs(fleet_hosts), edge=listen,
            canary=((20, 2.0), (50, 8.0)), canary_max_error_rate=0.05, canary_min_requests=20,
        )  # fmt: skip
        first = asyncio.get_running_loop().create_task(edge_canary(etcd, request, "leader1"))
        deadline = asyncio.get_running_loop().time() + 120
        while True:  # the first leader reaches the second step, then dies
            kv = await etcd.get(DEPLOYMENTS + "shop")
            record = json.loads(kv.value) if kv is not None else {}
            if record.get("deployment") == "f2" and record.get("canary", {}).get("step") == 1:
                break
            assert not first.done(), first.result()
            assert asyncio.get_running_loop().time() < deadline, "the canary never got to 50%"
            await asyncio.sleep(0.1)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        result = await edge_canary(etcd, request, "leader2")
        outcome = await load.stop()
        weights: list[int] = []  # every edge route published since v1's, in order
        changes = etcd.watch("/baton/edges/shop", since + 1)
        try:
            while True:
                _, events = await asyncio.wait_for(anext(changes), 2.0)
                weights += [EdgeRoute.from_json(e.kv.value).canary_weight for e in events]
        except TimeoutError:
            pass
        finally:
            await changes.aclose()
    assert result.ok, result
    # Green out of rotation, 20%, 50%, the cutover, every host: nothing published twice.
    assert weights == [0, 20, 50, 0, 0], weights
    assert_no_failures(outcome)
    assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v2")


async def test_a_canary_at_the_edges_with_an_app_host_down_fails_unchanged_or_skips_it(
    fleet: tuple[EtcdCluster, list[FleetHost]], edge: FleetHost
) -> None:
    cluster, fleet_hosts = fleet
    listen = f"{edge.net.address}:{PORT}"
    web3 = fleet_hosts[2]

    def request(version: str, deployment: str, skip: bool) -> keys.DeployRequest:
        return keys.DeployRequest(
            release(version, deployment), tuple(NAMES), configs=configs(fleet_hosts),
            edge=listen, canary=((30, 4.0),), canary_max_error_rate=0.05,
            canary_min_requests=20, skip_unreachable=skip,
        )  # fmt: skip

    async with Etcd(cluster.endpoints) as etcd:
        since = await v1_behind_the_edge(etcd, fleet_hosts, edge)
        await kill_daemon(etcd, web3)  # its proxy still answers, v1, through the edge
        failed = await edge_canary(etcd, request("v2", "f2", False), "test")
        assert not failed.ok, failed
        assert "web3 unreachable when the canary began; nothing changed" in failed.message
        kv = await etcd.get(edge_key("shop"))
        assert kv is not None and kv.mod_revision == since  # the edges' route never moved
        assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v1")

        load = await load_through(edge)
        began = load.marker("canary")
        skipped = await edge_canary(etcd, request("v3", "f3", True), "test")
        after = load.marker("ended")
        await load_seen(load, after, what="the canary")
        outcome = await load.stop()
        assert skipped.ok and skipped.skipped == ["web3"], skipped
        assert "skipped (unreachable, left out of the edges' route): web3" in skipped.message
        route = await published(etcd, "shop")
        assert route is not None and (route.hosts, route.version) == (("web1", "web2"), "v3")
    assert_no_failures(outcome)
    during = [s.body.split()[0] for s in outcome.timeline if s.body and began <= s.sent < after]
    assert "v1" in during and "v3" in during, outcome.summary()  # the two hosts split it
    assert {s.body.split()[0] for s in outcome.timeline if s.body and s.sent >= after} == {"v3"}
    served = await served_by_each(fleet_hosts)
    assert served == {"web1": "v3", "web2": "v3", "web3": "v1"}


async def test_a_green_host_lost_while_a_canary_step_is_held_at_the_edges_fails_it(
    fleet: tuple[EtcdCluster, list[FleetHost]], edge: FleetHost
) -> None:
    cluster, fleet_hosts = fleet
    listen = f"{edge.net.address}:{PORT}"
    request = keys.DeployRequest(
        release("v2", "f2"), tuple(NAMES), configs=configs(fleet_hosts), edge=listen,
        canary=((30, 120.0),), canary_max_error_rate=0.05, canary_min_requests=20,
    )  # fmt: skip
    async with Etcd(cluster.endpoints) as etcd:
        await v1_behind_the_edge(etcd, fleet_hosts, edge)
        load = await load_through(edge)
        running = asyncio.get_running_loop().create_task(edge_canary(etcd, request, "test"))
        deadline = asyncio.get_running_loop().time() + 120
        while True:  # the edges split the traffic, the step is held: a green host dies
            kv = await etcd.get(DEPLOYMENTS + "shop")
            record = json.loads(kv.value) if kv is not None else {}
            if record.get("deployment") == "f2" and "baseline" in record.get("canary", {}):
                break
            assert not running.done(), running.result()
            assert asyncio.get_running_loop().time() < deadline, "the canary never held a step"
            await asyncio.sleep(0.1)
        web1 = fleet_hosts[0]  # green (the first half): its proxy serves v2 to the split
        await kill_daemon(etcd, web1)
        result = await running
        after = load.marker("ended")
        await load_seen(load, after, what="the canary")
        outcome = await load.stop()
        assert not result.ok, result
        assert "canary at 30%: web1 became unreachable (its lease lapsed)" in result.message
        assert "web1: unreachable, not switched back, left out of the edges' route" in (
            result.message
        )
        route = await published(etcd, "shop")
        assert route is not None and (route.hosts, route.version) == (("web2", "web3"), "v1")
    assert_no_failures(outcome)
    assert {s.body.split()[0] for s in outcome.timeline if s.body and s.sent >= after} == {"v1"}
    assert await served_by_each(fleet_hosts[1:]) == {"web2": "v1", "web3": "v1"}
