"""A fleet of Docker hosts (the Kamal user's case), in namespaces: three app hosts, each with
its own Docker engine (``tests.support.dockerns``) and started with ``--instance-ip`` (their
containers publish their port on the host's private address, and the hosts publish them in
their host records), one edge, etcd 3 members. Every deploy is ``baton deploy --image`` of a
busybox httpd image (FROM scratch) that answers its version, under continuous load.

One fleet for the module (it runs in CI on 2 cores); each test deploys an app of its own on
its own port, so the tests do not depend on each other's releases.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from baton.cluster import keys
from baton.cluster.edge import EDGES, published
from baton.cluster.etcd import Etcd
from baton.cluster.registry import hosts as fleet_hosts
from baton.cluster.rollout import DEPLOYMENTS
from baton.runtime.docker import LABEL_APP, LABEL_VERSION
from tests.support.dockerns import Engines, engines, require_dockerd
from tests.support.etcd import EtcdCluster
from tests.support.fleet import NAMES, FleetHost, events_since, started_fleet
from tests.support.host import Host, Result, assert_no_failures
from tests.support.load import Load, LoadResult
from tests.support.netns import NetHost, NetLab
from tests.support.netns import sweep_stale as sweep_stale_namespaces

pytestmark = [pytest.mark.timeout(900), pytest.mark.asyncio(loop_scope="module")]

EDGE = "edge1"


@dataclass
class DockerFleet:
    etcd: EtcdCluster
    hosts: list[FleetHost]  # web1..web3, each with its own engine
    edge: FleetHost
    engines: Engines
    apps: Path  # the apps' baton.yml files, shared by every host (one filesystem)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dfleet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DockerFleet]:
    require_dockerd()
    sweep_stale_namespaces()
    root = tmp_path_factory.mktemp("dockerfleet")
    lab = NetLab()
    try:
        with engines(lab, root) as started:

            def flags(net: NetHost) -> list[str]:
                if net.name in NAMES:
                    return ["--roles", "app,controller", "--instance-ip", net.address]
                return ["--roles", "edge"]

            def prepare(h: FleetHost) -> None:
                if h.net.name in NAMES:  # the edge runs no app: no engine
                    h.env.update(started.start(h.net.name).env())

            async with started_fleet(lab, root, [*NAMES, EDGE], flags, prepare) as (
                etcd,
                hosts,
            ):
                for version in ("v1", "v2"):
                    await asyncio.to_thread(started.image, version)
                # v3 cannot start on web2 (its container exits at once); fine elsewhere.
                await asyncio.to_thread(started.image, "v3", ["web1", "web3"])
                await asyncio.to_thread(
                    started.by_host["web2"].build, f"{started.repository}:v3", "v3",
                    exit_at_once=True,
                )  # fmt: skip
                apps = root / "apps"
                apps.mkdir()
                yield DockerFleet(etcd, hosts[: len(NAMES)], hosts[len(NAMES)], started, apps)
    finally:
        lab.delete()


def app_config(fleet: DockerFleet, app: str, port: int, edge: bool) -> Path:
    """A Docker app on every host (``proxy.listen`` 0.0.0.0:PORT), behind the edge or not."""
    extra: dict[str, Any] = {
        "app": app,
        "runtime": "docker",
        "hosts": NAMES,
        "proxy": {"listen": f"0.0.0.0:{port}"},
        "run": {
            "command": None,
            "cwd": None,
            "image": f"{fleet.engines.repository}:v1",
            "port": 8080,
        },
        "deploy": {"hosts_at_once": 1},
    }
    if edge:
        extra["edge"] = {"listen": f"{fleet.edge.net.address}:{port}"}
    return Host(fleet.apps).config(extra, f"{app}.yml")


async def deploy(fleet: DockerFleet, config: Path, version: str) -> Result:
    """``baton deploy --image REPOSITORY:VERSION`` of ``config``, run on web1."""
    return await fleet.hosts[0].baton(
        "deploy", "-c", str(config), "--version", version,
        "--image", f"{fleet.engines.repository}:{version}",
        "--cluster", fleet.etcd.endpoints_text, timeout=300,
    )  # fmt: skip


async def answer(address: str, port: int) -> str:
    reader, writer = await asyncio.open_connection(address, port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split()[1] == b"200", raw
    return body.decode().strip()


async def served(fleet: DockerFleet, port: int) -> dict[str, str]:
    """What each host's own proxy answers on ``port``."""
    return {h.net.name: await answer(h.net.address, port) for h in fleet.hosts}


