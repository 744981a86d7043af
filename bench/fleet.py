"""Fleet benchmark: a release rolled out across N hosts through etcd, against deploying the
same hosts one after another with `baton deploy` (what a script around one-host deploys
does), measured in the same run; failed requests under load on every host.

    .venv/bin/python bench/fleet.py [--hosts 3,6] [--json out.json]

One run, in a temp dir: a 3-member etcd cluster on loopback, then for each N in --hosts,
N Baton hosts on loopback (each its own state dir, daemon, proxy on a free 127.0.0.1 port,
one instance of the example app; every host a controller candidate), joined to the fleet
with `baton up --cluster`. A first fleet deploy (v0) warms everything up. Then, with a
bounded load (2 connections per host, requests checked for errors) on every host's port:

1. **sequential**: `baton deploy` through each host's CLI, one host after the other (this
   includes each CLI's start-up), and again through each daemon's API (no CLI start-up:
   the peer the fleet's ratios are against);
2. **fleet, 1 at a time**: one fleet deployment (a request to the elected controller,
   `hosts_at_once: 1`), timed from the request to the controller's recorded outcome;
3. **fleet, all at once**: the same with `hosts_at_once: N` (one batch, one etcd revision);
4. **fleet, 1 at a time, 2 in flight**: `hosts_at_once: 1, max_unavailable_hosts: 2` (a
   batch starts whenever fewer than 2 hosts are switching).

Printed: seconds for each, the fleet's time as a ratio of the sequential (API) one, and the
failed requests over all of them. The machine runs etcd, every host, the apps and the load
generator: read the figures as ratios on one box, not as absolutes.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from _fleetlab import TIMEOUT, arguments, controller_deploy, each_size, fleet_of, sequential_api  # noqa: E402

from baton.cluster.etcd import Etcd  # noqa: E402
from tests.support.etcd import EtcdCluster  # noqa: E402
from tests.support.host import Host  # noqa: E402
from tests.support.load import Load  # noqa: E402


async def fleet_deploy(
    etcd: Etcd, hosts: list[Host], version: str, at_once: int, in_flight: int = 0
) -> float:
    return await controller_deploy(
        etcd, hosts, version, f"bench-{version}", hosts_at_once=at_once,
        max_unavailable_hosts=in_flight,
    )  # fmt: skip


async def sequential(hosts: list[Host], version: str) -> float:
    started = time.monotonic()
    for h in hosts:
        result = await h.deploy("--version", version, "--env", f"APP_VERSION={version}")
        if result.rc != 0:
            raise RuntimeError(f"baton deploy {version} failed: {result}")
    return time.monotonic() - started


async def one_size(n: int, root: Path, cluster: EtcdCluster) -> dict[str, Any]:
    hosts = await fleet_of(n, root, cluster.endpoints_text)
    loads: list[Load] = []
    try:
        async with Etcd(cluster.endpoints) as etcd:
            await fleet_deploy(etcd, hosts, "v0", n)
            loads = [
                await Load().start(
                    h.url, concurrency=2, max_requests=500_000, max_seconds=TIMEOUT, delay=0.01
                )
                for h in hosts
            ]
            seq_cli = await sequential(hosts, "v1")
            seq = await sequential_api(hosts, "v2")
            one = await fleet_deploy(etcd, hosts, "v3", 1)
            every = await fleet_deploy(etcd, hosts, "v4", n)
            two = await fleet_deploy(etcd, hosts, "v5", 1, min(2, n))
        results = [await load.stop() for load in loads]
        loads = []
        failed = sum(len(r.failures) for r in results)
        total = sum(r.total for r in results)
        return {
            "hosts": n,
            "sequential_cli_s": round(seq_cli, 2),
            "sequential_s": round(seq, 2),
            "fleet_one_at_a_time_s": round(one, 2),
            "fleet_all_at_once_s": round(every, 2),
            "fleet_two_in_flight_s": round(two, 2),
            "one_at_a_time_vs_sequential": round(one / seq, 2),
            "all_at_once_vs_sequential": round(every / seq, 2),
            "two_in_flight_vs_sequential": round(two / seq, 2),
            "requests": total,
            "failed_requests": failed,
        }
    finally:
        for load in loads:
            await load.stop()
        for h in hosts:
            await h.teardown()


async def main() -> None:
    sizes, json_out = arguments(__doc__ or "")
    rows = await each_size(sizes, "baton-bench-fleet-", one_size, json_out)
    print(
        "hosts  seq. CLI  seq. API  fleet 1-at-a-time  fleet all-at-once  fleet 2-in-flight"
        "  failed/requests"
    )
    for r in rows:
        print(
            f"{r['hosts']:>5}  {r['sequential_cli_s']:>7.1f}s  {r['sequential_s']:>7.1f}s"
            f"  {r['fleet_one_at_a_time_s']:>8.1f}s ({r['one_at_a_time_vs_sequential']:.2f}x)"
            f"  {r['fleet_all_at_once_s']:>8.1f}s ({r['all_at_once_vs_sequential']:.2f}x)"
            f"  {r['fleet_two_in_flight_s']:>8.1f}s ({r['two_in_flight_vs_sequential']:.2f}x)"
            f"  {r['failed_requests']}/{r['requests']}"
        )


if __name__ == "__main__":
    asyncio.run(main())
