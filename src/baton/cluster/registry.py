"""Host registration: who is in the fleet, and who is reachable right now.

A host writes its ``HostRecord`` twice: under ``/baton/hosts/NAME`` (kept: the fleet knows
the host even when it is down) and under ``/baton/alive/NAME`` with the host's lease. While
the host runs and reaches etcd it renews the lease; when it is killed or cut off, the lease
lapses after its TTL and the ``alive`` key goes: the host is *unreachable*. ``Registration``
re-registers by itself under a new lease once etcd answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from baton.cluster import keys
from baton.cluster.etcd import Etcd
from baton.cluster.lease import KeptLease
from baton.errors import EtcdError, EtcdUnavailable

log = logging.getLogger("baton.cluster")

HOST_TTL = 5  # seconds without a renewal before a host counts as unreachable
RETRY_INTERVAL = 1.0


@dataclass(frozen=True)
class HostView:
    record: keys.HostRecord
    reachable: bool


class Registration:
    """Keeps one host registered until ``stop()``; ``registered`` is set while it is."""

    def __init__(self, etcd: Etcd, record: keys.HostRecord, ttl: int = HOST_TTL) -> None:
        self.etcd = etcd
        self.record = record
        self.ttl = ttl
        self.registered = asyncio.Event()
        self._lease: KeptLease | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Register now if etcd answers (else keep trying in the background)."""
        with contextlib.suppress(EtcdUnavailable, EtcdError):
            await self._register()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _register(self) -> None:
        lease = await KeptLease.grant(self.etcd, self.ttl)
        try:
            await self.etcd.put(keys.host_key(self.record.name), self.record.to_json())
            await self.etcd.put(
                keys.alive_key(self.record.name), self.record.to_json(), lease=lease.id
            )
        except BaseException:
            await lease.revoke()
            raise
        self._lease = lease
        self.registered.set()
        log.info("host %s registered in etcd (lease %x)", self.record.name, lease.id)

    async def _run(self) -> None:
        while True:
            if self._lease is not None:
                await self._lease.lost.wait()
                self.registered.clear()
                self._lease = None
            try:
                await self._register()
            except (EtcdUnavailable, EtcdError) as exc:
                log.warning("host %s: cannot register in etcd yet: %s", self.record.name, exc)
                await asyncio.sleep(RETRY_INTERVAL)

    async def update(self, record: keys.HostRecord) -> None:
        """Publish a changed record (e.g. the versions it serves) under the same lease."""
        self.record = record
        lease = self._lease
        if lease is None:
            return  # written on the next registration
        await self.etcd.put(keys.host_key(record.name), record.to_json())
        await self.etcd.put(keys.alive_key(record.name), record.to_json(), lease=lease.id)

    async def stop(self) -> None:
        """Leave the fleet's reachable hosts at once (the host record stays)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._lease is not None:
            await self._lease.revoke()
            self._lease = None
        self.registered.clear()


async def hosts(etcd: Etcd) -> list[HostView]:
    """Every known host, sorted by name, and whether it is reachable (its lease is live)."""
    known, _ = await etcd.get_prefix(keys.HOSTS)
    alive, _ = await etcd.get_prefix(keys.ALIVE)
    live = {keys.name_after(keys.ALIVE, kv.key): kv for kv in alive}
    views: list[HostView] = []
    for kv in known:
        name = keys.name_after(keys.HOSTS, kv.key)
        source = live.get(name, kv)  # the live record is the freshest
        try:
            record = keys.HostRecord.from_json(source.value, f"etcd key {source.key}")
        except ValueError as exc:
            log.warning("skipping a bad host record: %s", exc)
            continue
        views.append(HostView(record, name in live))
    return views
