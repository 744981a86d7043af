"""A rolling deploy behind an edge, in namespaces: three app hosts and one edge (each its own
daemon and proxy, etcd on the lab's gateway). ``baton deploy`` of an app with ``edge.listen``
and ``deploy.strategy: rolling`` moves the hosts one at a time while the edge keeps routing
to every host's proxy, under continuous load through the edge; a release failing on the
second host puts the first back, and no request fails either way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from baton.cluster import keys
from baton.cluster.edge import published
from baton.cluster.etcd import Etcd
from baton.cluster.rollout import DEPLOYMENTS
from tests.support.etcd import EtcdCluster
from tests.support.fleet import (
    NAMES,
    PORT,
    FleetHost,
    events_since,
    in_flight,
    load_seen,
    load_through,
    moved_deployment,
    served_by_each,
)
from tests.support.host import Host, Result, assert_no_failures

ROLLING: dict[str, Any] = {"deploy": {"strategy": "rolling", "hosts_at_once": 1}}


class RollingApp:
    """One baton.yml for the fleet (the app's hosts, ``edge``'s listen address, rolling one
    host at a time), deployed with ``baton deploy`` run on ``cli``."""

    def __init__(self, cluster: EtcdCluster, cli: FleetHost, edge: FleetHost, root: Path) -> None:
        self.cluster, self.cli = cluster, cli
        base: dict[str, Any] = {
            "hosts": NAMES,
            "proxy": {"listen": f"0.0.0.0:{PORT}"},
            "edge": {"listen": f"{edge.net.address}:{PORT}"},
            **ROLLING,
        }
        root.mkdir()
        shared = Host(root)
        self.config = shared.config(base)
        # The same app whose release cannot start (for ``--host-config HOST=this``).
        self.failing = shared.config(
            {**base, "run": {"env": {"FAIL_ON_START": "1"}}}, "failing.yml"
        )

    async def deploy(self, version: str, *flags: str) -> Result:
        return await self.cli.baton(
            "deploy", "-c", str(self.config), "--version", version, "--env",
            f"APP_VERSION={version}", "--cluster", self.cluster.endpoints_text, *flags,
        )  # fmt: skip


async def test_baton_deploy_rolls_the_hosts_one_at_a_time_behind_the_edge_under_load(
    fleet: tuple[EtcdCluster, list[FleetHost]], edge: FleetHost, tmp_path: Path
) -> None:
    cluster, fleet_hosts = fleet
    app = RollingApp(cluster, fleet_hosts[0], edge, tmp_path / "shared")
    first = await app.deploy("v1")  # no edge route yet: the hosts roll, then the edge's route
    assert first.rc == 0 and "rolling through the edges" in first.out, first
    assert (await edge.get("/"))[1].startswith("v1")
    async with Etcd(cluster.endpoints) as etcd:
        _, start = await etcd.get_prefix(keys.CONTROLLER)
        load = await load_through(edge)
        began = load.marker("deploy")
        second = await app.deploy("v2")
        after = load.marker("deployed")
        await load_seen(load, after)
        outcome = await load.stop()
        assert second.rc == 0, second
        deployment = moved_deployment(second.out)
        flight = in_flight(await events_since(etcd, start + 1), deployment + "-rolling")
        route = await published(etcd, "shop")
        kv = await etcd.get(DEPLOYMENTS + "shop")
    assert_no_failures(outcome)
    # One host at a time, from etcd's history: each switched once the one before was done.
    assert flight.moved == NAMES and flight.most == 1, flight
    assert flight.ended["web1"] < flight.switched["web2"], flight
    assert flight.ended["web2"] < flight.switched["web3"], flight
    during = {s.body.split()[0] for s in outcome.timeline if s.body and began <= s.sent < after}
    assert during == {"v1", "v2"}, outcome.summary()  # both answered: it was rolling
    late = {s.body.split()[0] for s in outcome.timeline if s.body and s.sent >= after}
    assert late == {"v2"}, outcome.summary()
    assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v2")
    # The edge kept routing to every host; its route now names the release the fleet serves.
    assert route is not None and route.hosts == tuple(NAMES) and route.version == "v2", route
    assert kv is not None  # the outcome, recorded under the request's deployment id
    record = json.loads(kv.value)
    assert record["deployment"] == deployment and record["state"] == "succeeded", record
    assert record["strategy"] == "edge-rolling" and record["done"] == NAMES, record


async def test_a_rolling_release_failing_on_the_second_host_puts_the_first_back_under_load(
    fleet: tuple[EtcdCluster, list[FleetHost]], edge: FleetHost, tmp_path: Path
) -> None:
    cluster, fleet_hosts = fleet
    app = RollingApp(cluster, fleet_hosts[0], edge, tmp_path / "shared")
    assert (await app.deploy("v1")).rc == 0
    async with Etcd(cluster.endpoints) as etcd:
        _, start = await etcd.get_prefix(keys.CONTROLLER)
        load = await load_through(edge)
        failed = await app.deploy("v2", "--host-config", f"web2={app.failing}")
        after = load.marker("failed")
        await load_seen(load, after, what="the failed deploy")
        outcome = await load.stop()
        assert failed.rc == 1, failed
        deployment = moved_deployment(failed.out)
        flight = in_flight(await events_since(etcd, start + 1), deployment + "-rolling")
        route = await published(etcd, "shop")
        kv = await etcd.get(DEPLOYMENTS + "shop")
    assert_no_failures(outcome)
    assert flight.moved == ["web1", "web2"] and flight.most == 1, flight  # web3 never moved
    assert kv is not None
    record = json.loads(kv.value)
    assert record["deployment"] == deployment and record["state"] == "failed", record
    assert "web2" in record["message"] and record["reverted"] == ["web1", "web2"], record
    late = {s.body.split()[0] for s in outcome.timeline if s.body and s.sent >= after}
    assert late == {"v1"}, outcome.summary()
    assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v1")
    assert route is not None and route.version == "v1" and route.hosts == tuple(NAMES), route


async def test_max_unavailable_hosts_through_the_edges_is_refused_unless_rolling(
    host: Host,
) -> None:
    """Blue-green and canary at the edges take half the hosts out of rotation by design: a
    bound on unavailable hosts cannot hold there, so it is refused before the fleet is asked
    (the cluster named here does not even answer)."""
    edges = {"hosts": NAMES, "edge": {"listen": "127.0.0.1:9"}}
    bad = host.config({**edges, "deploy": {"max_unavailable_hosts": 2}}, "bad.yml")
    good = host.config(
        {**edges, "deploy": {"strategy": "rolling", "max_unavailable_hosts": 2}}, "rolling.yml"
    )

    async def deploy(config: Path, *flags: str) -> Result:
        return await host.baton(
            "deploy", "-c", str(config), "--version", "v2", "--cluster", "http://127.0.0.1:9",
            *flags,
        )  # fmt: skip

    refused = await deploy(bad)
    said = refused.out + refused.err
    assert refused.rc == 2, refused
    assert "deploy.max_unavailable_hosts" in said and "bad.yml" in said, refused
    assert "edge.listen and deploy.strategy blue-green" in said, refused
    overridden = await deploy(good, "--strategy", "blue-green")
    said = overridden.out + overridden.err
    assert overridden.rc == 2 and "use --strategy rolling" in said, overridden
