"""The fleet's controller: elected among the hosts that may run it, it carries out the
deploy requests written to ``/baton/requests/APP`` with ``roll_out``.

Every candidate runs ``Controller.run``; one leads at a time (``baton.cluster.election``).
The leader lists the requests, and for each one whose deployment record
(``/baton/deployments/APP``) has not ended runs the rollout, then watches for new requests
(re-reading them every ``RESYNC_INTERVAL``, so a quiet partition is bounded). When it loses
its lease it cancels what it was doing at once and campaigns again; the deployment stays
recorded as running, and the next leader resumes it: hosts that finished it are not
deployed again, an unwind restores the recorded previous releases. A dead leader's deploy
lock lapses with its lease, so the new leader waits for it (up to ``LOCK_WAIT``). What the
leader writes is fenced on its term (``baton.cluster.fence.leading``): a leader deposed
without knowing it yet (paused, cut off) has its writes refused (``Fenced``) and stops.

``submit`` and ``outcome`` are the client's side: write a request, wait for its record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from baton.cluster import keys
from baton.cluster.cutover import edge_blue_green
from baton.cluster.edgeroll import edge_rolling
from baton.cluster.election import LOCK_TTL, Election
from baton.cluster.etcd import Etcd, KeyValue
from baton.cluster.fence import Fence, leading
from baton.cluster.fleetcanary import edge_canary, host_canary
from baton.cluster.rollout import deployment_record, roll_out
from baton.errors import BatonError, DeploymentLocked, EtcdError, EtcdUnavailable, Fenced

log = logging.getLogger("baton.cluster")

RESYNC_INTERVAL = 3.0
LOCK_WAIT = 3 * LOCK_TTL
RETRY_INTERVAL = 1.0


class Controller:
    def __init__(self, etcd: Etcd, name: str, *, ttl: int | None = None) -> None:
        self.etcd = etcd
        self.name = name
        self.election = Election(etcd, name) if ttl is None else Election(etcd, name, ttl=ttl)
        self.leading = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        task = asyncio.get_running_loop().create_task(self._loop())
        try:
            await stop.wait()
        finally:
            # Cancelled again until it ends: Python 3.11's wait_for drops a cancellation that
            # arrives as its awaitable finishes (the campaign then goes on leading).
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()
            with contextlib.suppress(EtcdUnavailable, EtcdError):
                await self.election.resign()

    async def _loop(self) -> None:
        while True:
            await self.election.campaign()
            self.leading.set()
            lead = asyncio.get_running_loop().create_task(self._lead())
            lost = asyncio.get_running_loop().create_task(self.election.lost.wait())
            try:
                await asyncio.wait({lead, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self.leading.clear()
                for task in (lead, lost):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            log.warning("%s no longer leads the fleet's controller", self.name)

    async def _lead(self) -> None:
        with leading(self.election.term):  # every write below is fenced on this term
            await self._serve()

    async def _serve(self) -> None:
        while True:
            try:
                requests, revision = await self.etcd.get_prefix(keys.REQUESTS)
                for kv in requests:
                    await self._handle(kv)
                await self._wait_for_request(revision + 1)
            except Fenced as exc:  # deposed while paused or cut off: the new leader acts
                log.warning("controller %s: %s", self.name, exc)
                self.election.deposed()
                return
            except BatonError as exc:  # etcd away, a lock never freed: the next round retries
                log.warning("controller %s: %s", self.name, exc)
                await asyncio.sleep(RETRY_INTERVAL)
            except Exception:  # a bug in one round must not end the leading
                log.exception("controller %s: a round failed; trying again", self.name)
                await asyncio.sleep(RETRY_INTERVAL)

    async def _wait_for_request(self, start: int) -> None:
        changes = self.etcd.watch(keys.REQUESTS, start)
        try:
            with contextlib.suppress(TimeoutError, StopAsyncIteration):
                await asyncio.wait_for(anext(changes), RESYNC_INTERVAL)
        finally:
            await changes.aclose()

    async def _handle(self, kv: KeyValue) -> None:
        try:
            request = keys.DeployRequest.from_json(kv.value, f"etcd key {kv.key}")
        except ValueError as exc:
            log.error("controller %s: ignoring a bad request: %s", self.name, exc)
            return
        app, deployment = request.release.app, request.release.deployment
        known = await deployment_record(self.etcd, app, deployment)
        if known is not None and known.get("state") != "running":
            return
        log.info("controller %s: rolling out %s (%s)", self.name, app, deployment)
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                # Every write of a canary or an edge cutover goes through a client fenced
                # on this leader's term (``baton.cluster.fence``).
                if request.edge is not None and request.canary:  # a canary at the edges
                    fenced = Fence.current(self.etcd).client()
                    result = await edge_canary(fenced, request, self.name)
                    break
                if request.canary:  # a canary without edges: on every host at once
                    fenced = Fence.current(self.etcd).client()
                    result = await host_canary(fenced, request, self.name)
                    break
                if request.edge is not None and request.edge_rolling:  # hosts in batches
                    fenced = Fence.current(self.etcd).client()
                    result = await edge_rolling(fenced, request, self.name)
                    break
                if request.edge is not None:  # one cutover at the edges
                    fenced = Fence.current(self.etcd).client()
                    result = await edge_blue_green(fenced, request, self.name)
                    break
                result = await roll_out(
                    self.etcd,
                    request.release,
                    request.hosts,
                    hosts_at_once=request.hosts_at_once,
                    skip_unreachable=request.skip_unreachable,
                    configs=request.configs,
                    holder=self.name,
                    max_unavailable=request.max_unavailable_hosts or None,
                )
                break
            except DeploymentLocked:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(RETRY_INTERVAL)  # a dead leader's lock lapses
        log.info("controller %s: %s %s: %s", self.name, app, deployment, result.message)


async def submit(etcd: Etcd, request: keys.DeployRequest) -> None:
    await etcd.put(keys.request_key(request.release.app), request.to_json())


async def outcome(etcd: Etcd, app: str, deployment: str, timeout: float) -> dict[str, Any]:
    """The deployment's record once it ended (succeeded or failed)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(EtcdUnavailable):
            record = await deployment_record(etcd, app, deployment)
            if record is not None and record.get("state") != "running":
                return record
        if time.monotonic() > deadline:
            raise EtcdUnavailable(f"{app} {deployment}: no outcome within {timeout:g}s")
        await asyncio.sleep(0.1)
