"""Recovery and reconcile: after a restart, finish or undo what was cut short; remove orphans.

``Recovery.recover`` runs once when a control plane starts: it marks instances that died
while nobody watched, finishes or undoes every deployment still recorded as running (the
decision is ``plan.plan_recovery``'s, from the step the store recorded), retires pending
and warm releases with nothing running, sends the proxy the table the store now says, and
then ``reconcile``s: every instance that no live or warm release routes, in the store or
owned by a runtime (process records, labelled containers), is stopped. What reconcile
removed is kept in ``reconciled`` for ``baton status``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from baton.config import parse_config
from baton.deploy.deployment import instance_of, runtime_name
from baton.deploy.operations import Operations
from baton.deploy.plan import plan_recovery
from baton.errors import BatonError
from baton.runtime.base import Instance, Runtime
from baton.state.states import DeploymentStatus, InstanceState, ReleaseState
from baton.state.store import InstanceRow, ReleaseRow

log = logging.getLogger("baton.engine")

ORPHAN_STOP_TIMEOUT = 5.0


class Recovery:
    """Finishes or undoes interrupted deployments and removes orphans (module docstring)."""

    def __init__(self, ops: Operations) -> None:
        self.ops = ops
        self.reconciled: dict[str, Any] | None = None

    async def recover(self) -> list[str]:
        """After a restart: finish or undo unfinished deployments, then ``reconcile``.

        Returns notes for the log. A runtime engine that does not answer (Docker) leaves its
        instances as the store says (they are looked at again by the watcher), never stops
        the control plane from starting.
        """
        store = self.ops.store
        notes: list[str] = []
        # Instances that died while nobody watched.
        for release, row in store.active_instances():
            try:
                alive = await self.ops.runtime_for(release).alive(instance_of(release, row))
            except BatonError as exc:
                notes.append(f"could not check {release.app} {release.version}#{row.index}: {exc}")
                continue
            if not alive:
                store.set_instance_state(row.id, InstanceState.FAILED)
        for dep in store.running_deployments():
            notes.append(await self.recover_deployment(dep.id))
        # Releases with nothing running any more: a pending one failed, a warm one is gone.
        # A live release stays live: it is the app's desired state, and convergence starts
        # its instances again (after a reboot, none of them runs).
        for app in store.apps():
            for release in store.releases(app.name, (ReleaseState.PENDING, ReleaseState.WARM)):
                if not store.instances(release.id, (InstanceState.ROUTED,)):
                    store.update_release(
                        release.id,
                        state=ReleaseState.FAILED
                        if release.state == ReleaseState.PENDING
                        else ReleaseState.STOPPED,
                        weight=0,
                    )
        # The proxy routes what the store now says, before anything it routed is stopped.
        try:
            await self.ops.router.push_all()
        except BatonError as exc:
            notes.append(f"could not send the route table to the proxy: {exc}")
        notes.extend(await self.reconcile())
        return notes

    async def recover_deployment(self, deployment_id: int) -> str:
        """Finish or undo one deployment recorded as running; a note for the log."""
        store = self.ops.store
        dep = store.deployment(deployment_id)
        assert dep is not None
        if dep.kind == "contract":
            # Traffic never moved; whether the command finished is unknown: run it again.
            message = "the control plane stopped during the contract migration; run it again"
            store.finish_deployment(dep.id, DeploymentStatus.FAILED, message)
            return f"{dep.app}: deployment #{dep.id}: {message}"
        new = store.release(dep.release_id) if dep.release_id is not None else None
        previous = (
            store.release(dep.previous_release_id) if dep.previous_release_id is not None else None
        )

        def alive_rows(release: ReleaseRow | None) -> list[InstanceRow]:
            if release is None:
                return []
            return store.instances(
                release.id,
                (
                    InstanceState.STARTING,
                    InstanceState.READY,
                    InstanceState.ROUTED,
                    InstanceState.DRAINING,
                ),
            )

        decision, why = plan_recovery(
            dep.step,
            has_previous=previous is not None,
            previous_alive=len(alive_rows(previous)),
            new_alive=len(alive_rows(new)),
        )
        if new is not None and previous is not None and new.id == previous.id:
            decision = "undo"
        keep, drop = (previous, new) if decision == "undo" else (new, previous)
        with store.transaction():
            if keep is not None:
                for row in alive_rows(keep):
                    store.set_instance_state(row.id, InstanceState.ROUTED)
                # The kept release is the app's desired release even when none of its
                # instances runs (a reboot mid-deploy): convergence starts them again.
                store.update_release(keep.id, state=ReleaseState.LIVE, weight=100)
                if decision == "finish":
                    store.update_release(keep.id, live_since=time.time())
            if drop is not None:
                for row in alive_rows(drop):
                    store.set_instance_state(row.id, InstanceState.DRAINING)
                store.update_release(
                    drop.id,
                    state=ReleaseState.FAILED if decision == "undo" else ReleaseState.STOPPED,
                    weight=0,
                )
        done = "undone" if decision == "undo" else "finished"
        message = f"the control plane restarted at step {dep.step!r}; {done}: {why}"
        store.finish_deployment(
            dep.id,
            DeploymentStatus.ABORTED if decision == "undo" else DeploymentStatus.SUCCEEDED,
            message,
        )
        store.add_event(dep.id, dep.app, "recovered", {"decision": decision, "why": why})
        return f"{dep.app}: deployment #{dep.id} {message}"

    def runtimes_in_use(self) -> list[str]:
        """Process (always: it is local and cheap), and every runtime a release ran on."""
        names = {"process"}
        for app in self.ops.store.apps():
            names.add(runtime_name(app.config))
            names.update(runtime_name(r.config) for r in self.ops.store.releases(app.name))
        return sorted(names)

    async def reconcile(self) -> list[str]:
        """Stop and remove every instance that belongs to no live or warm release.

        Two sources, one rule: the store's instances that are not routed by a live or warm
        release, and whatever each runtime in use says it owns (process records, containers
        labelled with this state dir) that no such release routes. What was removed is kept
        in ``self.reconciled`` for ``baton status`` and written to the store's events.
        Returns notes for the log.
        """
        store = self.ops.store
        notes: list[str] = []
        cleaned: list[dict[str, Any]] = []
        keep = {
            row.ref
            for release, row in store.active_instances()
            if release.state in (ReleaseState.LIVE, ReleaseState.WARM)
            and row.state == InstanceState.ROUTED
        }

        def entry(runtime: str, instance: Instance, source: str) -> dict[str, Any]:
            return {
                "runtime": runtime,
                "app": instance.app,
                "version": instance.version,
                "index": instance.index,
                "address": instance.address,
                "ref": instance.ref,
                "source": source,
            }

        for release, row in store.active_instances():
            if row.ref in keep:
                continue
            timeout = parse_config(release.config).deploy.stop_timeout
            await self.ops.stop_rows([(release, row)], timeout)
            cleaned.append(entry(runtime_name(release.config), instance_of(release, row), "store"))
        done = {c["ref"] for c in cleaned}
        for name in self.runtimes_in_use():
            runtime = self.ops.runtimes.get(name)
            try:
                orphans = await remove_orphans(runtime, keep | done)
            except BatonError as exc:
                notes.append(f"could not list the {name} runtime's instances: {exc}")
                continue
            except Exception as exc:  # a container that would not stop: say so, go on
                log.exception("removing the %s runtime's orphans failed", name)
                notes.append(f"could not remove the {name} runtime's orphans: {exc}")
                continue
            cleaned.extend(entry(name, i, "runtime") for i in orphans)
        for item in cleaned:
            store.add_event(None, item["app"], "cleaned", item)
            notes.append(
                f"removed {item['runtime']} instance {item['app']} {item['version']}"
                f"#{item['index']} ({item['address']}): no live or warm release routes it"
            )
        self.reconciled = {"at": time.time(), "cleaned": cleaned}
        return notes


async def remove_orphans(runtime: Runtime, keep: set[str]) -> list[Instance]:
    """Stop every instance ``runtime`` owns whose ref is not in ``keep``; the ones removed.

    A runtime that removes its orphans itself (``DockerRuntime.remove_orphans``) does; for
    the others (the process runtime), each orphan is stopped here, a failure logged.
    """
    remove = getattr(runtime, "remove_orphans", None)
    if remove is not None:
        removed: list[Instance] = await remove(keep, ORPHAN_STOP_TIMEOUT)
        return removed
    orphans = [i for i in await runtime.owned() if i.ref not in keep]

    async def stop(instance: Instance) -> None:
        try:
            await runtime.stop(instance, ORPHAN_STOP_TIMEOUT)
        except Exception:
            log.exception("stopping orphan %s failed", instance.address)

    await asyncio.gather(*(stop(i) for i in orphans))
    return orphans
