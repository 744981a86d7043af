"""Undo: put users back on the previous release and stop what a failed deployment started.

The one promise of a deployment is kept here: whatever step failed, the previous release
(or, on a first deploy, nothing) is routed again and every instance the deployment started
is drained and stopped. Rolling deploys take old instances out batch by batch, so undo puts
back those that still run and starts again those an earlier batch stopped; a rollback to a
warm release only moves the weights back. Old batches retiring in the background are settled
first (``Retiring.abandon``): a batch still draining is cancelled and its instances, still
running, are routed again (the proxy routes a target again as soon as the table names it);
a batch already being stopped finishes stopping and undo starts replacements for it.
"""

from __future__ import annotations

from baton.config import parse_config
from baton.deploy.deployment import Deployment, instance_of
from baton.deploy.operations import Operations
from baton.errors import DeploymentFailed
from baton.events import StepStarted, Switched, Warned
from baton.state.states import InstanceState, ReleaseState
from baton.state.store import InstanceRow


async def undo(ops: Operations, d: Deployment) -> bool:
    """Undo ``d``. Returns True when the previous release (or, on a first deploy, nothing)
    is routed."""
    await d.retiring.abandon()
    store = ops.store
    release, previous = d.release, d.previous
    timeout = d.cfg.deploy.stop_timeout
    # Everything this deployment started, failed ones included: "failed" means it failed
    # its readiness, not that the process is gone.
    started_ids = {row_id for row_id, _ in d.started.values()}
    new_rows = [
        (release, row)
        for row in store.instances(release.id)
        if row.id in started_ids and row.state != InstanceState.STOPPED
    ]
    if d.warm_switch:
        # A failed switch back to a warm release: it stays warm, the live one stays live.
        assert previous is not None
        with store.transaction():
            store.update_release(previous.id, weight=100)
            store.update_release(release.id, weight=0)
        await ops.router.push_app(d.app)
        return True
    restored = True
    if previous is not None:
        # Rolling takes old instances out batch by batch: those of the batch that failed
        # still run (they are drained and stopped only after its verification), so they
        # go back into the table; what earlier batches stopped is started again.
        runtime = ops.runtime_for(previous)
        for row in store.instances(previous.id, (InstanceState.DRAINING,)):
            if await runtime.alive(instance_of(previous, row)):
                store.set_instance_state(row.id, InstanceState.ROUTED)
        prev_routed = store.instances(previous.id, (InstanceState.ROUTED,))
        missing = parse_config(previous.config).instances - len(prev_routed)
        if missing > 0 and any(r.state == InstanceState.ROUTED for _, r in new_rows):
            restored = await restart_previous(ops, d, prev_routed, missing) or bool(prev_routed)
    routed_new = [(r, row) for r, row in new_rows if row.state == InstanceState.ROUTED]
    if not restored:
        return False
    with store.transaction():
        for _, row in new_rows:
            store.set_instance_state(row.id, InstanceState.DRAINING)
        store.update_release(release.id, weight=0)
        if previous is not None:
            store.update_release(previous.id, state=ReleaseState.LIVE, weight=100)
    if routed_new or previous is None:
        store.set_step(d.run.id, "rollback")
        await ops.router.push_app(d.app)
        d.run.emit(Switched(weights=ops.router.weights(d.app), back=True))
        await ops.drain(d, routed_new, d.cfg.deploy.drain_timeout)
    await ops.stop_rows(new_rows, timeout, state=InstanceState.FAILED)
    if release.state != ReleaseState.LIVE:
        store.update_release(release.id, state=ReleaseState.FAILED, weight=0)
    return True


async def restart_previous(
    ops: Operations, d: Deployment, routed: list[InstanceRow], missing: int
) -> bool:
    """Rolling stopped old instances: start ``missing`` of them again, then switch back."""
    previous = d.previous
    assert previous is not None
    cfg = parse_config(previous.config)
    d.run.emit(
        StepStarted(
            step="rollback",
            batch=None,
            detail=f"starting {missing} instance(s) of {previous.version} again",
        )
    )
    ops.store.set_step(d.run.id, "rollback")
    back = Deployment(d.run, d.app, previous, cfg, None, "rollback", cfg.deploy.strategy)
    used = {row.index for row in routed}
    indexes = tuple(i for i in range(cfg.instances + len(used)) if i not in used)[:missing]
    try:
        for index in indexes:
            await ops.start_instance(back, index)
        await ops.wait_ready(back, indexes)
    except DeploymentFailed as exc:
        d.run.emit(Warned(message=f"could not restart {previous.version}: {exc}"))
        rows = [
            (previous, r)
            for r in ops.store.instances(previous.id, (InstanceState.STARTING, InstanceState.READY))
        ]
        await ops.stop_rows(rows, cfg.deploy.stop_timeout, state=InstanceState.FAILED)
        return False
    with ops.store.transaction():
        for row_id, _ in back.started.values():
            ops.store.set_instance_state(row_id, InstanceState.ROUTED)
    return True
