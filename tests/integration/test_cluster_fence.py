"""Fenced writes against a real 3-member etcd: a controller deposed without knowing it (its
lease lapsed while it was paused or cut off) writes nothing once another leader holds the
term, and the rollout it was running ends with ``Fenced`` instead of writing on top of the
new leader's.

A lapse is what etcd does when a lease is no longer renewed: it deletes the keys under it.
Revoking the lease from another client is that, now, without the old leader noticing (its
next renewal is seconds away), which is the window fencing closes. The hosts' side is
played by the test: it writes each host's progress as an agent would.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from baton.cluster import keys
from baton.cluster.controller import Controller, submit
from baton.cluster.edge import EdgeRoute, publish, published
from baton.cluster.election import DeployLock, Election
from baton.cluster.etcd import Compare, Etcd, get_op, put_op
from baton.cluster.fence import Fence, leading
from baton.cluster.keys import HostRecord
from baton.cluster.registry import Registration
from baton.cluster.rollout import DEPLOYMENTS, roll_out
from baton.errors import Fenced
from tests.support.fleet import desired, lapse

TTL = 30  # long: the old leader must not notice the lapse by itself during the test


async def test_a_deposed_leaders_writes_are_refused_and_change_nothing(etcd: Etcd) -> None:
    old = Election(etcd, "old", ttl=TTL)
    await old.campaign()
    stale = Fence.for_term(etcd, old.term)
    assert await stale.put("/baton/test/x", "1")
    await lapse(etcd, keys.CONTROLLER)
    new = Election(etcd, "new", ttl=TTL)
    await new.campaign()
    assert new.term > old.term
    with pytest.raises(Fenced, match="term"):
        await stale.put("/baton/test/x", "2")
    kv = await etcd.get("/baton/test/x")
    assert kv is not None and kv.value == b"1"
    # The current leader writes; its own compare failing is not a fence.
    current = Fence.for_term(etcd, new.term)
    await current.put("/baton/test/x", "3")
    result = await current.txn(
        [put_op("/baton/test/x", "4")], [Compare.modified_at("/baton/test/x", 1)]
    )
    assert not result.succeeded
    kv = await etcd.get("/baton/test/x")
    assert kv is not None and kv.value == b"3"
    # The term comes from the controller's context when none is given.
    with leading(old.term), pytest.raises(Fenced):
        await Fence.current(etcd).put("/baton/test/x", "5")
    await old.resign()
    await new.resign()


async def test_a_fenced_client_refuses_every_write_of_a_deposed_leader(etcd: Etcd) -> None:
    """What the controller hands the edge cutover: its edge routes and records are fenced."""
    old = Election(etcd, "old", ttl=TTL)
    await old.campaign()
    client = Fence.for_term(etcd, old.term).client()
    route = EdgeRoute("shop", "127.0.0.1:8080", ("web1", "web2"), "v1")
    await publish(client, route)
    await client.put("/baton/test/z", "1")
    assert await client.delete("/baton/test/z") == 1
    kept = await client.txn([Compare.absent("/baton/test/z")], [put_op("/baton/test/z", "2")])
    assert kept.succeeded
    lost = await client.txn([Compare.absent("/baton/test/z")], [], [get_op("/baton/test/z")])
    assert not lost.succeeded and lost.ranges()[0][0].value == b"2"  # the caller's own ranges
    await lapse(etcd, keys.CONTROLLER)
    new = Election(etcd, "new", ttl=TTL)
    await new.campaign()
    with pytest.raises(Fenced):
        await publish(client, replace(route, version="v2"))
    with pytest.raises(Fenced):
        await client.delete("/baton/test/z")
    with pytest.raises(Fenced):
        await client.txn([], [put_op("/baton/test/z", "3")])
    assert (await published(etcd, "shop")) == route  # the edges still route as before
    kv = await etcd.get("/baton/test/z")
    assert kv is not None and kv.value == b"2"
    await client.close()  # a view: the client it came from keeps its connection
    assert await etcd.get("/baton/test/z") is not None
    await old.resign()
    await new.resign()


async def test_a_lost_deploy_lock_fences_the_writes_made_under_it(etcd: Etcd) -> None:
    first = await DeployLock.acquire(etcd, "shop", "first", ttl=TTL)
    fence = Fence(etcd).with_lock(first.key, first.revision, "the deploy lock of shop")
    await fence.put("/baton/test/y", "1")
    await lapse(etcd, first.key)
    second = await DeployLock.acquire(etcd, "shop", "second", ttl=TTL)
    with pytest.raises(Fenced, match=r"deploy lock of shop.*second"):
        await fence.put("/baton/test/y", "2")
    kv = await etcd.get("/baton/test/y")
    assert kv is not None and kv.value == b"1"
    await second.release()
    await first.release()


async def report(etcd: Etcd, host: str, release: keys.DesiredRelease) -> None:
    """The host's agent: the desired release is deployed."""
    progress = keys.Progress(release.app, release.version, release.deployment, "done")
    await etcd.put(keys.progress_key(host, release.app), progress.to_json())


