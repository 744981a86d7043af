"""Rolling: replace the old release batch by batch (``deploy.max_surge`` at a time).

Each batch starts and readies its new instances, then one route-table change routes them
and takes as many old instances out; the weights follow the instance counts. The old
batch is then drained and stopped in the background (``deploy.background``) while the next
batch starts, so open WebSockets to an old batch (drained for up to ``drain_timeout``) no
longer hold up the deploy; the executor awaits every old batch before the release is
recorded as live.
"""

from __future__ import annotations

from dataclasses import replace

from baton.deploy.deployment import Deployment
from baton.deploy.operations import Operations
from baton.deploy.plan import split_weights
from baton.deploy.steps import ACTIONS, Move
from baton.deploy.strategies.base import Planned, planned, routed_ids
from baton.events import Switched
from baton.state.states import InstanceState


async def switch(ops: Operations, d: Deployment, move: Move) -> None:
    """Route one batch of new instances, take as many old ones out, weights by count."""
    store, release, previous = ops.store, d.release, d.previous
    with store.transaction():
        for i in move.new:
            store.set_instance_state(d.started[i][0], InstanceState.ROUTED)
        for instance_id in move.old:
            store.set_instance_state(instance_id, InstanceState.DRAINING)
        new_count = len(store.instances(release.id, (InstanceState.ROUTED,)))
        old_count = len(store.instances(previous.id, (InstanceState.ROUTED,))) if previous else 0
        old_weight, new_weight = split_weights([old_count, new_count])
        store.update_release(release.id, weight=new_weight)
        if previous is not None:
            store.update_release(previous.id, weight=old_weight)
    d.switched = True
    await ops.router.push_app(d.app)
    d.run.emit(Switched(weights=ops.router.weights(d.app), batch=move.batch))


class Rolling(Planned):
    name = "rolling"
    actions = {**ACTIONS, "switch": switch}

    def plan(self, ops: Operations, d: Deployment) -> list[Move]:
        moves = planned(d, "rolling", routed_ids(ops, d))
        return [
            Move("prepare", record=False),
            *(replace(m, background=True) if m.kind in ("drain", "stop") else m for m in moves),
        ]
