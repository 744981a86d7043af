"""The staged blue-green's failure paths at the edges, in namespaces: three app hosts with
``--instance-ip`` and two edges, each its own daemon and proxy, real etcd.

- An edge that does not acknowledge the cutover (its proxy stopped, SIGSTOP: its daemon
  and lease live on, so it is a reachable edge that takes no table, until its daemon
  replaces the silent proxy, later than the cutover's time-out): the edges go back to
  the old release, the staged release is discarded, every host serves the old one, and no
  request through the other edge fails.
- A host whose own switch fails after the cutover (its staged release was discarded on the
  host while the controller was about to ask for the switch): the deployment fails naming
  it, and the fleet is consistent: every request through the edges is answered by the new
  release (the host's staged instances are gone, so the edges leave it out), the hosts that
  switched serve the new release, the failed one keeps serving its live (old) release on
  its own proxy, to which no edge routes.
- The controller's daemon frozen (SIGSTOP) while the edges drain after the cutover, until
  another controller finished the deployment: woken (SIGCONT), it writes no edge route,
  record or desired release, and the fleet is on the new release. (Woken, the daemon
  usually sees its lease gone before its rollout writes again; the write that comes first
  is refused by the fence: test_cluster_edge_fence.py forces that order.)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from baton.cluster.agent import LocalDaemon
from baton.cluster.controller import outcome, submit
from baton.cluster.cutover import edge_blue_green
from baton.cluster.edge import EdgeRoute, edge_key, published
from baton.cluster.election import leader
from baton.cluster.etcd import Etcd
from baton.cluster.instancecut import staged_blue_green
from baton.cluster.rollout import DEPLOYMENTS
from tests.support.etcd import EtcdCluster
from tests.support.fleet import (
    CONTROLLERS,
    NAMES,
    PORT,
    FleetHost,
    desired_revisions,
    instance_request,
    load_seen,
    load_through,
    served_by_each,
    started_edge,
    started_instance_fleet,
)
from tests.support.host import assert_no_failures
from tests.support.netns import NetLab


@pytest.fixture
async def fleet(
    netlab: NetLab, tmp_path: Path
) -> AsyncIterator[tuple[EtcdCluster, list[FleetHost]]]:
    """App hosts with ``--instance-ip`` and controller-only hosts (``started_instance_fleet``)."""
    async with started_instance_fleet(netlab, tmp_path) as started:
        yield started


LISTEN = f"0.0.0.0:{PORT}"  # every edge takes the app's traffic on its own address


async def answers(edge: FleetHost, version: str, count: int = 30, timeout: float = 30) -> None:
    """Wait until ``count`` requests in a row through ``edge`` are answered by ``version``."""
    deadline = asyncio.get_running_loop().time() + timeout
    run = 0
    last: object = None
    while run < count:
        assert asyncio.get_running_loop().time() < deadline, f"{edge.net.name}: {last}"
        try:
            last = await edge.get("/")
        except OSError as exc:
            last = exc
        if isinstance(last, tuple) and last[0] == 200 and last[1].startswith(version):
            run += 1
        else:
            run = 0
            await asyncio.sleep(0.1)


async def test_an_edge_that_does_not_apply_the_cutover_sends_the_fleet_back_to_the_old_release(
    fleet: tuple[EtcdCluster, list[FleetHost]], netlab: NetLab, tmp_path: Path
) -> None:
    cluster, fleet_hosts = fleet
    async with (
        started_edge(cluster, netlab, tmp_path, "edge1") as edge1,
        started_edge(cluster, netlab, tmp_path, "edge2") as edge2,
        Etcd(cluster.endpoints) as etcd,
    ):
        first = await edge_blue_green(
            etcd, instance_request("v1", "f1", fleet_hosts, LISTEN), "test"
        )
        assert first.ok, first
        for e in (edge1, edge2):
            await answers(e, "v1")
        before = {h.net.name: await h.running_instances() for h in fleet_hosts}
        load = await load_through(edge1)
        await load_seen(load, load.marker("v1 served"))
        proxy = edge2.proxy_pid
        assert proxy is not None
        os.kill(proxy, signal.SIGSTOP)  # edge2 stays reachable but applies no route
        try:
            result = await staged_blue_green(
                etcd, instance_request("v2", "f2", fleet_hosts, LISTEN), "test", apply_timeout=5
            )
        finally:  # its daemon may have replaced the silent proxy meanwhile
            with contextlib.suppress(ProcessLookupError):
                os.kill(proxy, signal.SIGCONT)
        failed = load.marker("failed")
        await load_seen(load, failed)
        outcome = await load.stop()
        route = await published(etcd, "shop")
        kv = await etcd.get(DEPLOYMENTS + "shop")
        assert kv is not None
        record = json.loads(kv.value)
        await answers(edge2, "v1")  # resumed or replaced, its proxy routes to v1
    assert not result.ok and "edge2 did not apply" in result.message, result
    assert "nothing was cut over" in result.message, result
    assert record["state"] == "failed" and record["cutover_revision"] is None, record
    assert route is not None and route.version == "v1" and route.instances, route
    assert_no_failures(outcome)  # through edge1, which applied the cutover and then went back
    late = {s.body.split("@")[0] for s in outcome.timeline if s.body and s.sent >= failed}
    assert late == {"v1"}, outcome.summary()
    assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v1")
    for h in fleet_hosts:  # the staged v2 instances were stopped again
        assert await h.running_instances() == before[h.net.name], h.net.name


class BeforeTheSwitch(Etcd):
    """The controller's etcd client, held just before it writes the hosts' ``switch``
    phase (as if its process were paused there) until the test lets it go on."""

    def __init__(self, endpoints: list[str]) -> None:
        super().__init__(endpoints)
        self.reached = asyncio.Event()
        self.go = asyncio.Event()

    async def _post(self, path: str, body: dict[str, Any], timeout: float | None = None) -> Any:
        if path == "/v3/kv/txn":
            puts = [op["request_put"] for op in body["success"] if "request_put" in op]
            if any(b'"phase": "switch"' in base64.b64decode(put["value"]) for put in puts):
                self.reached.set()
                await self.go.wait()
        return await super()._post(path, body, timeout)


async def test_a_host_whose_own_switch_fails_after_the_cutover_is_reported_on_a_consistent_fleet(
    fleet: tuple[EtcdCluster, list[FleetHost]], netlab: NetLab, tmp_path: Path
) -> None:
    cluster, fleet_hosts = fleet
    web3 = fleet_hosts[2]
    controller = BeforeTheSwitch(cluster.endpoints)
    try:
        async with started_edge(cluster, netlab, tmp_path, "edge1") as edge:
            first = await edge_blue_green(
                controller, instance_request("v1", "f1", fleet_hosts, LISTEN), "test"
            )
            assert first.ok, first
            await answers(edge, "v1")
            deploy = asyncio.create_task(
                staged_blue_green(
                    controller, instance_request("v2", "f2", fleet_hosts, LISTEN), "test"
                )
            )
            try:
                await asyncio.wait_for(controller.reached.wait(), 120)
                # Cut over: the edges route to every host's staged v2. On web3 the staged
                # release goes away before its switch (discarded on the host: what its
                # daemon's restart or deploy.stage_timeout would also do).
                daemon = LocalDaemon(web3.state_dir / "baton.sock")
                try:
                    async for _ in daemon.deploy("/staged/discard", {"app": "shop"}):
                        pass
                finally:
                    await daemon.close()
            finally:
                controller.go.set()
            result = await asyncio.wait_for(deploy, 120)
            await answers(edge, "v2")  # only v2 through the edge, web3 left out
            route = await published(controller, "shop")
            kv = await controller.get(DEPLOYMENTS + "shop")
            assert kv is not None
            record = json.loads(kv.value)
    finally:
        await controller.close()
    assert not result.ok, result
    assert "did not switch" in result.message and "web3" in result.message, result
    assert "web1" not in result.message and "web2" not in result.message, result
    assert record["state"] == "failed" and isinstance(record["cutover_revision"], int), record
    assert route is not None and route.version == "v2" and route.instances, route
    assert await served_by_each(fleet_hosts) == {"web1": "v2", "web2": "v2", "web3": "v1"}


async def test_a_controller_frozen_mid_cutover_writes_nothing_once_another_finished_it(
    fleet: tuple[EtcdCluster, list[FleetHost]], edge: FleetHost, tmp_path: Path
) -> None:
    cluster, fleet_hosts = fleet
    listen = f"{edge.net.address}:{PORT}"
    async with Etcd(cluster.endpoints) as etcd:
        await submit(etcd, instance_request("v1", "f1", fleet_hosts, listen))
        assert (await outcome(etcd, "shop", "f1", 180))["state"] == "succeeded"
        boss = await leader(etcd)
        assert boss in CONTROLLERS
        # In flight at the cutover, it keeps the edges draining; its 6 s stay well inside
        # FleetHost.get's 10 s time-out on a busy machine.
        slow = asyncio.ensure_future(edge.get("/slow?s=6"))
        await submit(etcd, instance_request("v2", "f2", fleet_hosts, listen))
        deadline = asyncio.get_running_loop().time() + 120
        while True:  # cut over; the edges still have the slow request to v1 in flight
            kv = await etcd.get(DEPLOYMENTS + "shop")
            record = json.loads(kv.value) if kv is not None else {}
            if record.get("deployment") == "f2" and record.get("step") == "draining":
                break
            assert asyncio.get_running_loop().time() < deadline, record
            await asyncio.sleep(0.05)
        pid = int((tmp_path / boss / "state" / "server.pid").read_text())
        os.kill(pid, signal.SIGSTOP)  # the controller's daemon freezes mid-cutover
        try:
            final = await outcome(etcd, "shop", "f2", 180)  # another leader finished it
            assert await leader(etcd) not in (None, boss)
            written = await desired_revisions(etcd)
            route = await etcd.get(edge_key("shop"))
        finally:
            os.kill(pid, signal.SIGCONT)
        log = tmp_path / boss / "state" / "logs" / "server.log"
        deadline = asyncio.get_running_loop().time() + 60
        while "no longer leads" not in log.read_text():  # it woke up and stepped down
            assert asyncio.get_running_loop().time() < deadline, "the old leader never noticed"
            await asyncio.sleep(0.1)
        # Whatever it was about to write when it froze was refused: nothing changed.
        assert await desired_revisions(etcd) == written
        after = await etcd.get(edge_key("shop"))
        assert route is not None and after is not None
        assert after.mod_revision == route.mod_revision
        status, body = await asyncio.wait_for(slow, 60)
    assert final["state"] == "succeeded", final
    assert (status, body.split("@")[0]) == (200, "v1"), body
    assert EdgeRoute.from_json(after.value).version == "v2"
    assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v2")
