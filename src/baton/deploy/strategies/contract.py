"""The contract migration as a deployment: one step, no traffic moves, nothing to undo."""

from __future__ import annotations

from baton.deploy.deployment import Deployment
from baton.deploy.operations import Operations
from baton.deploy.steps import Move
from baton.deploy.strategies.base import Planned


class Contract(Planned):
    name = "contract"
    finalizes = False

    def plan(self, ops: Operations, d: Deployment) -> list[Move]:
        return [Move("contract", record=False)]
