"""Three Baton hosts, each a network namespace with its own daemon, proxy, apps and state
dir, coordinated through a real 3-member etcd: releases rolled out across the fleet.

etcd runs in the test's namespace on the lab's gateway address (10.213.N.1); the hosts reach
it over their veth links, and the test reaches each host's proxy on its own address.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from baton.cluster import keys
from baton.cluster.controller import outcome, submit
from baton.cluster.election import leader
from baton.cluster.etcd import Etcd
from baton.cluster.registry import hosts
from baton.cluster.rollout import roll_out
from tests.support.etcd import EtcdCluster
from tests.support.fleet import (
    NAMES,
    PORT,
    FleetHost,
    configs,
    desired_revisions,
    events_since,
    in_flight,
    moved_deployment,
    release,
    served_by_each,
)
from tests.support.host import Host, Result
from tests.support.netns import NetLab


async def test_a_release_reaches_every_host_through_etcd(
    fleet: tuple[EtcdCluster, list[FleetHost]],
) -> None:
    cluster, fleet_hosts = fleet
    async with Etcd(cluster.endpoints) as etcd:
        views = await hosts(etcd)
        assert [(v.record.name, v.reachable) for v in views] == [(n, True) for n in NAMES]
        first = await roll_out(etcd, release("v1", "f1"), NAMES, configs=configs(fleet_hosts))
        assert first.ok, first
        second = await roll_out(
            etcd, release("v2", "f2"), NAMES, hosts_at_once=2, configs=configs(fleet_hosts)
        )
        assert second.ok and second.done == NAMES, second
        for h in fleet_hosts:
            status, body = await h.get("/")
            assert status == 200 and "v2" in body, (h.net.name, body)
        views = await hosts(etcd)
        assert {v.record.name: v.record.apps["shop"] for v in views} == dict.fromkeys(NAMES, "v2")


async def test_a_release_failing_on_the_second_host_leaves_the_fleet_on_the_previous_one(
    fleet: tuple[EtcdCluster, list[FleetHost]],
) -> None:
    cluster, fleet_hosts = fleet
    async with Etcd(cluster.endpoints) as etcd:
        assert (await roll_out(etcd, release("v1", "f1"), NAMES, configs=configs(fleet_hosts))).ok
        web2 = fleet_hosts[1]
        cfg = yaml.safe_load((web2.root / "baton.yml").read_text())
        cfg["run"]["env"]["FAIL_ON_START"] = "1"  # v2 cannot start on web2 only
        (web2.root / "baton.yml").write_text(yaml.safe_dump(cfg))
        result = await roll_out(etcd, release("v2", "f2"), NAMES, configs=configs(fleet_hosts))
        assert not result.ok and "web2" in result.message, result
        assert result.reverted == ["web1", "web2"]  # web1 switched back; web3 never touched
        for h in fleet_hosts:
            status, body = await h.get("/")
            assert status == 200 and "v1" in body, (h.net.name, body)


async def test_a_host_cut_off_from_etcd_keeps_serving_and_converges_when_back(
    fleet: tuple[EtcdCluster, list[FleetHost]], netlab: NetLab
) -> None:
    cluster, fleet_hosts = fleet
    web3 = fleet_hosts[2]
    async with Etcd(cluster.endpoints) as etcd:
        assert (await roll_out(etcd, release("v1", "f1"), NAMES, configs=configs(fleet_hosts))).ok
        netlab.cut("web3")
        # Users on web3's own network still get answers: the cut is between web3 and the rest.
        check = [sys.executable, "-c", f"import urllib.request as u; print(u.urlopen('http://{web3.net.address}:{PORT}/', timeout=5).read().decode())"]  # fmt: skip
        assert "v1" in netlab.exec("web3", check).stdout
        others = [h for h in NAMES if h != "web3"]
        moved = await roll_out(etcd, release("v2", "f2"), others, configs=configs(fleet_hosts))
        assert moved.ok
        # web3 was never asked yet; now its desired release changes while it is cut off.
        await etcd.put(
            keys.desired_key("web3", "shop"),
            keys.DesiredRelease(
                "shop", "v2", "f3", str(web3.root / "baton.yml"), env={"APP_VERSION": "v2"}
            ).to_json(),
        )
        assert "v1" in netlab.exec("web3", check).stdout  # changes nothing while cut off
        netlab.restore("web3")
        deadline = asyncio.get_running_loop().time() + 60
        while True:  # its agent deploys f3 and reports it once it reaches etcd again
            kv = await etcd.get(keys.progress_key("web3", "shop"))
            progress = keys.Progress.from_json(kv.value) if kv is not None else None
            if progress is not None and progress.deployment == "f3" and progress.finished:
                break
            assert asyncio.get_running_loop().time() < deadline, f"web3 stuck at {progress}"
            await asyncio.sleep(0.2)
        assert progress.state == "done", progress
        assert "v2" in (await web3.get("/"))[1]


async def test_a_fleet_deploy_survives_its_controller_being_killed(
    fleet: tuple[EtcdCluster, list[FleetHost]],
) -> None:
    cluster, fleet_hosts = fleet
    by_name = {h.net.name: h for h in fleet_hosts}
    async with Etcd(cluster.endpoints) as etcd:
        first = keys.DeployRequest(release("v1", "f1"), tuple(NAMES), configs=configs(fleet_hosts))
        await submit(etcd, first)
        assert (await outcome(etcd, "shop", "f1", 180))["state"] == "succeeded"
        boss = await leader(etcd)
        assert boss in NAMES
        second = keys.DeployRequest(release("v2", "f2"), tuple(NAMES), configs=configs(fleet_hosts))
        await submit(etcd, second)
        deadline = asyncio.get_running_loop().time() + 120
        while True:  # the first host is done with f2: the rollout is under way
            kv = await etcd.get(keys.progress_key(NAMES[0], "shop"))
            progress = None if kv is None else keys.Progress.from_json(kv.value)
            if progress is not None and progress.deployment == "f2" and progress.state == "done":
                break
            assert asyncio.get_running_loop().time() < deadline, "f2 did not start"
            await asyncio.sleep(0.1)
        pid = by_name[boss].server_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # the controller's host daemon dies mid-rollout
        record = await outcome(etcd, "shop", "f2", 180)
        assert await leader(etcd) not in (None, boss)
        served = await served_by_each(fleet_hosts)  # the killed host's proxy still serves
        expected = "v2" if record["state"] == "succeeded" else "v1"
        assert served == dict.fromkeys(NAMES, expected), (record, served)


async def test_a_paused_controller_writes_nothing_once_another_leads(
    fleet: tuple[EtcdCluster, list[FleetHost]],
) -> None:
    cluster, fleet_hosts = fleet
    by_name = {h.net.name: h for h in fleet_hosts}
    async with Etcd(cluster.endpoints) as etcd:
        first = keys.DeployRequest(release("v1", "f1"), tuple(NAMES), configs=configs(fleet_hosts))
        await submit(etcd, first)
        assert (await outcome(etcd, "shop", "f1", 180))["state"] == "succeeded"
        boss = await leader(etcd)
        assert boss in NAMES
        second = keys.DeployRequest(release("v2", "f2"), tuple(NAMES), configs=configs(fleet_hosts))
        await submit(etcd, second)
        deadline = asyncio.get_running_loop().time() + 120
        while True:  # the first host is done with f2: the rollout is under way
            kv = await etcd.get(keys.progress_key(NAMES[0], "shop"))
            progress = None if kv is None else keys.Progress.from_json(kv.value)
            if progress is not None and progress.deployment == "f2" and progress.state == "done":
                break
            assert asyncio.get_running_loop().time() < deadline, "f2 did not start"
            await asyncio.sleep(0.1)
        pid = by_name[boss].server_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # the controller's daemon freezes mid-rollout
        try:
            record = await outcome(etcd, "shop", "f2", 180)  # another leader ended it
            assert await leader(etcd) not in (None, boss)
        finally:
            os.kill(pid, signal.SIGCONT)
        written = await desired_revisions(etcd)
        log = by_name[boss].state_dir / "logs" / "server.log"
        deadline = asyncio.get_running_loop().time() + 60
        while "no longer leads" not in log.read_text():  # it woke up and stepped down
            assert asyncio.get_running_loop().time() < deadline, "the old leader never noticed"
            await asyncio.sleep(0.1)
        # Whatever it was about to write when it froze was refused: nothing changed.
        assert await desired_revisions(etcd) == written
        expected = "v2" if record["state"] == "succeeded" else "v1"
        deadline = asyncio.get_running_loop().time() + 60
        while (served := await served_by_each(fleet_hosts)) != dict.fromkeys(NAMES, expected):
            assert asyncio.get_running_loop().time() < deadline, (record, served)
            await asyncio.sleep(0.2)


def shared_config(root: Path, hosts_at_once: int = 1, extra: dict[str, Any] | None = None) -> Path:
    """One baton.yml for the whole fleet (the hosts share this machine's files): each host's
    proxy listens on its own namespace's addresses."""
    base = Host(root)
    root.mkdir(exist_ok=True)
    path = base.config(
        {
            "hosts": NAMES,
            "proxy": {"listen": f"0.0.0.0:{PORT}"},
            "deploy": {"hosts_at_once": hosts_at_once},
            **(extra or {}),
        }
    )
    return path


async def test_baton_deploy_rolls_a_fleet_app_out_while_an_etcd_member_dies(
    fleet: tuple[EtcdCluster, list[FleetHost]], tmp_path: Path
) -> None:
    cluster, fleet_hosts = fleet
    config = shared_config(tmp_path / "shared")
    cli = fleet_hosts[0]
    first = await cli.baton(
        "deploy", "-c", str(config), "--version", "v1", "--env", "APP_VERSION=v1",
        "--cluster", cluster.endpoints_text,
    )  # fmt: skip
    assert first.rc == 0, first
    assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v1")
    args = ["--version", "v2", "--env", "APP_VERSION=v2", "--cluster", cluster.endpoints_text]
    deploying = asyncio.create_task(cli.baton("deploy", "-c", str(config), *args))
    async with Etcd(cluster.endpoints) as etcd:
        deadline = asyncio.get_running_loop().time() + 60
        while True:  # the rollout is under way: then one etcd member dies
            kv = await etcd.get(keys.progress_key(NAMES[0], "shop"))
            if kv is not None and "v2" in keys.Progress.from_json(kv.value).deployment:
                break
            assert asyncio.get_running_loop().time() < deadline, "the rollout did not start"
            await asyncio.sleep(0.05)
    cluster.kill(0)
    second = await deploying
    assert second.rc == 0, second
    for name in NAMES:
        assert f"{name}: done" in second.out, second
    assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v2")


async def test_a_host_down_on_its_turn_fails_the_deploy_or_is_skipped_as_asked(
    fleet: tuple[EtcdCluster, list[FleetHost]], tmp_path: Path
) -> None:
    cluster, fleet_hosts = fleet
    config = shared_config(tmp_path / "shared")
    cli = fleet_hosts[0]

    async def deploy(version: str, *flags: str) -> Result:
        return await cli.baton(
            "deploy", "-c", str(config), "--version", version, "--env",
            f"APP_VERSION={version}", "--cluster", cluster.endpoints_text, *flags,
        )  # fmt: skip

    assert (await deploy("v1")).rc == 0
    web3 = fleet_hosts[2]
    pid = web3.server_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # web3's daemon dies; its proxy keeps serving v1
    async with Etcd(cluster.endpoints) as etcd:
        deadline = asyncio.get_running_loop().time() + 30
        while {v.record.name: v.reachable for v in await hosts(etcd)}["web3"]:
            assert asyncio.get_running_loop().time() < deadline, "web3 still reachable"
            await asyncio.sleep(0.1)
    failed = await deploy("v2")
    assert failed.rc == 1 and "web3 unreachable" in failed.out, failed
    assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v1")  # switched back
    skipped = await deploy("v3", "--skip-unreachable")
    assert skipped.rc == 0 and "skipped (unreachable): web3" in skipped.out, skipped
    served = await served_by_each(fleet_hosts)
    assert served == {"web1": "v3", "web2": "v3", "web3": "v1"}


def set_env(host: FleetHost, name: str, value: str) -> None:
    """Change the app's env in ``host``'s own baton.yml (what its next release runs with)."""
    cfg = yaml.safe_load((host.root / "baton.yml").read_text())
    cfg["run"]["env"][name] = value
    (host.root / "baton.yml").write_text(yaml.safe_dump(cfg))


async def test_max_unavailable_hosts_keeps_two_in_flight_and_a_failure_unwinds_all(
    fleet: tuple[EtcdCluster, list[FleetHost]],
) -> None:
    cluster, fleet_hosts = fleet
    async with Etcd(cluster.endpoints) as etcd:
        assert (await roll_out(etcd, release("v1", "f1"), NAMES, configs=configs(fleet_hosts))).ok
        set_env(fleet_hosts[0], "BOOT_DELAY", "6")  # web1 is slow to start from now on
        _, start = await etcd.get_prefix(keys.CONTROLLER)
        two = await roll_out(
            etcd, release("v2", "f2"), NAMES, configs=configs(fleet_hosts), max_unavailable=2
        )
        assert two.ok and sorted(two.done) == NAMES, two
        flight = in_flight(await events_since(etcd, start + 1), "f2")
        assert flight.most == 2 and flight.moved == NAMES, flight  # one at a time, two in flight
        # The slow web1 held back no other: web3 was switched as soon as web2 was done.
        assert flight.ended["web2"] < flight.switched["web3"] < flight.ended["web1"], flight
        assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v2")

        set_env(fleet_hosts[1], "FAIL_ON_START", "1")  # v3 cannot start on web2 only
        _, start = await etcd.get_prefix(keys.CONTROLLER)
        failed = await roll_out(
            etcd, release("v3", "f3"), NAMES, configs=configs(fleet_hosts), max_unavailable=2
        )
        assert not failed.ok and "web2" in failed.message, failed
        flight = in_flight(await events_since(etcd, start + 1), "f3")
        # web1 and web2 in flight; web2's failure started nothing new, and both went back.
        assert flight.most == 2 and flight.moved == ["web1", "web2"], flight
        assert failed.reverted == ["web1", "web2"], failed
        assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v2")
        with pytest.raises(ValueError, match="max_unavailable_hosts"):
            await roll_out(etcd, release("v4", "f4"), NAMES, hosts_at_once=2, max_unavailable=1)


async def test_baton_deploy_takes_a_hosts_own_config_path_and_max_unavailable_hosts(
    fleet: tuple[EtcdCluster, list[FleetHost]], tmp_path: Path
) -> None:
    cluster, fleet_hosts = fleet
    fleet_keys = {"deploy": {"hosts_at_once": 1, "max_unavailable_hosts": 2}}
    config = shared_config(tmp_path / "shared", extra={**fleet_keys, "run": {"env": {"APP_VERSION": "v2"}}})  # fmt: skip
    own = shared_config(tmp_path / "own", extra={**fleet_keys, "run": {"env": {"APP_VERSION": "v2-own"}}})  # fmt: skip
    cli = fleet_hosts[0]

    async def deploy(*flags: str, path: Path = config) -> Result:
        return await cli.baton(
            "deploy", "-c", str(path), "--version", "v2", "--cluster", cluster.endpoints_text,
            *flags,
        )  # fmt: skip

    stranger = await deploy("--host-config", f"web9={own}")
    assert stranger.rc == 2 and "web9 is not one of the app's hosts" in stranger.err, stranger
    relative = await deploy("--host-config", "web2=own/baton.yml")
    assert relative.rc == 2 and "expected an absolute path" in relative.err, relative
    alone = await cli.baton("deploy", "-c", str(cli.root / "baton.yml"), "--host-config", f"web2={own}")  # fmt: skip
    assert alone.rc == 2 and "only for a fleet app" in alone.err, alone
    async with Etcd(cluster.endpoints) as etcd:
        assert await etcd.get(keys.request_key("shop")) is None  # nothing was asked
        _, start = await etcd.get_prefix(keys.CONTROLLER)
        done = await deploy("--host-config", f"web2={own}")
        assert done.rc == 0 and "up to 2 switching at once" in done.out, done
        flight = in_flight(await events_since(etcd, start + 1), moved_deployment(done.out))
        assert flight.most == 2 and flight.moved == NAMES, flight
    bodies = {h.net.name: (await h.get("/"))[1].split()[0] for h in fleet_hosts}
    assert bodies == {"web1": "v2", "web2": "v2-own", "web3": "v2"}, bodies
