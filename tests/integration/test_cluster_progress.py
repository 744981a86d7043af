"""An agent's progress writes against a real 3-member etcd: a host's report lands only while
the host is still asked for the report's deployment, so a host that comes back late (cut
off, its lease lapsed, the controller unwound it or moved on) cannot overwrite the progress
of the deployment the fleet is at now with a stale one. The last test runs a real host (its
daemon, proxy and agent on loopback) whose deploy is overtaken by the controller's unwind.

The test plays the controller by writing the host's desired release, as the controller does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from baton.cluster import keys
from baton.cluster.etcd import Etcd, put_op
from baton.cluster.progress import stale_reason, write_progress
from tests.support.etcd import EtcdCluster
from tests.support.fleet import events_since
from tests.support.host import Host

HOST, APP = "web1", "shop"


def desired(deployment: str, version: str = "v2", weight: int | None = None) -> str:
    return keys.DesiredRelease(
        APP, version, deployment, "/srv/shop/baton.yml", canary_weight=weight
    ).to_json()


async def progress_now(etcd: Etcd) -> keys.Progress | None:
    kv = await etcd.get(keys.progress_key(HOST, APP))
    return None if kv is None else keys.Progress.from_json(kv.value)


async def test_a_late_hosts_stale_progress_does_not_overwrite_the_unwinds(etcd: Etcd) -> None:
    key = keys.desired_key(HOST, APP)
    await etcd.put(key, desired("d2"))
    deploying = keys.Progress(APP, "v2", "d2", "deploying", step="starting")
    assert await write_progress(etcd, HOST, deploying) is None
    assert await progress_now(etcd) == deploying

    # The host is cut off; the controller gives up on it and asks for the previous release.
    await etcd.put(key, desired("d2-undo", "v1"))
    undone = keys.Progress(APP, "v1", "d2-undo", "done", message="already served")
    late = replace(deploying, state="done", step="result")
    why = await write_progress(etcd, HOST, late)  # the host is back with its old news
    assert why is not None and "d2-undo" in why
    assert await progress_now(etcd) == deploying  # nothing written

    assert await write_progress(etcd, HOST, undone) is None
    assert await write_progress(etcd, HOST, late) is not None  # still refused afterwards
    assert await progress_now(etcd) == undone

    # A newer deployment, then the late host's report of the unwind: refused too.
    await etcd.put(key, desired("d3", "v3"))
    assert await write_progress(etcd, HOST, undone) is not None
    assert await progress_now(etcd) == undone


async def test_a_canary_hosts_reports_land_while_its_weight_moves(etcd: Etcd) -> None:
    key = keys.desired_key(HOST, APP)
    await etcd.put(key, desired("d4", weight=20))
    at20 = keys.Progress(APP, "v2", "d4", "deploying", step="canary 20%", weight=20)
    assert await write_progress(etcd, HOST, at20) is None
    await etcd.put(key, desired("d4", weight=50))  # the same deployment, a new weight
    at50 = replace(at20, step="canary 50%", weight=50)
    assert await write_progress(etcd, HOST, at50) is None
    assert await progress_now(etcd) == at50


async def test_a_host_asked_for_nothing_reports_nothing(etcd: Etcd) -> None:
    lone = keys.Progress(APP, "v2", "d5", "done")
    assert await write_progress(etcd, HOST, lone) is not None
    assert await progress_now(etcd) is None


def test_the_stale_rule_compares_the_deployment_only() -> None:
    report = keys.Progress(APP, "v2", "d6", "done")
    same = keys.DesiredRelease(APP, "v9", "d6", "/x/baton.yml", canary_weight=10)
    assert stale_reason(report, same) is None
    assert stale_reason(report, replace(same, deployment="d6-undo")) is not None
    assert stale_reason(report, None) is not None


@pytest.fixture
async def fleet_host(etcd_cluster: EtcdCluster, tmp_path: Path) -> AsyncIterator[Host]:
    h = Host(tmp_path)
    h.config()
    try:
        up = await h.baton(
            "up", "--detach", "--cluster", etcd_cluster.endpoints_text,
            "--host-name", HOST, "--advertise", f"127.0.0.1:{h.port}",
        )  # fmt: skip
        assert up.rc == 0, up
        yield h
    finally:
        await h.teardown()


async def finished(etcd: Etcd, deployment: str, timeout: float = 60) -> keys.Progress:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        progress = await progress_now(etcd)
        if progress is not None and progress.deployment == deployment and progress.finished:
            return progress
        assert asyncio.get_running_loop().time() < deadline, f"{deployment} never finished"
        await asyncio.sleep(0.1)


async def test_a_host_whose_deploy_was_unwound_meanwhile_never_reports_it_over_the_undo(
    etcd: Etcd, fleet_host: Host
) -> None:
    key = keys.desired_key(HOST, APP)
    config = str(fleet_host.root / "baton.yml")

    def release(version: str, deployment: str, rollback: bool = False, **env: str) -> str:
        return keys.DesiredRelease(
            APP, version, deployment, config, env={"APP_VERSION": version, **env},
            rollback=rollback,
        ).to_json()  # fmt: skip

    await etcd.put(key, release("v1", "g1"))
    assert (await finished(etcd, "g1")).state == "done"
    await etcd.put(key, release("v2", "g2", BOOT_DELAY="4"))  # slow to start: time to unwind
    deadline = asyncio.get_running_loop().time() + 30
    while (now := await progress_now(etcd)) is None or now.deployment != "g2":
        assert asyncio.get_running_loop().time() < deadline, "the host never began g2"
        await asyncio.sleep(0.05)
    # The controller gives up on the host (as it does when its lease lapses) and unwinds it.
    unwound = (await etcd.txn([], [put_op(key, release("v1", "g2-undo", rollback=True))])).revision
    undone = await finished(etcd, "g2-undo")
    assert undone.state == "done", undone
    history = await events_since(etcd, unwound)
    late = [
        keys.Progress.from_json(e.kv.value)
        for e in history
        if e.kind == "put" and e.kv.key == keys.progress_key(HOST, APP)
    ]
    assert late and all(p.deployment == "g2-undo" for p in late), late  # no stale g2 report
    status, body = await fleet_host.get("/")
    assert status == 200 and "v1" in body
