"""Edge benchmark: blue-green across N hosts behind an edge proxy (one cutover from one etcd
revision), against deploying the same hosts one after another, measured in the same run;
failed requests through the edge under load.

    .venv/bin/python bench/edge.py [--hosts 3,6] [--json out.json]

One run, in a temp dir: a 3-member etcd cluster on loopback, then for each N in --hosts, N
Baton app hosts on loopback (as bench/fleet.py: own state dir, daemon, proxy on a free
127.0.0.1 port, one instance of the example app, every host a controller candidate) and one
edge host (``--roles edge``) whose proxy takes the app's traffic on its own port. A first
fleet deploy (v0, with ``edge``) rolls out and publishes the edge route. Then, with a
bounded load through the edge (4 connections, every request checked):

1. **sequential**: each host deployed through its daemon's API, one after the other (each
   host's proxy switches itself behind the edge);
2. **edge blue-green**: one fleet deployment through the edges, timed from the request to
   the controller's recorded outcome, and to the first answer of the new release through
   the edge (the cutover as clients see it).

Printed: seconds for each, the ratio to the sequential time, and the failed requests
through the edge. One box runs etcd, every host, the apps and the load: read ratios.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from _fleetlab import (  # noqa: E402
    TIMEOUT,
    arguments,
    controller_deploy,
    each_size,
    fleet_of,
    sequential_api,
    start_host,
)

from baton.cluster.etcd import Etcd  # noqa: E402
from tests.support.etcd import EtcdCluster  # noqa: E402
from tests.support.host import Host  # noqa: E402
from tests.support.load import Load  # noqa: E402
from tests.support.procs import free_port  # noqa: E402


async def edge_deploy(etcd: Etcd, hosts: list[Host], version: str, listen: str) -> float:
    deployment = f"bench-edge-{version}"
    return await controller_deploy(
        etcd, hosts, version, deployment, hosts_at_once=len(hosts), edge=listen
    )


async def one_size(n: int, root: Path, cluster: EtcdCluster) -> dict[str, Any]:
    hosts = await fleet_of(n, root, cluster.endpoints_text)
    edge = await start_host(root, "edge", cluster.endpoints_text, "--roles", "edge")
    listen = f"127.0.0.1:{free_port()}"
    load: Load | None = None
    try:
        async with Etcd(cluster.endpoints) as etcd:
            await edge_deploy(etcd, hosts, "v0", listen)
            load = await Load().start(
                f"http://{listen}/", concurrency=4, max_requests=500_000,
                max_seconds=TIMEOUT, delay=0.005,
            )  # fmt: skip
            seq = await sequential_api(hosts, "v1")
            asked = load.marker("edge deploy")
            took = await edge_deploy(etcd, hosts, "v2", listen)
        result = await load.stop()
        load = None
        first_v2 = min(
            (s.t for s in result.timeline if s.body and s.body.startswith("v2")), default=None
        )
        return {
            "hosts": n,
            "sequential_s": round(seq, 2),
            "edge_blue_green_s": round(took, 2),
            "edge_vs_sequential": round(took / seq, 2),
            "to_cutover_s": None if first_v2 is None else round(first_v2 - asked, 2),
            "requests": result.total,
            "failed_requests": len(result.failures),
        }
    finally:
        if load is not None:
            await load.stop()
        for h in [*hosts, edge]:
            await h.teardown()


async def main() -> None:
    sizes, json_out = arguments(__doc__ or "")
    rows = await each_size(sizes, "baton-bench-edge-", one_size, json_out)
    print("hosts  sequential  edge blue-green     to cutover  failed/requests (through the edge)")
    for r in rows:
        print(
            f"{r['hosts']:>5}  {r['sequential_s']:>9.1f}s  {r['edge_blue_green_s']:>7.1f}s"
            f" ({r['edge_vs_sequential']:.2f}x)  {r['to_cutover_s']}s"
            f"  {r['failed_requests']}/{r['requests']}"
        )


if __name__ == "__main__":
    asyncio.run(main())
