"""The steps a deployment is made of, and what each kind of step does.

A ``Move`` is one step as the executor runs it: its kind (the key of the action that
performs it), the instances it acts on (``new``: indexes of the new release's instances;
``old``: ids of stored instances leaving), its rolling batch, the label the store records
as the deployment's step (``switch#2``, ``canary#0``) and what its step event shows.
``ACTIONS`` maps each kind every strategy shares to the coroutine that performs it;
a strategy adds its own kinds (``switch``, ``canary``, ``promote``) to that table instead
of branching on its name.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from baton.deploy import analysis
from baton.deploy.deployment import Deployment
from baton.deploy.operations import Operations
from baton.deploy.plan import Step
from baton.errors import DeploymentFailed
from baton.events import KeptWarm, SmokeTest, Stopped, Verifying, Warned
from baton.observe.signals import SIGNALS
from baton.state.states import InstanceState, ReleaseState


@dataclass(frozen=True)
class Move:
    """One step of a deployment as the executor runs it (see the module docstring)."""

    kind: str
    new: tuple[int, ...] = ()
    old: tuple[int, ...] = ()
    batch: int | None = None
    label: str = ""  # what the store records as the step; default: kind, or kind#batch
    record: bool = True  # also written to the deployment's stored events
    extra: Mapping[str, Any] = field(default_factory=dict)  # shown with the step event
    number: int | None = None  # a canary step's number (1-based)
    # Run in the background (a rolling batch's drain and stop): the next steps do not wait.
    background: bool = False

    @property
    def stored(self) -> str:
        """The label the store records: ``switch``, ``switch#2`` or an explicit label."""
        if self.label:
            return self.label
        return self.kind if self.batch is None else f"{self.kind}#{self.batch}"

    @classmethod
    def of(cls, step: Step) -> Move:
        return cls(step.kind, new=step.new, old=step.old, batch=step.batch)


Action = Callable[[Operations, Deployment, Move], Awaitable[None]]


# -- the steps every strategy shares ----------------------------------------------------------


async def prepare(ops: Operations, d: Deployment, move: Move) -> None:
    await ops.prepare_release(d)


async def pre_deploy(ops: Operations, d: Deployment, move: Move) -> None:
    await ops.hook(d, "pre_deploy", d.cfg.hooks.pre_deploy, {})


async def expand(ops: Operations, d: Deployment, move: Move) -> None:
    assert d.cfg.migrations.expand is not None
    await ops.migration(d, "expand", d.cfg.migrations.expand)
    ops.store.record_expanded(d.app, d.release.id)


async def contract(ops: Operations, d: Deployment, move: Move) -> None:
    command = d.cfg.migrations.contract
    assert command is not None
    await ops.migration(d, "contract", command)
    ops.store.record_contracted(d.release.id)


async def start(ops: Operations, d: Deployment, move: Move) -> None:
    await ops.start_instances(d, move.new)


async def ready(ops: Operations, d: Deployment, move: Move) -> None:
    await ops.wait_ready(d, move.new)


async def smoke_test(ops: Operations, d: Deployment, move: Move) -> None:
    _, instance = d.started[move.new[0]]
    url = f"http://{instance.address}"
    d.run.emit(SmokeTest(target=url))
    await ops.hook(d, "smoke_test", d.cfg.hooks.smoke_test, {"BATON_TARGET_URL": url})


async def verify(ops: Operations, d: Deployment, move: Move) -> None:
    """Watch the new release's answers for ``deploy.verify`` seconds; too many errors (or a
    signal regression) fail the deployment, which the executor then undoes."""
    cfg = d.cfg.deploy
    version = d.release.version
    batch = move.batch
    where = "" if batch is None else f" in batch {batch + 1}"

    start = await ops.traffic.sample(ops.proxy, fresh=True)
    if start is None:
        d.run.emit(Warned(message="no metrics from the proxy; not verified"))
        return
    deadline = time.monotonic() + cfg.verify
    last_report = 0.0
    verdict = analysis.verify(ops.traffic.since(start, d.app, version), cfg.max_error_rate)
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(0.25, left))
        if await ops.traffic.sample(ops.proxy, fresh=True) is None:
            continue
        # Over every snapshot since the switch: a proxy restart starts a new segment instead
        # of a negative difference, so it neither fails nor passes a release wrongly.
        verdict = analysis.verify(ops.traffic.since(start, d.app, version), cfg.max_error_rate)
        if cfg.signals.rollback and (why := SIGNALS.regression(d.run.id, cfg.signals)):
            raise DeploymentFailed(f"{version} failed verification: {why}; switched back")
        if verdict.failing:
            d.run.emit(_verifying(verdict, failing=True, batch=batch))
            raise DeploymentFailed(
                f"{version} failed verification{where}: {'; '.join(verdict.reasons)}; switched back"
            )
        if time.monotonic() - last_report >= 1.0:
            last_report = time.monotonic()
            d.run.emit(_verifying(verdict, failing=False, left=round(max(0.0, left), 1)))
    d.run.emit(_verifying(verdict, failing=False, passed=True))


def _verifying(verdict: analysis.Verdict, **more: Any) -> Verifying:
    figures = verdict.figures
    return Verifying(
        requests=int(figures["requests"] or 0),
        errors=int(figures["errors"] or 0),
        rate=float(figures["error_rate"] or 0.0),
        **more,
    )


async def drain(ops: Operations, d: Deployment, move: Move) -> None:
    await ops.drain(d, ops.rows(move.old), d.cfg.deploy.drain_timeout)


async def stop(ops: Operations, d: Deployment, move: Move) -> None:
    rows = ops.rows(move.old)
    with ops.store.transaction():
        for _, row in rows:
            ops.store.set_instance_state(row.id, InstanceState.DRAINING)
    await ops.router.push_app(d.app)
    await ops.stop_rows(rows, d.cfg.deploy.stop_timeout)
    d.run.emit(Stopped(targets=[row.address for _, row in rows]))


async def keep_warm(ops: Operations, d: Deployment, move: Move) -> None:
    assert d.previous is not None
    seconds = d.cfg.deploy.keep_previous
    until = time.time() + seconds
    ops.store.update_release(d.previous.id, state=ReleaseState.WARM, weight=0, warm_until=until)
    d.run.emit(KeptWarm(version=d.previous.version, seconds=seconds))


async def post_deploy(ops: Operations, d: Deployment, move: Move) -> None:
    try:
        await ops.hook(d, "post_deploy", d.cfg.hooks.post_deploy, {})
    except DeploymentFailed as exc:
        # The new release is live and verified; a failed notification does not undo it.
        d.run.emit(Warned(message=f"post_deploy failed: {exc}"))


ACTIONS: dict[str, Action] = {
    "prepare": prepare,
    "pre_deploy": pre_deploy,
    "expand": expand,
    "contract": contract,
    "start": start,
    "ready": ready,
    "smoke_test": smoke_test,
    "verify": verify,
    "drain": drain,
    "stop": stop,
    "keep_warm": keep_warm,
    "post_deploy": post_deploy,
}
