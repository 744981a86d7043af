"""Hosts, leader election and deploy locks against a real 3-member etcd cluster.

Members run in processes of their own (tests/support/cluster_member.py) so that a test can
SIGKILL one the way a machine dies: no goodbye, the lease just stops being renewed.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from baton.cluster.election import DeployLock, Election, leader
from baton.cluster.etcd import Etcd
from baton.cluster.keys import HostRecord
from baton.cluster.registry import Registration, hosts
from baton.errors import DeploymentLocked
from tests.support.etcd import EtcdCluster
from tests.support.procs import REPO_ROOT, ManagedProcess

TTL = 2  # seconds: short, so a lapse is seen quickly; waits below allow several TTLs


@pytest.fixture
def member(etcd_cluster: EtcdCluster) -> Iterator[Callable[[str], ManagedProcess]]:
    started: list[ManagedProcess] = []

    def start(name: str) -> ManagedProcess:
        args = [etcd_cluster.endpoints_text, name, str(TTL)]
        proc = ManagedProcess(
            [sys.executable, "-m", "tests.support.cluster_member", *args],
            cwd=REPO_ROOT,
            name=f"member-{name}",
        )
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.close()


async def wait_for(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)


async def reachable(etcd: Etcd) -> dict[str, bool]:
    return {view.record.name: view.reachable for view in await hosts(etcd)}


async def test_a_registered_host_is_listed_with_its_record(etcd_cluster: EtcdCluster) -> None:
    async with Etcd(etcd_cluster.endpoints) as etcd:
        record = HostRecord("web1", "10.0.0.1:80", roles=("app", "edge"), baton="0.1.0")
        registration = Registration(etcd, record, ttl=TTL)
        await registration.start()
        assert registration.registered.is_set()
        (view,) = await hosts(etcd)
        assert view.reachable and view.record == record
        await registration.update(HostRecord("web1", "10.0.0.1:80", apps={"shop": "v2"}))
        (view,) = await hosts(etcd)
        assert view.record.apps == {"shop": "v2"}
        await registration.stop()
        assert await reachable(etcd) == {"web1": False}  # known, not reachable


async def test_a_killed_host_becomes_unreachable_within_its_ttl(
    etcd_cluster: EtcdCluster, member: Callable[[str], ManagedProcess]
) -> None:
    proc = member("web1")
    async with Etcd(etcd_cluster.endpoints) as etcd:
        await wait_for(lambda: "registered" in proc.stdout_text(), 10, "web1 registers")
        assert await reachable(etcd) == {"web1": True}
        proc.kill()
        await wait_for(lambda: _is(reachable(etcd), {"web1": False}), 4 * TTL, "web1 unreachable")


async def _is(value: object, expected: object) -> bool:
    assert asyncio.iscoroutine(value)
    return bool(await value == expected)


async def test_the_controller_fails_over_when_the_leader_is_killed(
    etcd_cluster: EtcdCluster, member: Callable[[str], ManagedProcess]
) -> None:
    first = member("c1")
    async with Etcd(etcd_cluster.endpoints) as etcd:
        await wait_for(lambda: "leading" in first.stdout_text(), 10, "c1 leads")
        second = member("c2")
        await wait_for(lambda: "registered" in second.stdout_text(), 10, "c2 registers")
        assert await leader(etcd) == "c1"
        assert "leading" not in second.stdout_text()
        first.kill()
        await wait_for(lambda: "leading" in second.stdout_text(), 5 * TTL, "c2 takes over")
        assert await leader(etcd) == "c2"
        term_1 = int(first.stdout_text().split()[-1])
        term_2 = int(second.stdout_text().split()[-1])
        assert term_2 > term_1  # a new term: a stale leader's writes can be fenced


async def test_a_resigning_leader_hands_over_at_once(etcd_cluster: EtcdCluster) -> None:
    async with Etcd(etcd_cluster.endpoints) as etcd:
        one, two = Election(etcd, "one", ttl=30), Election(etcd, "two", ttl=30)
        await one.campaign()
        waiting = asyncio.create_task(two.campaign())
        await asyncio.sleep(0.2)
        assert not waiting.done() and one.leading
        await one.resign()
        await asyncio.wait_for(waiting, 5)  # far less than the 30 s TTL
        assert two.leading and await leader(etcd) == "two"
        await two.resign()


async def test_a_deploy_lock_is_held_once_and_freed_on_release(
    etcd_cluster: EtcdCluster,
) -> None:
    async with Etcd(etcd_cluster.endpoints) as etcd:
        lock = await DeployLock.acquire(etcd, "shop", "deploy 7 by c1", ttl=TTL)
        with pytest.raises(DeploymentLocked, match="deploy 7 by c1"):
            await DeployLock.acquire(etcd, "shop", "deploy 8 by c2", ttl=TTL)
        other = await DeployLock.acquire(etcd, "blog", "deploy 9", ttl=TTL)  # per app
        await lock.release()
        again = await DeployLock.acquire(etcd, "shop", "deploy 8 by c2", ttl=TTL)
        assert again.held
        await again.release()
        await other.release()


async def test_registration_survives_one_etcd_member_dying(etcd_cluster: EtcdCluster) -> None:
    async with Etcd(etcd_cluster.endpoints) as etcd:
        registration = Registration(etcd, HostRecord("web1", "10.0.0.1:80"), ttl=TTL)
        await registration.start()
        etcd_cluster.kill(0)
        await asyncio.sleep(3 * TTL)  # several renewals, each failing over to a live member
        assert registration.registered.is_set()
        assert await reachable(etcd) == {"web1": True}
        await registration.stop()
