"""Healing: live releases keep the instances they should have; warm releases expire.

``Healing.replace_dead`` (run by the daemon's watcher) replaces the dead instances of live
releases and tops up releases that lost some: each replacement is a new instance of the
same release, started and proven ready the way a deploy does it (``Operations``), swapped
into the route table in one snapshot together with the dead one's removal. A release whose
replacement fails is tried again after a back-off. ``expire_warm`` stops warm releases
whose ``keep_previous`` ran out. Neither touches an app while a deployment of it runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from baton.config import parse_config
from baton.deploy.deployment import Deployment, DeploymentRun, instance_of
from baton.deploy.operations import Operations
from baton.errors import BatonError
from baton.observe.metrics import METRICS
from baton.state.states import InstanceState, ReleaseState
from baton.state.store import ReleaseRow

log = logging.getLogger("baton.engine")

REPLACE_BACKOFF_MAX = 60.0  # seconds between attempts to replace a dead instance, at most
RECENT_REPLACEMENTS = 20  # how many replacements `baton status` shows per app


class Healing:
    """Replaces dead instances and expires warm releases (see the module docstring)."""

    def __init__(self, ops: Operations, app_lock: Callable[[str], asyncio.Lock]) -> None:
        self.ops = ops
        self.app_lock = app_lock
        self._replace_after: dict[int, tuple[float, float]] = {}  # release id -> (when, backoff)
        self.replaced: dict[str, list[dict[str, Any]]] = {}

    async def expire_warm(self) -> None:
        """Stop warm releases whose ``keep_previous`` ran out (not while the app deploys)."""
        store = self.ops.store
        now = time.time()
        for app in store.apps():
            if store.running_deployment(app.name) is not None:
                continue
            for release in store.releases(app.name, (ReleaseState.WARM,)):
                if release.warm_until is not None and release.warm_until > now:
                    continue
                rows = [
                    (release, r)
                    for r in store.instances(
                        release.id, (InstanceState.ROUTED, InstanceState.READY)
                    )
                ]
                with store.transaction():
                    store.update_release(release.id, state=ReleaseState.STOPPED, weight=0)
                    for _, row in rows:
                        store.set_instance_state(row.id, InstanceState.DRAINING)
                await self.ops.router.push_app(app.name)
                cfg = parse_config(release.config)
                await self.ops.stop_rows(rows, cfg.deploy.stop_timeout)
                store.add_event(None, app.name, "expired", {"version": release.version})

    async def replace_dead(self) -> list[str]:
        """Replace the dead instances of live releases; top up releases that lost some.

        Not for an app while a deployment of it runs (or is being recorded). Each
        replacement is a new instance of the same release, proven ready like any other,
        swapped into the route table in one snapshot together with the dead one's removal
        (until then the proxy's retries cover the dead target). A release whose
        replacement fails is tried again after a back-off (1 s, doubling, at most
        ``REPLACE_BACKOFF_MAX``). Returns notes for the log.
        """
        store = self.ops.store
        notes: list[str] = []
        for app in store.apps():
            lock = self.app_lock(app.name)
            if app.stopped:
                continue
            if lock.locked() or store.running_deployment(app.name) is not None:
                continue
            async with lock:
                for release in store.releases(app.name, (ReleaseState.LIVE,)):
                    if store.running_deployment(app.name) is not None:
                        break
                    try:
                        notes.extend(await self._repair(release))
                    except BatonError as exc:
                        notes.append(f"{app.name} {release.version}: {exc}")
        return notes

    async def repair(self, release: ReleaseRow, *, now: bool = False) -> list[str]:
        """Start what a live release lacks (dead or missing instances), ready, then routed.

        The same path a deploy uses to start a release's instances (``start_instance``).
        ``now`` ignores the back-off of earlier failed attempts (convergence at start).
        """
        if now:
            self._replace_after.pop(release.id, None)
        return await self._repair(release)

    async def _repair(self, release: ReleaseRow) -> list[str]:
        ops, store = self.ops, self.ops.store
        now = time.monotonic()
        when, backoff = self._replace_after.get(release.id, (0.0, 0.0))
        if now < when:
            return []
        runtime = ops.runtime_for(release)
        cfg = parse_config(release.config)
        routed = store.instances(release.id, (InstanceState.ROUTED,))
        dead = [r for r in routed if not await runtime.alive(instance_of(release, r))]
        missing = max(0, cfg.instances - len(routed))
        if not dead and not missing:
            self._replace_after.pop(release.id, None)
            return []
        first = max((r.index for r in store.instances(release.id)), default=-1) + 1
        indexes = tuple(range(first, first + len(dead) + missing))
        run = DeploymentRun(0, release.app, release.version, "replace")
        d = Deployment(run, release.app, release, cfg, None, "replace", cfg.deploy.strategy)
        what = ", ".join(f"#{r.index} ({r.address})" for r in dead) or f"{missing} missing"
        log.warning("%s %s: replacing dead instance(s) %s", release.app, release.version, what)
        try:
            for index in indexes:
                await ops.start_instance(d, index)
            await ops.wait_ready(d, indexes)
        except BatonError as exc:
            rows = [
                (release, row)
                for row_id, _ in d.started.values()
                if (row := store.instance(row_id)) is not None
            ]
            await ops.stop_rows(rows, cfg.deploy.stop_timeout, state=InstanceState.FAILED)
            backoff = min(REPLACE_BACKOFF_MAX, max(1.0, backoff * 2))
            self._replace_after[release.id] = (time.monotonic() + backoff, backoff)
            store.add_event(
                None, release.app, "replace_failed", {"version": release.version, "error": str(exc)}
            )
            return [
                f"{release.app} {release.version}: could not replace {what} (next try in"
                f" {backoff:g}s): {exc}"
            ]
        self._replace_after.pop(release.id, None)
        with store.transaction():
            for row_id, _ in d.started.values():
                store.set_instance_state(row_id, InstanceState.ROUTED)
            for row in dead:
                store.set_instance_state(row.id, InstanceState.FAILED)
        await ops.router.push_app(release.app)
        # Remove what is left of the dead ones (docker: the exited container, logs saved).
        for row in dead:
            try:
                await runtime.stop(instance_of(release, row), 0.0)
            except Exception:
                log.exception("removing dead instance %s failed", row.address)
        new = [inst for _, inst in d.started.values()]
        record = {
            "at": time.time(),
            "version": release.version,
            "dead": [{"index": r.index, "address": r.address} for r in dead],
            "new": [{"index": i.index, "address": i.address} for i in new],
        }
        history = self.replaced.setdefault(release.app, [])
        history.append(record)
        del history[:-RECENT_REPLACEMENTS]
        store.add_event(None, release.app, "replaced", record)
        METRICS.count_restart(release.app, "instance", len(dead) or len(new))
        return [
            f"{release.app} {release.version}: replaced {what} by "
            + ", ".join(f"#{i.index} ({i.address})" for i in new)
        ]
