"""The edge cutover's own writes are fenced, against a real 3-member etcd: a controller
deposed mid-cutover (its lease lapsed while it was paused) writes no edge route, cutover
record, deployment record or desired release after it; its next write raises ``Fenced``
while the new leader finishes the deployment, and the fleet ends on one version.

The old leader's process is paused as SIGSTOP would: its etcd client (``Paused``) holds
every request until the test resumes it, so it neither renews nor reads nor writes. Its
leases lapse meanwhile (the test revokes them: what etcd does when a lease is no longer
renewed). The hosts' agents are played by the test (it writes their progress); no edge is
registered, so the edges' acks and drain are immediate: what is under test is what each
controller writes to etcd.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from baton.cluster import keys
from baton.cluster.cutover import CUTOVERS, edge_blue_green
from baton.cluster.edge import EdgeRoute, edge_key, publish
from baton.cluster.election import Election
from baton.cluster.etcd import Etcd
from baton.cluster.fence import leading
from baton.cluster.instancecut import staged_blue_green
from baton.cluster.keys import HostRecord
from baton.cluster.registry import Registration
from baton.cluster.rollout import DEPLOYMENTS
from baton.errors import Fenced
from tests.support.etcd import EtcdCluster
from tests.support.fleet import desired, lapse

TTL = 30  # long: the old leader must not notice the lapse by itself during the test
HOSTS = ["h1", "h2"]


@pytest.fixture
async def fleet(etcd: Etcd) -> AsyncIterator[list[Registration]]:
    """Two registered app hosts publishing instances of shop v1, the edges routing to them."""
    registrations = [
        Registration(
            etcd,
            HostRecord(h, f"10.9.0.{i + 1}:80", endpoints={"shop": {"v1": [f"10.9.0.{i + 1}:1"]}}),
        )
        for i, h in enumerate(HOSTS)
    ]
    for registration in registrations:
        await registration.start()
        await registration.registered.wait()
    await publish(etcd, EdgeRoute("shop", "0.0.0.0:80", tuple(HOSTS), "v1", instances=True))
    yield registrations
    for registration in registrations:
        await registration.stop()


class Paused(Etcd):
    """An etcd client whose process can be paused (SIGSTOP) and resumed (SIGCONT)."""

    def __init__(self, endpoints: list[str]) -> None:
        super().__init__(endpoints)
        self.running = asyncio.Event()
        self.running.set()
        self.trap: str | None = None  # pause as it is about to write this key
        self.trapped = asyncio.Event()

    async def _post(self, path: str, body: dict[str, Any], timeout: float | None = None) -> Any:
        if self.trap is not None and path == "/v3/kv/txn":
            key = base64.b64encode(self.trap.encode()).decode()
            if any(op.get("request_put", {}).get("key") == key for op in body["success"]):
                self.trap = None
                self.running.clear()
                self.trapped.set()
        await self.running.wait()
        return await super()._post(path, body, timeout)


async def report(etcd: Etcd, deployment: str, state: keys.ProgressState) -> None:
    """Every host's agent: its part of ``deployment`` ended in ``state``."""
    for host in HOSTS:
        progress = keys.Progress("shop", "v2", deployment, state)
        await etcd.put(keys.progress_key(host, "shop"), progress.to_json())


def request() -> keys.DeployRequest:
    release = keys.DesiredRelease("shop", "v2", "d1", "/srv/shop/baton.yml")
    return keys.DeployRequest(release, tuple(HOSTS), edge="0.0.0.0:80")


@pytest.mark.parametrize("paused_at", ["staging", "the cutover's route"])
async def test_a_leader_deposed_mid_cutover_writes_nothing_after_the_new_one_finished(
    etcd: Etcd, etcd_cluster: EtcdCluster, fleet: list[Registration], paused_at: str
) -> None:
    paused = Paused(etcd_cluster.endpoints)
    try:
        await deposed_mid_cutover(etcd, paused, paused_at)
    finally:
        await paused.close()


