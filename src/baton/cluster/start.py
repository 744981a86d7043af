"""Starting a host's fleet agent inside the daemon (``baton up --cluster``).

``start_agent`` is all the daemon calls: it builds the etcd client, the host record and the
agent, and runs it until ``stop``. The agent talks to the daemon through its API socket,
like any client. A host with the ``controller`` role also runs a controller candidate, one with the ``edge``
role an edge agent (``baton.cluster.edge``). While the agent runs,
``cluster.json`` in the state dir says where the fleet is (for ``baton status``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from baton import __version__
from baton.cluster.agent import Agent, LocalDaemon
from baton.cluster.cli import ClusterOptions
from baton.cluster.controller import Controller
from baton.cluster.edge import EdgeAgent
from baton.cluster.etcd import Etcd
from baton.cluster.fleetview import CLUSTER_FILE, write_local_cluster
from baton.cluster.keys import HostRecord
from baton.deploy.proxyclient import ProxyClient
from baton.runtime.base import Runtimes
from baton.runtime.docker import DockerRuntime
from baton.runtime.process import ProcessRuntime


def configure_runtimes(options: ClusterOptions | None, runtimes: Runtimes) -> None:
    """``--instance-ip``: process instances listen on the host's private address, and
    Docker instances publish their port there."""
    if options is None or options.instance_ip is None:
        return
    process = runtimes.get("process")
    assert isinstance(process, ProcessRuntime)
    process.bind = options.instance_ip
    docker = runtimes.get("docker")  # made here, connected on first use
    assert isinstance(docker, DockerRuntime)
    docker.bind = options.instance_ip


async def start_agent(options: ClusterOptions, state_dir: Path, stop: asyncio.Event) -> None:
    record = HostRecord(options.host_name, options.advertise, options.roles, __version__)
    write_local_cluster(state_dir, list(options.endpoints), options.host_name)
    try:
        async with Etcd(list(options.endpoints)) as etcd:
            agent = Agent(etcd, record, LocalDaemon(state_dir / "baton.sock"))
            jobs = [agent.run(stop)]
            if "controller" in options.roles:  # a candidate: one of them is elected
                jobs.append(Controller(etcd, options.host_name).run(stop))
            if "edge" in options.roles:  # routes published edge routes through its proxy
                proxy = ProxyClient(state_dir / "proxy.sock")
                jobs.append(EdgeAgent(etcd, options.host_name, proxy).run(stop))
            try:
                await asyncio.gather(*jobs)
            finally:
                if "edge" in options.roles:
                    await proxy.close()
    finally:  # `baton status` shows the fleet only while the agent runs
        (state_dir / CLUSTER_FILE).unlink(missing_ok=True)
