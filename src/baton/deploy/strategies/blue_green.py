"""Blue-green: start the whole new release beside the old one, then switch every request.

The new release's instances all start and become ready while the old release serves;
one route-table change gives the new release weight 100 and the old one 0 (still in the
table, so ``verify`` can switch back); then the old release drains and is stopped or kept
warm. A rollback to a warm release is the same switch with nothing to start.
"""

from __future__ import annotations

import contextlib

from baton.deploy import staging
from baton.deploy.deployment import Deployment
from baton.deploy.operations import Operations
from baton.deploy.steps import ACTIONS, Move
from baton.deploy.strategies.base import Planned, planned, routed_ids
from baton.errors import BatonError
from baton.events import Switched
from baton.state.states import InstanceState


async def switch(ops: Operations, d: Deployment, move: Move) -> None:
    """Every request to the new release: weights 100 / 0, in one table change."""
    store = ops.store
    if d.warm_switch:
        addresses = [d.started[i][1].address for i in move.new]
        with contextlib.suppress(BatonError):
            await ops.proxy.undrain(addresses)
    with store.transaction():
        for i in move.new:
            store.set_instance_state(d.started[i][0], InstanceState.ROUTED)
        store.update_release(d.release.id, weight=100)
        if d.previous is not None:
            store.update_release(d.previous.id, weight=0)
    d.switched = True
    await ops.router.push_app(d.app)
    d.run.emit(Switched(weights=ops.router.weights(d.app), batch=move.batch))


class BlueGreen(Planned):
    name = "blue-green"
    actions = {**ACTIONS, "switch": switch}

    def plan(self, ops: Operations, d: Deployment) -> list[Move]:
        old = routed_ids(ops, d)
        if d.warm_switch:
            moves = [Move("switch", new=tuple(d.started), old=old)]
            if old:
                keep = d.cfg.deploy.keep_previous > 0
                moves += [Move("drain", old=old), Move("keep_warm" if keep else "stop", old=old)]
            return moves
        # Before anything changes: what the runtime needs (docker: the image) is there.
        return [Move("prepare", record=False), *planned(d, "blue-green", old)]

    async def before(self, ops: Operations, d: Deployment, move: Move) -> bool:
        if move.kind == "switch":  # a staged release waits here for its switch or discard
            await staging.hold(ops.staged, d)
        return True