def containers(fleet: DockerFleet, app: str) -> dict[str, list[tuple[str, str, str]]]:
    """Per host, every container of ``app`` its engine has: (id, version, status)."""
    return {
        host: [
            (c.id, c.labels.get(LABEL_VERSION, ""), c.status)
            for c in engine.containers(**{LABEL_APP: app})
        ]
        for host, engine in fleet.engines.by_host.items()
    }


async def only_containers_of(fleet: DockerFleet, app: str, version: str, count: int) -> None:
    """Wait (30 s at most) until every host's engine has exactly ``count`` containers of
    ``app``, all of ``version`` and running."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        seen = await asyncio.to_thread(containers, fleet, app)
        if all(
            len(found) == count and all(v == version and s == "running" for _, v, s in found)
            for found in seen.values()
        ):
            return
        assert asyncio.get_running_loop().time() < deadline, seen
        await asyncio.sleep(0.2)


async def load_seen(load: Load, after: float, count: int = 40) -> None:
    deadline = asyncio.get_running_loop().time() + 30
    while sum(s.sent >= after for s in load.timeline) < count:
        assert asyncio.get_running_loop().time() < deadline, "no load after the mark"
        await asyncio.sleep(0.05)


async def start_load(url: str) -> Load:
    return await Load().start(
        url, concurrency=3, max_requests=300_000, max_seconds=240, delay=0.005
    )


def after_first(outcome: LoadResult, version: str) -> set[str]:
    """Every answer to a request sent once the first ``version`` answer came back."""
    first = min(s.t for s in outcome.timeline if s.body == version)
    return {s.body for s in outcome.timeline if s.sent >= first and s.body is not None}


async def test_a_rolling_deploy_of_a_docker_app_across_three_hosts_fails_no_request(
    dfleet: DockerFleet,
) -> None:
    port = 8081
    config = app_config(dfleet, "roll", port, edge=False)
    first = await deploy(dfleet, config, "v1")
    assert first.rc == 0, first
    assert await served(dfleet, port) == dict.fromkeys(NAMES, "v1")
    loads = [await start_load(f"http://{h.net.address}:{port}/") for h in dfleet.hosts]
    for load in loads:
        await load_seen(load, load.marker("v1 served"), 20)
    second = await deploy(dfleet, config, "v2")
    ended = [load.marker("deployed") for load in loads]
    for load, mark in zip(loads, ended, strict=True):
        await load_seen(load, mark, 20)
    results = [await load.stop() for load in loads]
    assert second.rc == 0, second
    for h, result, mark in zip(dfleet.hosts, results, ended, strict=True):
        assert_no_failures(result)  # each host's own proxy served every request
        assert set(result.bodies) == {"v1", "v2"}, (h.net.name, result.summary())
        after = {s.body for s in result.timeline if s.sent >= mark and s.body is not None}
        assert after == {"v2"}, (h.net.name, result.summary())
    assert await served(dfleet, port) == dict.fromkeys(NAMES, "v2")
    await only_containers_of(dfleet, "roll", "v2", 2)


async def test_a_blue_green_at_the_edge_cuts_docker_instances_over_in_one_revision(
    dfleet: DockerFleet,
) -> None:
    port = 8080
    config = app_config(dfleet, "shop", port, edge=True)
    first = await deploy(dfleet, config, "v1")
    assert first.rc == 0, first
    async with Etcd(dfleet.etcd.endpoints) as etcd:
        route = await published(etcd, "shop")
        assert route is not None and route.instances, route  # straight to the containers
        load = await start_load(f"http://{dfleet.edge.net.address}:{port}/")
        await load_seen(load, load.marker("v1 served"))
        _, start = await etcd.get_prefix(keys.CONTROLLER)
        result = await deploy(dfleet, config, "v2")
        await load_seen(load, load.marker("deployed"))
        outcome = await load.stop()
        history = await events_since(etcd, start + 1)
        kv = await etcd.get(DEPLOYMENTS + "shop")
        assert kv is not None
        record = json.loads(kv.value)
        route = await published(etcd, "shop")
        endpoints = {v.record.name: v.record.endpoints for v in await fleet_hosts(etcd)}
    assert result.rc == 0, result
    assert record["state"] == "succeeded" and record["step"] == "switching", record
    route_writes = [e for e in history if e.kind == "put" and e.kv.key == EDGES + "shop"]
    assert [e.kv.mod_revision for e in route_writes] == [record["cutover_revision"]], route_writes
    assert route is not None and route.version == "v2" and route.instances, route
    for h in dfleet.hosts:  # the containers, published on each host's private address
        addresses = endpoints[h.net.name]["shop"]["v2"]
        assert len(addresses) == 2, endpoints
        assert all(a.startswith(h.net.address + ":") for a in addresses), endpoints
    assert_no_failures(outcome)
    assert after_first(outcome, "v2") == {"v2"}, outcome.summary()
    assert await served(dfleet, port) == dict.fromkeys(NAMES, "v2")
    await only_containers_of(dfleet, "shop", "v2", 2)


async def test_an_image_failing_readiness_on_the_second_host_leaves_every_host_on_the_old_one(
    dfleet: DockerFleet,
) -> None:
    port = 8082
    config = app_config(dfleet, "gate", port, edge=True)
    first = await deploy(dfleet, config, "v1")
    assert first.rc == 0, first
    before = await asyncio.to_thread(containers, dfleet, "gate")
    async with Etcd(dfleet.etcd.endpoints) as etcd:
        load = await start_load(f"http://{dfleet.edge.net.address}:{port}/")
        await load_seen(load, load.marker("v1 served"))
        _, start = await etcd.get_prefix(keys.CONTROLLER)
        result = await deploy(dfleet, config, "v3")
        await load_seen(load, load.marker("failed"))
        outcome = await load.stop()
        history = await events_since(etcd, start + 1)
        route = await published(etcd, "gate")
        kv = await etcd.get(DEPLOYMENTS + "gate")
        assert kv is not None
        record = json.loads(kv.value)
    assert result.rc == 1, result
    assert "web2" in result.out + result.err, result
    assert record["state"] == "failed" and record["cutover_revision"] is None, record
    # Staged on every host, then discarded on every host: the edges never left v1.
    phases = {
        (keys.name_after(keys.DESIRED, e.kv.key).split("/")[0], desired.phase)
        for e in history
        if e.kind == "put" and e.kv.key.startswith(keys.DESIRED) and e.kv.key.endswith("/gate")
        for desired in [keys.DesiredRelease.from_json(e.kv.value)]
    }
    assert {(h, p) for h in NAMES for p in ("stage", "discard")} <= phases, phases
    assert route is not None and route.version == "v1", route
    assert_no_failures(outcome)
    assert set(outcome.bodies) == {"v1"}, outcome.summary()
    assert await served(dfleet, port) == dict.fromkeys(NAMES, "v1")
    await only_containers_of(dfleet, "gate", "v1", 2)
    # The very containers from before: nothing staged or new left behind.
    assert await asyncio.to_thread(containers, dfleet, "gate") == before
