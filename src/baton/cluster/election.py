"""Leader election for the fleet's controller, and deploy locks: both one key under a lease.

Election: every candidate runs ``Election.campaign``, which tries one transaction — "if
``/baton/controller`` does not exist (create revision 0), put my name there under my lease"
— and, when another candidate holds the key, watches it until it is deleted (the holder
resigned or its lease lapsed: killed, partitioned) and tries again. The holder is leader
while its lease is kept; ``lost`` tells it when it no longer is, and it must stop acting as
leader then. The leader's identity is ``(name, create_revision)``: a new term has a new
revision, so a stale leader's writes are fenced on it (``baton.cluster.fence``), and so
are a rollout's on its lock key's create revision (``DeployLock.revision``).

A deploy lock (``DeployLock.acquire``) is the same transaction on ``/baton/locks/APP``
without the waiting: a second deploy of a locked app fails at once with
``DeploymentLocked`` naming the holder; a holder that dies frees the lock within its TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from baton.cluster import keys
from baton.cluster.etcd import Compare, Etcd, get_op, put_op
from baton.cluster.lease import KeptLease
from baton.errors import DeploymentLocked, EtcdError, EtcdUnavailable

log = logging.getLogger("baton.cluster")

LEADER_TTL = 5
LOCK_TTL = 10
RETRY_INTERVAL = 1.0


async def _claim(etcd: Etcd, key: str, holder: str, lease: KeptLease) -> tuple[bool, str, int]:
    """Put ``holder`` at ``key`` if nobody holds it: (won, holder now, revision to watch)."""
    result = await etcd.txn(
        [Compare.absent(key)], [put_op(key, holder, lease=lease.id)], [get_op(key)]
    )
    if result.succeeded:
        return True, holder, result.revision
    current = result.ranges()[0] if result.ranges() else []
    if not current:
        return False, "", result.revision  # deleted in between: try again
    return False, current[0].value.decode(errors="replace"), result.revision


class Election:
    def __init__(
        self, etcd: Etcd, name: str, key: str = keys.CONTROLLER, ttl: int = LEADER_TTL
    ) -> None:
        self.etcd = etcd
        self.name = name
        self.key = key
        self.ttl = ttl
        self.lease: KeptLease | None = None
        self.term = 0  # the key's create revision while this candidate leads

    @property
    def lost(self) -> asyncio.Event:
        """Set once this leader's lease is gone (check ``leading`` before acting)."""
        if self.lease is None:
            event = asyncio.Event()
            event.set()
            return event
        return self.lease.lost

    @property
    def leading(self) -> bool:
        return self.lease is not None and not self.lease.lost.is_set()

    async def campaign(self) -> None:
        """Return once this candidate is the leader (waits as long as another one is)."""
        while True:
            try:
                if self.lease is None or self.lease.lost.is_set():
                    self.lease = await KeptLease.grant(self.etcd, self.ttl)
                won, holder, revision = await _claim(self.etcd, self.key, self.name, self.lease)
                if won:
                    kv = await self.etcd.get(self.key)
                    self.term = kv.create_revision if kv is not None else revision
                    log.info("%s leads (term %s)", self.name, self.term)
                    return
                if holder:
                    # Bounded: a watch on a member cut off from us would wait forever.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wait_deleted(revision), self.ttl)
            except (EtcdUnavailable, EtcdError) as exc:
                log.warning("%s: election: %s", self.name, exc)
                await asyncio.sleep(RETRY_INTERVAL)

    async def _wait_deleted(self, revision: int) -> None:
        async for _, events in self.etcd.watch(self.key, revision + 1):
            if any(e.kind == "delete" and e.kv.key == self.key for e in events):
                return

    def deposed(self) -> None:
        """A fenced write told this leader it no longer leads: stop acting as one now,
        before its own lease keeper notices (the next campaign takes a new lease)."""
        if self.lease is not None:
            self.lease.lost.set()
        self.term = 0

    async def resign(self) -> None:
        """Step down now (another candidate takes over at once)."""
        if self.lease is not None:
            await self.lease.revoke()
        self.term = 0


async def leader(etcd: Etcd, key: str = keys.CONTROLLER) -> str | None:
    """The current leader's name, or None while there is none."""
    kv = await etcd.get(key)
    return kv.value.decode(errors="replace") if kv is not None else None


class DeployLock:
    """One app's deploy lock, held under a kept lease until ``release()``."""

    def __init__(
        self, etcd: Etcd, app: str, holder: str, lease: KeptLease, revision: int = 0
    ) -> None:
        self.etcd = etcd
        self.app = app
        self.holder = holder
        self.lease = lease
        self.key = keys.lock_key(app)
        self.revision = revision  # the lock key's create revision: writes fence on it

    @classmethod
    async def acquire(cls, etcd: Etcd, app: str, holder: str, ttl: int = LOCK_TTL) -> DeployLock:
        lease = await KeptLease.grant(etcd, ttl)
        try:
            won, current, revision = await _claim(etcd, keys.lock_key(app), holder, lease)
        except BaseException:
            await lease.revoke()
            raise
        if not won:
            await lease.revoke()
            raise DeploymentLocked(
                f"{app} is being deployed by {current or 'another deployment'} (fleet lock"
                f" {keys.lock_key(app)} in etcd); wait for it, or for its lease to lapse"
            )
        return cls(etcd, app, holder, lease, revision)

    @property
    def held(self) -> bool:
        return not self.lease.lost.is_set()

    async def release(self) -> None:
        with contextlib.suppress(EtcdUnavailable):
            await self.lease.revoke()
