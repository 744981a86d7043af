"""A fleet member in a process of its own, for tests that SIGKILL it: it registers a host
in etcd and campaigns for the controller, printing ``registered`` and then ``leading TERM``
on stdout as each happens.

    python -m tests.support.cluster_member ENDPOINTS NAME TTL
"""

from __future__ import annotations

import asyncio
import sys

from baton.cluster.election import Election
from baton.cluster.etcd import Etcd
from baton.cluster.keys import HostRecord
from baton.cluster.registry import Registration


async def main(endpoints: str, name: str, ttl: int) -> None:
    async with Etcd(endpoints) as etcd:
        registration = Registration(etcd, HostRecord(name, f"127.0.0.1:{ttl}"), ttl=ttl)
        await registration.start()
        await registration.registered.wait()
        print("registered", flush=True)
        election = Election(etcd, name, ttl=ttl)
        await election.campaign()
        print(f"leading {election.term}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
