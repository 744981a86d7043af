"""``baton status``, ``baton history`` and ``baton hosts`` on a host of a three-host fleet
(namespaces, real daemons, real etcd): every host, the release it serves, its instances,
and each host's steps in the last fleet deployment."""

from __future__ import annotations

import json
from pathlib import Path

from baton.cluster.etcd import Etcd
from baton.cluster.rollout import roll_out
from tests.support.etcd import EtcdCluster
from tests.support.fleet import (
    NAMES,
    FleetHost,
    configs,
    release,
)
from tests.support.procs import free_port


async def test_status_and_history_on_one_host_show_every_host_of_the_fleet(
    fleet: tuple[EtcdCluster, list[FleetHost]],
) -> None:
    cluster, fleet_hosts = fleet
    async with Etcd(cluster.endpoints) as etcd:
        assert (await roll_out(etcd, release("v1", "f1"), NAMES, configs=configs(fleet_hosts))).ok
        assert (await roll_out(etcd, release("v2", "f2"), NAMES, configs=configs(fleet_hosts))).ok
    web2 = fleet_hosts[1]
    status = await web2.baton("status", "--json")
    assert status.rc == 0, status
    fleet_view = json.loads(status.out)["fleet"]
    assert fleet_view["host"] == "web2"
    assert [
        (h["name"], h["reachable"], h["apps"]["shop"]["live"], h["apps"]["shop"]["instances"])
        for h in fleet_view["status"]
    ] == [(name, True, "v2", 2) for name in NAMES]
    text = await web2.baton("status")
    assert text.rc == 0, text
    for name in NAMES:
        assert f"{name} reachable" in text.out, text
    assert text.out.count("shop: v2, 2 instance(s), done result") == 3, text

    history = await web2.baton("history", "--json")
    assert history.rc == 0, history
    (last,) = json.loads(history.out)["fleet"]["history"]
    assert (last["deployment"], last["version"], last["state"]) == ("f2", "v2", "succeeded")
    assert [h["host"] for h in last["hosts"]] == NAMES
    for h in last["hosts"]:
        assert h["state"] == "done" and h["steps"][-1] == "result", h
        assert "switch" in h["steps"], h  # blue-green on each host: its own switch
    lines = await web2.baton("history")
    assert "fleet deployment f2: shop v2 succeeded" in lines.out, lines
    assert "web3 #" in lines.out and "switch" in lines.out, lines

    hosts = await web2.baton("hosts", "--cluster", cluster.endpoints_text)
    assert hosts.rc == 0 and hosts.out.count("shop v2 (2 instances)") == 3, hosts


async def test_status_of_a_host_running_alone_shows_no_fleet(
    fleet: tuple[EtcdCluster, list[FleetHost]],
) -> None:
    _, fleet_hosts = fleet
    web1 = fleet_hosts[0]
    down = await web1.baton("down", timeout=90)
    assert down.rc == 0, down
    up = await web1.baton("up", "--detach", timeout=60)  # the same host, out of the fleet
    assert up.rc == 0, up
    status = await web1.baton("status", "--json")
    assert status.rc == 0 and "fleet" not in json.loads(status.out), status


def test_status_says_so_when_the_fleets_etcd_does_not_answer(tmp_path: Path) -> None:
    from baton.cluster.fleetview import read_for_cli, write_local_cluster

    write_local_cluster(tmp_path, [f"http://127.0.0.1:{free_port()}"], "web1")
    view = read_for_cli(tmp_path, "status")
    assert view is not None and view["host"] == "web1"
    assert "the fleet's etcd does not answer" in view["error"]
    assert read_for_cli(tmp_path / "alone", "status") is None
