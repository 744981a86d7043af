"""A fleet under continuous load: clients on every host's address (the netns lab's private
subnet) while a release rolls across the three hosts, and not one request fails."""

from __future__ import annotations

import asyncio

from baton.cluster.etcd import Etcd
from baton.cluster.rollout import roll_out
from tests.support.etcd import EtcdCluster
from tests.support.fleet import (
    NAMES,
    FleetHost,
    configs,
    release,
    served_by_each,
)
from tests.support.host import assert_no_failures
from tests.support.load import Load


async def test_a_rolling_deploy_across_three_hosts_under_load_fails_no_request(
    fleet: tuple[EtcdCluster, list[FleetHost]],
) -> None:
    cluster, fleet_hosts = fleet
    async with Etcd(cluster.endpoints) as etcd:
        first = await roll_out(etcd, release("v1", "f1"), NAMES, configs=configs(fleet_hosts))
        assert first.ok, first
        loads = [
            await Load().start(
                h.url, concurrency=2, max_requests=200_000, max_seconds=180, delay=0.005
            )
            for h in fleet_hosts
        ]
        second = await roll_out(etcd, release("v2", "f2"), NAMES, configs=configs(fleet_hosts))
        cutover = loads[0].marker("rolled out")
        deadline = asyncio.get_running_loop().time() + 30
        while any(sum(x.sent >= cutover for x in load.timeline) < 20 for load in loads):
            assert asyncio.get_running_loop().time() < deadline, "no load after the rollout"
            await asyncio.sleep(0.05)
        results = [await load.stop() for load in loads]
    assert second.ok and second.done == NAMES, second
    for h, result in zip(fleet_hosts, results, strict=True):
        assert_no_failures(result)
        assert {b.split()[0] for b in result.bodies} == {"v1", "v2"}, (h.net.name, result.summary())
        assert {s.body.split()[0] for s in result.timeline if s.sent >= cutover and s.body} == {
            "v2"
        }, h.net.name
    assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v2")
