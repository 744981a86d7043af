"""Edges routing straight to instances, in namespaces: three app hosts started with
``--instance-ip`` (their instances listen on their private addresses and are published in
their host records) and one edge. A blue-green through the edge stages the new release on
every host, then one edge-route revision cuts every edge over: every host stays in the
edge's rotation throughout, under continuous load."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from baton.cluster.controller import outcome, submit
from baton.cluster.cutover import edge_blue_green
from baton.cluster.edge import EdgeRoute, published
from baton.cluster.election import leader
from baton.cluster.etcd import Etcd
from baton.cluster.rollout import DEPLOYMENTS
from tests.support.etcd import EtcdCluster
from tests.support.fleet import (
    CONTROLLERS,
    NAMES,
    PORT,
    FleetHost,
    instance_request,
    load_seen,
    served_by_each,
    started_instance_fleet,
)
from tests.support.host import assert_no_failures
from tests.support.load import Load, LoadResult
from tests.support.netns import NetLab


@pytest.fixture
async def fleet(
    netlab: NetLab, tmp_path: Path
) -> AsyncIterator[tuple[EtcdCluster, list[FleetHost]]]:
    """App hosts with ``--instance-ip`` and controller-only hosts (``started_instance_fleet``)."""
    async with started_instance_fleet(netlab, tmp_path) as started:
        yield started


def answered_by(outcome: LoadResult, start: float, end: float) -> list[set[str]]:
    """For each second between ``start`` and ``end``: the hosts whose instances answered."""
    seconds: list[set[str]] = []
    t = start
    while t + 1.0 <= end:
        seconds.append(
            {s.body.strip().split("@")[1] for s in outcome.timeline
             if s.body and "@" in s.body and t <= s.sent < t + 1.0}
        )  # fmt: skip
        t += 1.0
    return seconds


def _versions_after_first_v2(outcome: LoadResult) -> set[str]:
    first_v2 = min(s.t for s in outcome.timeline if s.body and s.body.startswith("v2"))
    return {s.body.split("@")[0] for s in outcome.timeline if s.sent >= first_v2 and s.body}


async def test_a_blue_green_at_the_edges_keeps_every_host_in_rotation_and_cuts_over_once(
    fleet: tuple[EtcdCluster, list[FleetHost]], edge: FleetHost
) -> None:
    cluster, fleet_hosts = fleet
    listen = f"{edge.net.address}:{PORT}"
    async with Etcd(cluster.endpoints) as etcd:
        first = await edge_blue_green(
            etcd, instance_request("v1", "f1", fleet_hosts, listen), "test"
        )
        assert first.ok, first
        route = await published(etcd, "shop")
        assert route is not None and route.instances, route  # straight to the instances
        load = await Load().start(
            edge.url, concurrency=4, max_requests=400_000, max_seconds=240, delay=0.005
        )
        await load_seen(load, load.marker("v1 served"))
        for h in fleet_hosts:  # at the edges it is one blue-green whatever baton.yml says
            cfg = yaml.safe_load((h.root / "baton.yml").read_text())
            cfg["deploy"]["strategy"] = "rolling"
            (h.root / "baton.yml").write_text(yaml.safe_dump(cfg))
        began = load.marker("deploy")
        result = await edge_blue_green(
            etcd, instance_request("v2", "f2", fleet_hosts, listen), "test"
        )
        ended = load.marker("deployed")
        await load_seen(load, ended)
        outcome = await load.stop()
        kv = await etcd.get(DEPLOYMENTS + "shop")
        assert kv is not None
        record = json.loads(kv.value)
        route = await published(etcd, "shop")
    assert result.ok, result
    assert record["state"] == "succeeded" and record["step"] == "switching", record
    assert isinstance(record["cutover_revision"], int), record
    assert route is not None and route.version == "v2" and route.instances
    assert_no_failures(outcome)
    assert _versions_after_first_v2(outcome) == {"v2"}, outcome.summary()
    # Every host's instances answered in every second of the deploy: none left the rotation.
    seconds = answered_by(outcome, began, ended)
    assert seconds and all(hosts == set(NAMES) for hosts in seconds), seconds
    assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v2")
    for h in fleet_hosts:  # the old instances were stopped once the edges left them
        assert len(await h.running_instances()) == 2, h.net.name


async def test_a_release_failing_readiness_on_one_host_cuts_nothing_over(
    fleet: tuple[EtcdCluster, list[FleetHost]], edge: FleetHost
) -> None:
    cluster, fleet_hosts = fleet
    listen = f"{edge.net.address}:{PORT}"
    async with Etcd(cluster.endpoints) as etcd:
        first = await edge_blue_green(
            etcd, instance_request("v1", "f1", fleet_hosts, listen), "test"
        )
        assert first.ok, first
        before = {h.net.name: await h.running_instances() for h in fleet_hosts}
        web2 = fleet_hosts[1]
        cfg = yaml.safe_load((web2.root / "baton.yml").read_text())
        cfg["run"]["env"]["FAIL_ON_START"] = "1"  # v2 cannot start on web2
        (web2.root / "baton.yml").write_text(yaml.safe_dump(cfg))
        load = await Load().start(
            edge.url, concurrency=4, max_requests=400_000, max_seconds=240, delay=0.005
        )
        await load_seen(load, load.marker("v1 served"))
        result = await edge_blue_green(
            etcd, instance_request("v2", "f2", fleet_hosts, listen), "test"
        )
        await load_seen(load, load.marker("failed"))
        outcome = await load.stop()
        route = await published(etcd, "shop")
        kv = await etcd.get(DEPLOYMENTS + "shop")
        assert kv is not None
        record = json.loads(kv.value)
    assert not result.ok and "web2" in result.message, result
    assert "nothing was cut over" in result.message, result
    assert record["state"] == "failed" and record["cutover_revision"] is None, record
    assert route == EdgeRoute("shop", listen, tuple(NAMES), "v1", "/up", instances=True)
    assert_no_failures(outcome)
    assert {s.body.split("@")[0] for s in outcome.timeline if s.body} == {"v1"}, outcome.summary()
    assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v1")
    for h in fleet_hosts:  # the staged v2 instances were stopped again
        assert await h.running_instances() == before[h.net.name], h.net.name


async def test_a_new_leader_resumes_the_staged_blue_green_at_its_step(
    fleet: tuple[EtcdCluster, list[FleetHost]], edge: FleetHost, tmp_path: Path
) -> None:
    """The leader dies while the edges drain a slow request to the old release: the next
    leader goes on from the recorded step (same cutover revision), the slow request is
    answered by the old release, and the fleet ends on the new one."""
    cluster, fleet_hosts = fleet
    listen = f"{edge.net.address}:{PORT}"
    async with Etcd(cluster.endpoints) as etcd:
        await submit(etcd, instance_request("v1", "f1", fleet_hosts, listen))
        assert (await outcome(etcd, "shop", "f1", 180))["state"] == "succeeded"
        boss = await leader(etcd)
        assert boss in CONTROLLERS
        load = await Load().start(
            edge.url, concurrency=4, max_requests=400_000, max_seconds=240, delay=0.005
        )
        slow = asyncio.ensure_future(edge.get("/slow?s=7"))  # in flight at the cutover
        await submit(etcd, instance_request("v2", "f2", fleet_hosts, listen))
        deadline = asyncio.get_running_loop().time() + 120
        while True:  # cut over, the edges still have the slow request to v1 in flight
            kv = await etcd.get(DEPLOYMENTS + "shop")
            record = json.loads(kv.value) if kv is not None else {}
            if record.get("deployment") == "f2" and record.get("step") == "draining":
                break
            assert not slow.done(), "the slow request ended before the cutover"
            assert asyncio.get_running_loop().time() < deadline, record
            await asyncio.sleep(0.05)
        cut = record["cutover_revision"]
        pid = int((tmp_path / boss / "state" / "server.pid").read_text())
        os.kill(pid, signal.SIGKILL)  # the controller dies mid-deploy
        final = await outcome(etcd, "shop", "f2", 180)
        assert await leader(etcd) not in (None, boss)
        status, body = await asyncio.wait_for(slow, 60)
        await load_seen(load, load.marker("deployed"))
        outcome_ = await load.stop()
    assert final["state"] == "succeeded", final
    assert final["cutover_revision"] == cut, final  # resumed, not cut over again
    assert (status, body.split("@")[0]) == (200, "v1"), body
    assert_no_failures(outcome_)
    assert _versions_after_first_v2(outcome_) == {"v2"}, outcome_.summary()
    assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v2")
