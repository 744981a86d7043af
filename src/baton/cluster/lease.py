"""A lease kept alive in the background: what host registration, leader election and
deploy locks are built on.

``KeptLease.grant`` asks etcd for a lease of ``ttl`` seconds and renews it every ``ttl/3``.
The holder learns it lost the lease through ``lost`` (an event): etcd said the lease is gone,
or no renewal got through for a whole TTL (etcd unreachable: the lease has lapsed or is
about to, and with it every key under it). A lost lease is never renewed again; the holder
takes a new one. ``revoke`` ends it at once (keys under it go with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from baton.cluster.etcd import Etcd
from baton.errors import EtcdError, EtcdUnavailable

log = logging.getLogger("baton.cluster")


class KeptLease:
    def __init__(self, etcd: Etcd, lease_id: int, ttl: int) -> None:
        self.etcd = etcd
        self.id = lease_id
        self.ttl = ttl
        self.lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def grant(cls, etcd: Etcd, ttl: int) -> KeptLease:
        lease = cls(etcd, await etcd.grant(ttl), ttl)
        lease._task = asyncio.get_running_loop().create_task(lease._keep())
        return lease

    async def _keep(self) -> None:
        renewed = time.monotonic()
        while not self.lost.is_set():
            await asyncio.sleep(self.ttl / 3)
            try:
                left = await self.etcd.keepalive(self.id)
            except (EtcdUnavailable, EtcdError) as exc:
                if time.monotonic() - renewed >= self.ttl:
                    log.warning("lease %x lapsed: no renewal for %ss (%s)", self.id, self.ttl, exc)
                    self.lost.set()
                continue
            if left <= 0:
                log.warning("lease %x lapsed: etcd no longer has it", self.id)
                self.lost.set()
            else:
                renewed = time.monotonic()

    async def revoke(self) -> None:
        """Stop renewing and end the lease now; etcd unreachable is no error (it lapses)."""
        self.lost.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(EtcdUnavailable):
            await self.etcd.revoke(self.id)