async def deposed_mid_cutover(etcd: Etcd, paused: Paused, paused_at: str) -> None:
    old = Election(paused, "old", ttl=TTL)
    await old.campaign()
    with leading(old.term):  # its tasks run under its term, as the controller's do
        first = asyncio.create_task(
            staged_blue_green(paused, request(), "old", host_timeout=5, drain_timeout=1)
        )
    try:
        if paused_at == "staging":
            await desired(etcd, "h1", "d1-stage")  # the old leader asked every host to stage
            paused.running.clear()  # SIGSTOP
        else:  # SIGSTOP as it writes the edge route that cuts every edge over
            paused.trap = edge_key("shop")
            await desired(etcd, "h1", "d1-stage")
            await report(etcd, "d1-stage", "staged")
            await asyncio.wait_for(paused.trapped.wait(), 30)
        # Its leader and lock leases lapse; a new leader is elected and resumes the
        # deployment at its recorded step.
        await lapse(etcd, keys.CONTROLLER)
        await lapse(etcd, keys.lock_key("shop"))
        new = Election(etcd, "new", ttl=TTL)
        await new.campaign()
        with leading(new.term):
            second = asyncio.create_task(
                staged_blue_green(etcd, request(), "new", host_timeout=30, drain_timeout=1)
            )
        await report(etcd, "d1-stage", "staged")  # every host staged v2
        await desired(etcd, "h1", "d1-switch")  # the new leader cut over, then asks to switch
        await report(etcd, "d1-switch", "done")
        result = await asyncio.wait_for(second, 30)
        assert result.ok, result
        route = await etcd.get(edge_key("shop"))
        record = await etcd.get(DEPLOYMENTS + "shop")
        asked = [await etcd.get(keys.desired_key(h, "shop")) for h in HOSTS]
        assert route is not None and record is not None
        assert EdgeRoute.from_json(route.value).version == "v2"
        assert record.json()["state"] == "succeeded"
        # SIGCONT. Paused in staging, the old leader's staging did not finish within its
        # host time-out (it sees only the switch's progress), so it would discard the staged
        # release and write the hosts' old desired releases back, on top of a fleet on v2.
        # Paused at the cutover, it would publish its route again after the new leader's.
        # Its writes are refused.
        paused.running.set()
        with pytest.raises(Fenced, match="term"):
            await asyncio.wait_for(first, 30)
        after = await etcd.get(edge_key("shop"))
        assert after is not None and after.mod_revision == route.mod_revision
        last = await etcd.get(DEPLOYMENTS + "shop")
        assert last is not None and last.mod_revision == record.mod_revision
        for host, before in zip(HOSTS, asked, strict=True):
            now = await etcd.get(keys.desired_key(host, "shop"))
            assert before is not None and now is not None
            assert now.mod_revision == before.mod_revision
            assert keys.DesiredRelease.from_json(now.value).deployment == "d1-switch"
        await new.resign()
    finally:
        paused.running.set()
        first.cancel()


async def test_a_deposed_leaders_half_and_half_cutover_writes_no_route_nor_record(
    etcd: Etcd, fleet: list[Registration]
) -> None:
    # A release no host publishes instances of: the half-and-half blue-green, via proxies.
    await publish(etcd, EdgeRoute("shop", "0.0.0.0:80", tuple(HOSTS), "v0"))
    route = await etcd.get(edge_key("shop"))
    old = Election(etcd, "old", ttl=TTL)
    await old.campaign()
    await lapse(etcd, keys.CONTROLLER)
    new = Election(etcd, "new", ttl=TTL)
    await new.campaign()
    with leading(old.term):
        plain = keys.DeployRequest(
            keys.DesiredRelease("shop", "v2", "d1", "/srv/shop/baton.yml"),
            tuple(HOSTS),
            edge="0.0.0.0:80",
        )
        with pytest.raises(Fenced, match="term"):
            await edge_blue_green(etcd, plain, "old")
        with pytest.raises(Fenced, match="term"):
            await publish(etcd, EdgeRoute("shop", "0.0.0.0:80", ("h1",), "v2"))
    after = await etcd.get(edge_key("shop"))
    assert route is not None and after is not None and after.mod_revision == route.mod_revision
    assert await etcd.get(CUTOVERS + "shop") is None
    assert await etcd.get(DEPLOYMENTS + "shop") is None
    for host in HOSTS:
        assert await etcd.get(keys.desired_key(host, "shop")) is None
    await new.resign()
