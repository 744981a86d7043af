"""A host that joined a fleet (`baton up --cluster`) converges to its desired state in etcd.

One real Baton host (daemon, proxy, app processes) on loopback, a real 3-member etcd; the
test plays the controller by writing the host's desired release, as the controller will.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from baton.cluster import keys
from baton.cluster.etcd import Etcd
from baton.cluster.registry import hosts
from baton.errors import EtcdUnavailable
from tests.support.etcd import EtcdCluster
from tests.support.host import Host

WAIT = 60.0


@pytest.fixture
async def fleet_host(etcd_cluster: EtcdCluster, tmp_path: Path) -> AsyncIterator[Host]:
    h = Host(tmp_path)
    h.config()
    try:
        up = await h.baton(
            "up", "--detach", "--cluster", etcd_cluster.endpoints_text,
            "--host-name", "web1", "--advertise", f"127.0.0.1:{h.port}",
        )  # fmt: skip
        assert up.rc == 0, up
        yield h
    finally:
        await h.teardown()


def desired(h: Host, version: str, deployment: str, **env: str) -> keys.DesiredRelease:
    return keys.DesiredRelease(
        "shop", version, deployment, str(h.root / "baton.yml"), env={"APP_VERSION": version, **env}
    )


async def progress_of(etcd: Etcd, deployment: str) -> keys.Progress:
    """The host's progress on ``deployment`` once it finished (waits for it)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            kv = await etcd.get(keys.progress_key("web1", "shop"))
        except EtcdUnavailable:
            kv = None
        if kv is not None:
            progress = keys.Progress.from_json(kv.value)
            if progress.deployment == deployment and progress.finished:
                return progress
        await asyncio.sleep(0.1)
    raise AssertionError(f"web1 did not finish {deployment} within {WAIT}s")


async def serves(h: Host, version: str) -> bool:
    try:
        status, body = await h.get("/")
    except OSError:
        return False
    return status == 200 and version in body


async def test_the_host_registers_and_converges_to_each_desired_release(
    etcd_cluster: EtcdCluster, fleet_host: Host
) -> None:
    async with Etcd(etcd_cluster.endpoints) as etcd:
        (view,) = await hosts(etcd)
        assert view.reachable and view.record.name == "web1"
        assert view.record.advertise == f"127.0.0.1:{fleet_host.port}"

        await etcd.put(keys.desired_key("web1", "shop"), desired(fleet_host, "v1", "f1").to_json())
        done = await progress_of(etcd, "f1")
        assert done.state == "done", done
        assert await serves(fleet_host, "v1")

        await etcd.put(keys.desired_key("web1", "shop"), desired(fleet_host, "v2", "f2").to_json())
        done = await progress_of(etcd, "f2")
        assert done.state == "done" and done.local_deployment is not None, done
        assert await serves(fleet_host, "v2")
        (view,) = await hosts(etcd)
        assert view.record.apps == {"shop": "v2"}
        history = await fleet_host.baton("history", "--json")
        assert history.rc == 0 and history.out.count('"version": "v2"') >= 1


async def test_a_release_that_fails_is_reported_and_the_host_keeps_the_old_one(
    etcd_cluster: EtcdCluster, fleet_host: Host
) -> None:
    async with Etcd(etcd_cluster.endpoints) as etcd:
        await etcd.put(keys.desired_key("web1", "shop"), desired(fleet_host, "v1", "f1").to_json())
        assert (await progress_of(etcd, "f1")).state == "done"
        bad = desired(fleet_host, "v2", "f2", FAIL_ON_START="1")
        await etcd.put(keys.desired_key("web1", "shop"), bad.to_json())
        failed = await progress_of(etcd, "f2")
        assert failed.state == "failed" and failed.message, failed
        assert await serves(fleet_host, "v1")


async def test_a_host_without_etcd_keeps_serving_and_converges_when_etcd_is_back(
    etcd_cluster: EtcdCluster, fleet_host: Host
) -> None:
    async with Etcd(etcd_cluster.endpoints) as etcd:
        await etcd.put(keys.desired_key("web1", "shop"), desired(fleet_host, "v1", "f1").to_json())
        assert (await progress_of(etcd, "f1")).state == "done"
    for i in range(3):
        etcd_cluster.kill(i)
    for _ in range(20):  # the whole etcd cluster is gone: users are served all along
        assert await serves(fleet_host, "v1")
        await asyncio.sleep(0.1)
    etcd_cluster.restart_all()
    async with Etcd(etcd_cluster.endpoints) as etcd:
        await etcd.put(keys.desired_key("web1", "shop"), desired(fleet_host, "v2", "f2").to_json())
        assert (await progress_of(etcd, "f2")).state == "done"
        assert await serves(fleet_host, "v2")
        (view,) = await hosts(etcd)
        assert view.reachable  # registered again under a new lease


async def test_baton_hosts_lists_the_fleet_and_bad_fleet_flags_are_refused(
    etcd_cluster: EtcdCluster, fleet_host: Host
) -> None:
    import json

    listed = await fleet_host.baton("hosts", "--cluster", etcd_cluster.endpoints_text, "--json")
    assert listed.rc == 0, listed
    (row,) = json.loads(listed.out)
    assert row["name"] == "web1" and row["reachable"] is True
    assert row["roles"] == ["app", "controller"]
    table = await fleet_host.baton("hosts", "--cluster", etcd_cluster.endpoints_text)
    assert "web1" in table.out and "reachable" in table.out

    alone = await fleet_host.deploy("--version", "v9", "--cluster", etcd_cluster.endpoints_text)
    assert alone.rc == 2 and "names no hosts" in alone.err, alone
    fleet_cfg = fleet_host.config({"hosts": ["web1", "web7"]}, name="fleet.yml")
    stranger = await fleet_host.baton(
        "deploy", "-c", str(fleet_cfg), "--version", "v9", "--cluster", etcd_cluster.endpoints_text
    )
    assert stranger.rc == 2 and "web7: never joined the fleet" in stranger.err, stranger
    unnamed = await fleet_host.baton(
        "deploy", "-c", str(fleet_cfg), "--cluster", etcd_cluster.endpoints_text
    )
    assert unnamed.rc == 2 and "--version" in unnamed.err, unnamed
    bad = await fleet_host.baton("up", "--cluster", "ftp://x", "--host-name", "web2")
    assert bad.rc == 2 and "--cluster" in bad.err, bad
    bad_roles = await fleet_host.baton(
        "server", "--cluster", etcd_cluster.endpoints_text, "--roles", "app,db"
    )
    assert bad_roles.rc == 2 and "'db'" in bad_roles.err, bad_roles
