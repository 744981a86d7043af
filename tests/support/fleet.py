"""A fleet of three Baton hosts for the cluster tests: each a network namespace with its own
daemon, proxy, apps and state dir, coordinated through a real 3-member etcd.

etcd runs in the test's namespace on the lab's gateway address (10.213.N.1); the hosts reach
it over their veth links, and the test reaches each host's proxy on its own address. The
``fleet`` fixture (a pytest plugin, see ``tests/conftest.py``) starts them, the ``edge``
fixture an edge host in front of them, ``started_instance_fleet`` app hosts with
``--instance-ip`` beside controller-only hosts; the helpers read what each host serves and
what the controller wrote to etcd, and load the app through an edge. The ``etcd`` fixture is
a client of the test's loopback etcd (``etcd_cluster``), for tests that play the hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from baton.cluster import keys
from baton.cluster.etcd import Etcd, WatchEvent
from baton.cluster.registry import hosts
from baton.cluster.rollout import DEPLOYMENTS
from tests.support.etcd import EtcdCluster
from tests.support.host import CLI_TIMEOUT, Host, Result
from tests.support.load import Load
from tests.support.netns import NetHost, NetLab, require_netns

PORT = 8080
NAMES = ["web1", "web2", "web3"]


class FleetHost(Host):
    """A `Host` whose CLI, daemon and proxy run inside a namespace, serving on its address."""

    def __init__(self, root: Path, lab: NetLab, net: NetHost) -> None:
        super().__init__(root)
        self.lab, self.net = lab, net
        self.port = PORT
        self.url = f"http://{net.address}:{PORT}/"

    def config(self, extra: dict[str, Any] | None = None, name: str = "baton.yml") -> Path:
        path = super().config(
            {"proxy": {"listen": f"{self.net.address}:{PORT}"}, **(extra or {})}, name
        )
        return path  # fmt: skip

    async def baton(self, *args: str, timeout: float = CLI_TIMEOUT) -> Result:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", self.net.namespace,
            sys.executable, "-m", "baton.cli", "--state-dir", str(self.state_dir), *args,
            cwd=self.root,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**self.env, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        assert proc.returncode is not None
        return Result(proc.returncode, out.decode(), err.decode())

    async def get(self, path: str = "/") -> tuple[int, str]:
        reader, writer = await asyncio.open_connection(self.net.address, PORT)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode()


@contextlib.asynccontextmanager
async def started_fleet(
    netlab: NetLab,
    root: Path,
    names: list[str],
    flags: Callable[[NetHost], list[str]] = lambda net: [],
    prepare: Callable[[FleetHost], None] = lambda host: None,
) -> AsyncIterator[tuple[EtcdCluster, list[FleetHost]]]:
    """A 3-member etcd on the lab's gateway and a host per name, each in its own namespace
    under ``root / name``, started by ``baton up`` with ``flags(host)`` added, after
    ``prepare(host)`` (which may start things in the namespace and add to ``host.env``, the
    environment of its ``baton`` runs and so of its daemon); all torn down after (each
    host's server log tail printed: shown when the test fails)."""
    require_netns()
    etcd = EtcdCluster(root / "etcd", host=netlab.gateway).start()
    started: list[FleetHost] = []
    try:
        for name in names:
            h = FleetHost(root / name, netlab, netlab.add_host(name))
            h.root.mkdir()
            h.config()
            started.append(h)
            prepare(h)
            up = await h.baton(
                "up", "--detach", "--cluster", etcd.endpoints_text, "--host-name", name,
                "--advertise", f"{h.net.address}:{PORT}", *flags(h.net), timeout=60,
            )  # fmt: skip
            assert up.rc == 0, up
        yield etcd, started
    finally:
        for h in started:
            log = h.state_dir / "logs" / "server.log"
            if log.exists():
                print(f"--- {h.net.name} server.log (tail)\n" + log.read_text()[-3000:])
            await h.teardown()
        etcd.stop()


@pytest.fixture
async def fleet(
    netlab: NetLab, tmp_path: Path
) -> AsyncIterator[tuple[EtcdCluster, list[FleetHost]]]:
    async with started_fleet(netlab, tmp_path, NAMES) as started:
        yield started


@contextlib.asynccontextmanager
async def started_edge(
    cluster: EtcdCluster, netlab: NetLab, root: Path, name: str
) -> AsyncIterator[FleetHost]:
    """An edge host ``name`` (its own namespace, daemon and proxy) in the fleet, torn down
    after (its log's tail printed: shown when the test fails)."""
    h = FleetHost(root / name, netlab, netlab.add_host(name))
    h.root.mkdir()
    h.config()
    try:
        up = await h.baton(
            "up", "--detach", "--cluster", cluster.endpoints_text, "--host-name", name,
            "--advertise", f"{h.net.address}:{PORT}", "--roles", "edge", timeout=60,
        )  # fmt: skip
        assert up.rc == 0, up
        yield h
    finally:
        log = h.state_dir / "logs" / "server.log"
        if log.exists():
            print(f"--- {name} server.log (tail)\n" + log.read_text()[-3000:])
        await h.teardown()


@pytest.fixture
async def edge(
    fleet: tuple[EtcdCluster, list[FleetHost]], netlab: NetLab, tmp_path: Path
) -> AsyncIterator[FleetHost]:
    async with started_edge(fleet[0], netlab, tmp_path, "edge1") as h:
        yield h


async def load_through(edge: FleetHost) -> Load:
    """Continuous load through ``edge`` (bounded in count and time)."""
    return await Load().start(
        edge.url, concurrency=4, max_requests=400_000, max_seconds=240, delay=0.005
    )


async def load_seen(load: Load, after: float, count: int = 50, what: str = "the deploy") -> None:
    """Wait until ``count`` requests were sent through the edge after ``after``."""
    deadline = asyncio.get_running_loop().time() + 30
    while sum(s.sent >= after for s in load.timeline) < count:
        assert asyncio.get_running_loop().time() < deadline, f"no load after {what}"
        await asyncio.sleep(0.05)


CONTROLLERS = ["ctl1", "ctl2"]


@contextlib.asynccontextmanager
async def started_instance_fleet(
    netlab: NetLab, root: Path
) -> AsyncIterator[tuple[EtcdCluster, list[FleetHost]]]:
    """Three app hosts whose instances listen on their private addresses, and two hosts that
    only run controller candidates (``root / NAME``: killing one kills no app); the app
    hosts are the ones given back."""

    def roles(net: NetHost) -> list[str]:
        if net.name in NAMES:
            return ["--roles", "app", "--instance-ip", net.address]
        return ["--roles", "controller"]

    async with started_fleet(netlab, root, [*NAMES, *CONTROLLERS], roles) as (
        etcd,
        started,
    ):
        yield etcd, started[: len(NAMES)]


def instance_request(
    version: str, deployment: str, fleet_hosts: list[FleetHost], listen: str
) -> keys.DeployRequest:
    """A blue-green of ``version`` through the edges; each host's instances answer
    ``VERSION@HOST`` (their own baton.yml names it), so a client sees which host answered."""
    for h in fleet_hosts:
        cfg = yaml.safe_load((h.root / "baton.yml").read_text())
        cfg["run"]["env"]["APP_VERSION"] = f"{version}@{h.net.name}"
        (h.root / "baton.yml").write_text(yaml.safe_dump(cfg))
    return keys.DeployRequest(
        replace(release(version, deployment), env={}),
        tuple(NAMES),
        configs=configs(fleet_hosts),
        edge=listen,
        edge_health="/up",
    )


async def kill_daemon(etcd: Etcd, victim: FleetHost) -> None:
    """SIGKILL ``victim``'s daemon (its proxy keeps serving) and wait until its lease lapsed."""
    pid = victim.server_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = asyncio.get_running_loop().time() + 30
    while {v.record.name: v.reachable for v in await hosts(etcd)}[victim.net.name]:
        assert asyncio.get_running_loop().time() < deadline, f"{victim.net.name} still reachable"
        await asyncio.sleep(0.1)


def release(version: str, deployment: str) -> keys.DesiredRelease:
    """The release for every host; each host's baton.yml comes from ``configs()``."""
    return keys.DesiredRelease(
        "shop", version, deployment, "(per host)", env={"APP_VERSION": version}
    )


def configs(fleet_hosts: list[FleetHost]) -> dict[str, str]:
    return {h.net.name: str(h.root / "baton.yml") for h in fleet_hosts}


async def versions(fleet_hosts: list[FleetHost]) -> list[str]:
    return [(await h.get("/"))[1].strip().split()[0] for h in fleet_hosts]


async def served_by_each(fleet_hosts: list[FleetHost]) -> dict[str, str]:
    out: dict[str, str] = {}
    for h in fleet_hosts:
        status, body = await h.get("/")
        assert status == 200, (h.net.name, status, body)
        out[h.net.name] = next(v for v in ("v1", "v2", "v3") if v in body)
    return out


async def desired_revisions(etcd: Etcd) -> dict[str, int]:
    """Every key the controller writes for the app, and the revision it was last written at."""
    kvs, _ = await etcd.get_prefix(keys.DESIRED)
    record = await etcd.get(DEPLOYMENTS + "shop")
    assert record is not None
    return {kv.key: kv.mod_revision for kv in [*kvs, record]}


async def events_since(etcd: Etcd, start: int) -> list[WatchEvent]:
    """Every change under /baton/ from revision ``start`` to now, in order (etcd's history)."""
    _, now = await etcd.get_prefix(keys.CONTROLLER)
    seen: list[WatchEvent] = []
    changes = etcd.watch(keys.ROOT, start)
    try:
        async with asyncio.timeout(30):
            async for _, events in changes:
                seen += events
                if any(e.kv.mod_revision >= now for e in events):
                    return seen
    finally:
        await changes.aclose()
    return seen


@dataclass
class Flight:
    """When each host was switched to a deployment and when it finished it (revisions),
    read from etcd's history of desired releases and progress."""

    switched: dict[str, int]
    ended: dict[str, int]

    @property
    def moved(self) -> list[str]:
        return sorted(self.switched, key=lambda h: self.switched[h])

    @property
    def most(self) -> int:
        """The most hosts switched and not yet finished at one revision."""
        moments = {*self.switched.values(), *self.ended.values()}
        return max(
            (
                sum(1 for h, r in self.switched.items() if r <= at < self.ended.get(h, 1 << 62))
                for at in moments
            ),
            default=0,
        )


def in_flight(events: list[WatchEvent], deployment: str) -> Flight:
    flight = Flight({}, {})
    for event in events:
        key, kv = event.kv.key, event.kv
        if event.kind != "put" or not key.endswith("/shop"):
            continue
        if key.startswith(keys.DESIRED):
            host = key[len(keys.DESIRED) :].split("/")[0]
            if keys.DesiredRelease.from_json(kv.value).deployment == deployment:
                flight.switched.setdefault(host, kv.mod_revision)
        elif key.startswith(keys.PROGRESS):
            host = key[len(keys.PROGRESS) :].split("/")[0]
            progress = keys.Progress.from_json(kv.value)
            if progress.deployment == deployment and progress.finished:
                flight.ended.setdefault(host, kv.mod_revision)
    return flight


def moved_deployment(out: str) -> str:
    """The fleet deployment id ``baton deploy`` printed."""
    return out.split("fleet deployment ", 1)[1].split(":", 1)[0]


@pytest.fixture
async def etcd(etcd_cluster: EtcdCluster) -> AsyncIterator[Etcd]:
    async with Etcd(etcd_cluster.endpoints) as client:
        yield client


async def lapse(etcd: Etcd, key: str) -> None:
    """End the lease ``key`` lives under, as etcd does when its holder stops renewing."""
    kv = await etcd.get(key)
    assert kv is not None and kv.lease, key
    await etcd.revoke(kv.lease)


async def desired(etcd: Etcd, host: str, deployment: str, timeout: float = 30) -> None:
    """Wait until ``host``'s desired release of shop is ``deployment``."""
    deadline = time.monotonic() + timeout
    while True:
        kv = await etcd.get(keys.desired_key(host, "shop"))
        if kv is not None and keys.DesiredRelease.from_json(kv.value).deployment == deployment:
            return
        assert time.monotonic() < deadline, f"{host} never asked for {deployment}"
        await asyncio.sleep(0.05)
