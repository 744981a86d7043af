"""The interface every strategy keeps, and the base the planned strategies share.

A strategy (as Argo Rollouts' ``bluegreen.go`` and ``canary.go`` are peers) does two
things: it *plans* a deployment's steps (``plan``: a list of ``Move``s, from the pure
planner), and it *decides after each observation* what comes next: ``before`` is asked
before every step (skip it, or fail the deployment: a canary's ``baton abort``), and
``perform`` does the step, through the table of actions the strategy owns (the shared
``steps.ACTIONS`` plus its own kinds). ``close`` releases what it held (a canary's fuse
watcher) whether the deployment succeeded or not. The executor sequences, persists and
commits; a strategy never touches the store's record of the deployment itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from baton.deploy.deployment import Deployment
from baton.deploy.operations import Operations
from baton.deploy.plan import plan_deploy
from baton.deploy.steps import ACTIONS, Action, Move
from baton.state.states import InstanceState

# Once one of these steps is done, the new release has the traffic for good: failures of
# the steps after it (drain, stop) are warnings, not an undo.
COMMITTING = ("switch", "verify", "promote")


class Strategy(Protocol):
    name: str
    finalizes: bool  # its success makes the release live (not so a contract migration)

    def plan(self, ops: Operations, d: Deployment) -> list[Move]:
        """The steps of ``d``, in order."""

    async def before(self, ops: Operations, d: Deployment, move: Move) -> bool:
        """Asked before each step: False skips it; raising fails the deployment."""

    async def perform(self, ops: Operations, d: Deployment, move: Move) -> None:
        """Do one step."""

    async def close(self, ops: Operations, d: Deployment) -> None:
        """The deployment ended (either way): release what the strategy held."""


def commit_point(moves: list[Move]) -> int:
    """The index of the step past which the deployment is committed (see ``COMMITTING``);
    without one (a contract), the last step."""
    return max((i for i, m in enumerate(moves) if m.kind in COMMITTING), default=len(moves) - 1)


def planned(d: Deployment, strategy: str, old: tuple[int, ...]) -> list[Move]:
    """The steps ``plan.plan_deploy`` gives ``d`` under ``strategy``, replacing ``old``."""
    cfg = d.cfg
    steps = plan_deploy(
        strategy,
        new_count=cfg.instances,
        old=old,
        max_surge=cfg.deploy.max_surge,
        pre_deploy=bool(cfg.hooks.pre_deploy) and d.kind == "deploy",
        expand=bool(cfg.migrations.expand) and d.kind == "deploy",
        smoke_test=bool(cfg.hooks.smoke_test),
        verify=cfg.deploy.verify > 0,
        keep_warm=cfg.deploy.keep_previous > 0,
        post_deploy=bool(cfg.hooks.post_deploy),
    )
    return [Move.of(step) for step in steps]


def routed_ids(ops: Operations, d: Deployment) -> tuple[int, ...]:
    """Ids of the previous release's routed instances: what the deployment replaces."""
    if d.previous is None:
        return ()
    return tuple(i.id for i in ops.store.instances(d.previous.id, (InstanceState.ROUTED,)))


class Planned:
    """A strategy whose steps are all planned up front (blue-green, rolling, contract)."""

    name = ""
    finalizes = True
    actions: Mapping[str, Action] = ACTIONS

    def plan(self, ops: Operations, d: Deployment) -> list[Move]:
        raise NotImplementedError

    async def before(self, ops: Operations, d: Deployment, move: Move) -> bool:
        return True

    async def perform(self, ops: Operations, d: Deployment, move: Move) -> None:
        await self.actions[move.kind](ops, d, move)

    async def close(self, ops: Operations, d: Deployment) -> None:
        return None
