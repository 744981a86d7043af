"""A fleet canary without edges when hosts go away, in namespaces: three app hosts, each its
own daemon and proxy (and controller candidate), etcd on the lab's gateway. A host whose
daemon is SIGKILLed stops renewing its lease: unreachable when the canary begins, it fails
the deploy before anything changes, or with ``--skip-unreachable`` is left out and reported;
unreachable while a step is held, it fails the step and every reachable host goes back to
the previous release; the lost host, once its daemon is back, converges to it too. The deploy's exit status and its report name the host."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from baton.cluster import keys
from baton.cluster.election import leader
from baton.cluster.etcd import Etcd
from baton.cluster.rollout import DEPLOYMENTS
from tests.support.etcd import EtcdCluster
from tests.support.fleet import NAMES, PORT, FleetHost, kill_daemon, served_by_each
from tests.support.host import Host, Result, assert_no_failures
from tests.support.load import Load


class CanaryApp:
    """One baton.yml for the fleet (its hosts, a canary of one step held ``hold``), deployed
    with ``baton deploy`` run on ``cli``."""

    def __init__(self, cluster: EtcdCluster, cli: FleetHost, root: Path, hold: str) -> None:
        self.cluster, self.cli = cluster, cli
        root.mkdir()
        canary = {
            "steps": [{"weight": 30, "hold": hold}],
            "stickiness": "none",
            "analysis": {"min_requests": 20, "max_error_rate": "5%"},
            "max_hold_extensions": 0,
        }
        self.config = Host(root).config(
            {
                "hosts": NAMES,
                "proxy": {"listen": f"0.0.0.0:{PORT}"},
                "deploy": {"strategy": "canary", "canary": canary},
            }
        )

    async def deploy(self, version: str, *flags: str) -> Result:
        return await self.cli.baton(
            "deploy", "-c", str(self.config), "--version", version, "--env",
            f"APP_VERSION={version}", "--cluster", self.cluster.endpoints_text, *flags,
        )  # fmt: skip


async def desired_deployments(etcd: Etcd) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in NAMES:
        kv = await etcd.get(keys.desired_key(name, "shop"))
        assert kv is not None
        out[name] = keys.DesiredRelease.from_json(kv.value).deployment
    return out


async def test_a_host_down_when_a_canary_begins_fails_it_unchanged_or_is_skipped_as_asked(
    fleet: tuple[EtcdCluster, list[FleetHost]], tmp_path: Path
) -> None:
    cluster, fleet_hosts = fleet
    app = CanaryApp(cluster, fleet_hosts[0], tmp_path / "shared", "2s")
    first = await app.deploy("v1")  # a first deploy: a plain rollout
    assert first.rc == 0, first
    web3 = fleet_hosts[2]
    async with Etcd(cluster.endpoints) as etcd:
        await kill_daemon(etcd, web3)
        before = await desired_deployments(etcd)
        failed = await app.deploy("v2")
        assert failed.rc == 1, failed
        assert "web3 unreachable when the canary began; nothing changed" in failed.out, failed
        assert await desired_deployments(etcd) == before  # no host was asked for anything
        assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v1")

        live = fleet_hosts[:2]  # clients on the hosts in the canary: it needs their traffic
        loads = [
            await Load().start(
                h.url, concurrency=2, max_requests=100_000, max_seconds=120, delay=0.005
            )
            for h in live
        ]
        skipped = await app.deploy("v3", "--skip-unreachable")
        for outcome in [await load.stop() for load in loads]:
            assert_no_failures(outcome)
        assert skipped.rc == 0, skipped
        assert "skipped (unreachable): web3" in skipped.out, skipped
        assert "a canary on every host at once" in skipped.out, skipped
        for name in ("web1", "web2"):
            assert f"{name}: deploying canary 30%" in skipped.out, skipped
        assert "web3: deploying" not in skipped.out, skipped
        kv = await etcd.get(keys.desired_key("web3", "shop"))
        assert kv is not None and keys.DesiredRelease.from_json(kv.value).version == "v1"
    served = await served_by_each(fleet_hosts)
    assert served == {"web1": "v3", "web2": "v3", "web3": "v1"}


async def test_a_host_lost_while_a_canary_step_is_held_rolls_back_every_reachable_host(
    fleet: tuple[EtcdCluster, list[FleetHost]], tmp_path: Path
) -> None:
    cluster, fleet_hosts = fleet
    app = CanaryApp(cluster, fleet_hosts[0], tmp_path / "shared", "120s")
    assert (await app.deploy("v1")).rc == 0
    async with Etcd(cluster.endpoints) as etcd:
        boss = await leader(etcd)
        # The host that dies is not the leader: the canary's own controller sees it go.
        victim = next(h for h in fleet_hosts[1:] if h.net.name != boss)
        deploying = asyncio.get_running_loop().create_task(app.deploy("v2"))
        deadline = asyncio.get_running_loop().time() + 120
        while True:  # every host splits its traffic at 30%, the step is held: a host dies
            kv = await etcd.get(DEPLOYMENTS + "shop")
            record = json.loads(kv.value) if kv is not None else {}
            if "baseline" in record.get("canary", {}):
                break
            assert not deploying.done(), deploying.result()
            assert asyncio.get_running_loop().time() < deadline, "the canary never held a step"
            await asyncio.sleep(0.1)
        await kill_daemon(etcd, victim)
        result = await deploying
        assert result.rc == 1, result
        name = victim.net.name
        assert f"canary at 30%: {name} became unreachable (its lease lapsed)" in result.out
        assert "every host is back on v1" in result.out, result
        live = [h for h in fleet_hosts if h is not victim]
        assert await served_by_each(live) == {h.net.name: "v1" for h in live}
        for h in live:  # each reachable host's own canary was aborted, then the undo done
            kv = await etcd.get(keys.progress_key(h.net.name, "shop"))
            assert kv is not None
            progress = keys.Progress.from_json(kv.value)
            assert progress.deployment.endswith("-undo") and progress.state == "done", progress
        kv = await etcd.get(keys.desired_key(name, "shop"))
        assert kv is not None  # the lost host is asked for v1 too
        desired = keys.DesiredRelease.from_json(kv.value)
        assert desired.version == "v1" and desired.rollback, desired
        back = await victim.baton(
            "up", "--detach", "--cluster", cluster.endpoints_text, "--host-name", name,
            "--advertise", f"{victim.net.address}:{PORT}", timeout=60,
        )  # fmt: skip
        assert back.rc == 0, back
        deadline = asyncio.get_running_loop().time() + 60
        while True:  # its daemon back, the host converges to what it is asked: v1
            kv = await etcd.get(keys.progress_key(name, "shop"))
            last = None if kv is None else keys.Progress.from_json(kv.value)
            if last is not None and last.deployment == desired.deployment and last.finished:
                break
            assert asyncio.get_running_loop().time() < deadline, last
            await asyncio.sleep(0.1)
        assert last.state == "done", last
    assert await served_by_each(fleet_hosts) == dict.fromkeys(NAMES, "v1")
