"""Staged releases: started beside the live one, ready and smoke-tested, not switched.

A deploy asked with ``stage`` (``POST /deploy`` with ``"stage": true``; the fleet's edge
blue-green asks every host for one) runs the blue-green strategy as usual up to its
``switch``; there the strategy holds (``hold``): the deployment emits a ``staged`` step and
waits, its instances running and healthy, the host's proxy still on the previous release.
A later request decides (``request``): ``switch`` lets the deployment go on exactly as a
blue-green would (switch, verify, drain, stop), ``discard`` fails it, and the executor's undo
stops what it started: users never saw the staged release.

This module owns the gates (``StageGate``, one per app with a staged deployment, kept in
``Operations.staged``). A gate lives in memory only: a control plane that restarts while a
release is staged finds the deployment recorded at its last step before the switch and
undoes it (``recovery``), so a staged release never outlives its daemon. Nor does it wait
for ever: with no decision within ``deploy.stage_timeout`` it is discarded (the deployment
fails saying so; the host stays on its live release).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from baton.config import format_duration
from baton.deploy.deployment import Deployment, DeploymentRun
from baton.errors import DeploymentFailed, UsageError
from baton.events import StepStarted

Decision = Literal["switch", "discard"]
STAGED = "staged"  # the step a staged deployment emits when it starts to wait


@dataclass
class StageGate:
    """A staged deployment waiting for ``switch`` or ``discard``."""

    deployment_id: int
    app: str
    version: str
    decision: Decision | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def decide(self, what: Decision) -> None:
        if self.decision is None:
            self.decision = what
        self.wake.set()


def check_stageable(strategy: str, app: str) -> None:
    """Only blue-green starts a whole release beside the old one: ``UsageError`` otherwise."""
    if strategy != "blue-green":
        raise UsageError(
            f"stage: {app} deploys {strategy}; only a blue-green deploy can be staged"
            " (its release starts beside the old one before any traffic moves)"
        )


def register(staged: dict[str, StageGate], run: DeploymentRun) -> None:
    """``run`` (just prepared, app locked) is a staged deploy: a decision may come from now on
    (a discard before it is ready is kept until it reaches its switch)."""
    staged[run.app] = StageGate(run.id, run.app, run.version)


async def hold(staged: dict[str, StageGate], d: Deployment) -> None:
    """At the switch of a staged deployment (any other: returns at once) say so, then wait for
    the decision. Discarded: ``DeploymentFailed`` (the executor undoes it: the staged
    instances stop)."""
    gate = staged.get(d.app)
    if gate is None or gate.deployment_id != d.run.id:
        return
    if gate.decision is None:
        d.run.emit(StepStarted(step=STAGED, batch=None))
    limit = d.cfg.deploy.stage_timeout
    try:
        try:
            await asyncio.wait_for(gate.wake.wait(), limit)
        except TimeoutError:
            gate.decide("discard")  # unless a switch just came: the first decision holds
            if gate.decision != "switch":
                raise DeploymentFailed(
                    f"{d.app} {d.release.version}: the staged release was discarded: no"
                    f" switch came within deploy.stage_timeout ({format_duration(limit)});"
                    " the live release still serves"
                ) from None
    finally:
        staged.pop(d.app, None)
    if gate.decision != "switch":
        raise DeploymentFailed(f"{d.app} {d.release.version}: the staged release was discarded")


def request(
    staged: dict[str, StageGate],
    run_of: Callable[[int], DeploymentRun | None],
    app: str,
    what: Decision,
    version: str | None,
) -> DeploymentRun | None:
    """``switch`` or ``discard`` the app's staged release (``version``, when given, must be
    the staged one); its run to follow. None: nothing is staged and ``what`` is a discard
    (nothing to do). ``UsageError`` for a switch with nothing staged."""
    gate = staged.get(app)
    run = run_of(gate.deployment_id) if gate is not None else None
    if gate is None or run is None or run.finished:
        if what == "discard":
            return None
        raise UsageError(f"no staged release of {app} is waiting for its switch")
    if version is not None and version != gate.version:
        raise UsageError(f"{app}: the staged release is {gate.version!r}, not {version!r}")
    gate.decide(what)
    return run