async def test_a_paused_leaders_rollout_is_fenced_while_the_new_leader_finishes_it(
    etcd: Etcd,
) -> None:
    hosts = ["h1", "h2"]
    registrations = [Registration(etcd, HostRecord(h, f"127.0.0.1:{i + 1}")) for i, h in enumerate(hosts)]  # fmt: skip
    for registration in registrations:
        await registration.start()
        await registration.registered.wait()
    release = keys.DesiredRelease("shop", "v2", "d1", "/srv/shop/baton.yml")
    old = Election(etcd, "old", ttl=TTL)
    await old.campaign()
    first = asyncio.create_task(
        roll_out(etcd, release, hosts, holder="old", fence=Fence.for_term(etcd, old.term))
    )
    try:
        await desired(etcd, "h1", "d1")  # the old leader switched h1, and waits for it
        # Its process is paused here: its leader and lock leases lapse, a new leader is
        # elected and resumes the deployment from its record.
        await lapse(etcd, keys.CONTROLLER)
        await lapse(etcd, keys.lock_key("shop"))
        new = Election(etcd, "new", ttl=TTL)
        await new.campaign()
        second = asyncio.create_task(
            roll_out(etcd, release, hosts, holder="new", fence=Fence.for_term(etcd, new.term))
        )
        await report(etcd, "h1", release)  # both leaders see h1 done
        with pytest.raises(Fenced, match="term"):  # the old one's next write is refused
            await asyncio.wait_for(first, 30)
        await desired(etcd, "h2", "d1")
        await report(etcd, "h2", release)
        result = await asyncio.wait_for(second, 30)
        assert result.ok and result.done == hosts, result
        # h2 was switched once, by the new leader alone; the record is the new leader's.
        kv = await etcd.get(keys.desired_key("h2", "shop"))
        assert kv is not None and kv.version == 1
        record = await etcd.get(DEPLOYMENTS + "shop")
        assert record is not None and record.json()["state"] == "succeeded"
        await new.resign()
    finally:
        first.cancel()
        for registration in registrations:
            await registration.stop()


async def test_a_controller_whose_write_is_refused_stops_leading(etcd: Etcd) -> None:
    registration = Registration(etcd, HostRecord("h1", "127.0.0.1:1"))
    await registration.start()
    await registration.registered.wait()
    stop = asyncio.Event()
    controller = Controller(etcd, "old", ttl=TTL)
    running = asyncio.create_task(controller.run(stop))
    try:
        await asyncio.wait_for(controller.leading.wait(), 30)
        release = keys.DesiredRelease("shop", "v2", "d1", "/srv/shop/baton.yml")
        await submit(etcd, keys.DeployRequest(release, ("h1",)))
        await desired(etcd, "h1", "d1")  # it switched h1 and waits for it
        await lapse(etcd, keys.CONTROLLER)  # paused: its leases lapse, a rival is elected
        await lapse(etcd, keys.lock_key("shop"))
        rival = Election(etcd, "rival", ttl=TTL)
        await rival.campaign()
        before = await etcd.get(DEPLOYMENTS + "shop")
        await report(etcd, "h1", release)  # its next write (the outcome) is refused
        deadline = time.monotonic() + 10  # well before its own renewal (TTL/3) would tell it
        while controller.leading.is_set():
            assert time.monotonic() < deadline, "the deposed controller still leads"
            await asyncio.sleep(0.05)
        after = await etcd.get(DEPLOYMENTS + "shop")
        assert before is not None and after is not None
        assert after.mod_revision == before.mod_revision  # the record is still "running"
        assert after.json()["state"] == "running"
        await rival.resign()
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        await registration.stop()
