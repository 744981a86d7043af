"""The executor: runs one deployment's steps in order and owns its outcome.

Theory of operation. The strategy (``strategies.choice.strategy_for``) plans the steps;
the executor sequences them: before each one it asks the strategy (skip? fail?), writes
the step to the store (so a control plane that dies mid-step is finished or undone by
``recovery`` on restart), emits it to the followers, and has the strategy perform it. Up
to the commit point (the last switch, promote or verification) a failure undoes the
deployment (``undo.undo``): users are back on the previous release, everything it started
is stopped. Past the commit point the new release has the traffic for good: a failing
drain or stop is a warning. ``finalize`` records the release as live (the commit itself);
the outcome is written to the store and sent as the run's ``result`` event.
"""

from __future__ import annotations

import asyncio
import logging
import time

from baton.deploy import releases as artifacts
from baton.deploy.deployment import Deployment, InstanceFailed
from baton.deploy.operations import Operations
from baton.deploy.steps import Move
from baton.deploy.strategies.base import Strategy, commit_point
from baton.deploy.strategies.choice import strategy_for
from baton.deploy.undo import undo
from baton.errors import BatonError, DaemonUnreachable, DeploymentFailed
from baton.events import Pruned, Result, StepStarted, Warned
from baton.observe import logs as observe_logs
from baton.state.states import ACTIVE_RELEASE_STATES, DeploymentStatus, InstanceState, ReleaseState
from baton.state.store import ReleaseRow

log = logging.getLogger("baton.engine")


class Executor:
    """Sequences, persists and commits deployments (see the module docstring)."""

    def __init__(self, ops: Operations) -> None:
        self.ops = ops
        # Set when the control plane stops but the data plane goes on (SIGTERM): deployments
        # in progress stay recorded as running, for the next control plane to finish or undo.
        self.detaching = False

    async def execute(self, d: Deployment) -> None:
        """Run ``d`` to its end: succeeded, or undone (failed / rolled back), or aborted."""
        ops, store, run = self.ops, self.ops.store, d.run
        started = time.monotonic()
        observe_logs.bind(run.id, run.app, run.version)
        try:
            await self.run_steps(d)
        except asyncio.CancelledError:
            if self.detaching:
                run.finish(
                    Result(
                        deployment=run.id,
                        ok=False,
                        exit_code=3,
                        status="interrupted",
                        message="the control plane stopped during the deployment; the"
                        " next `baton up` finishes or undoes it",
                    )
                )
                raise
            store.finish_deployment(run.id, DeploymentStatus.ABORTED, "the control plane stopped")
            if d.kind == "deploy" and not d.switched:
                artifacts.discard(store, store.release(d.release.id) or d.release)
            run.finish(
                Result(
                    deployment=run.id,
                    ok=False,
                    exit_code=1,
                    status="aborted",
                    message="the control plane stopped during the deployment",
                )
            )
            raise
        except BaseException as exc:
            failed = exc if isinstance(exc, DeploymentFailed) else None
            message = str(exc) if isinstance(exc, BatonError) else f"{type(exc).__name__}: {exc}"
            message = ops.redact(message, d)
            if not isinstance(exc, BatonError):
                log.exception("deployment %s crashed", run.id)
            status = DeploymentStatus.ROLLED_BACK if d.switched else DeploymentStatus.FAILED
            try:
                # A contract changed no release and no route: there is nothing to undo.
                if d.kind != "contract" and not await undo(ops, d):
                    status = DeploymentStatus.FAILED
            except Exception as undo_exc:
                log.exception("undoing deployment %s failed", run.id)
                message += f"; undoing it failed too: {undo_exc}"
            message = ops.redact(message, d)
            store.finish_deployment(run.id, status, message)
            store.add_event(run.id, run.app, "failed", {"error": message})
            if d.kind == "deploy":
                # A release that never went live for good is not kept (its label is free).
                artifacts.discard(store, store.release(d.release.id) or d.release)
            result = Result(
                deployment=run.id,
                ok=False,
                # A runtime engine that does not answer (Docker) is the CLI's exit 3.
                exit_code=3 if isinstance(exc, DaemonUnreachable) else 1,
                status=status,
                message=message,
                previous=d.previous.version if d.previous else None,
                seconds=round(time.monotonic() - started, 3),
            )
            if isinstance(failed, InstanceFailed):
                result.instance = failed.index
                result.logs = [ops.redact(line, d) for line in failed.logs]
            run.finish(result)
        else:
            self.keep_desired_state(d)
            store.finish_deployment(run.id, DeploymentStatus.SUCCEEDED)
            store.add_event(run.id, run.app, "succeeded", {"version": d.release.version})
            done = "is live" if d.kind != "contract" else "ran its contract migration"
            run.finish(
                Result(
                    deployment=run.id,
                    ok=True,
                    exit_code=0,
                    status="succeeded",
                    message=f"{run.app} {d.release.version} {done}",
                    version=d.release.version,
                    seconds=round(time.monotonic() - started, 3),
                )
            )

    async def run_steps(self, d: Deployment, *, stop_after: int | None = None) -> None:
        """Plan ``d`` with its strategy and run the steps. ``stop_after`` (tests: a crash
        between steps) returns once that many steps ran, before the rest and before the
        release is recorded as live, as a control plane that died there would leave it."""
        strategy = strategy_for(self.ops, d)
        try:
            await self.sequence(d, strategy, strategy.plan(self.ops, d), stop_after=stop_after)
        finally:
            # Failed, cancelled or cut short: old batches still draining stay (undo routes
            # them again), those stopping finish. After a success there is none left.
            await d.retiring.abandon()
            await strategy.close(self.ops, d)

    async def sequence(
        self, d: Deployment, strategy: Strategy, moves: list[Move], *, stop_after: int | None
    ) -> None:
        commit = commit_point(moves)
        group: list[Move] = []  # background steps of one batch, started together
        for n, move in enumerate(moves):
            if group and (not move.background or move.batch != group[0].batch):
                self.retire(d, strategy, group)
                group = []
            if stop_after is not None and n >= stop_after:
                if group:
                    self.retire(d, strategy, group)
                return
            if not await strategy.before(self.ops, d, move):
                continue
            if move.background:
                group.append(move)
                continue
            if move.kind == "post_deploy" and strategy.finalizes:
                await self.settle(d)
                await self.finalize(d)
            self.announce(d, move)
            if n <= commit:
                await strategy.perform(self.ops, d, move)
                continue
            try:
                await strategy.perform(self.ops, d, move)
            except BatonError as exc:
                d.run.emit(Warned(message=f"{move.kind}: {exc}"))
        if group:
            self.retire(d, strategy, group)
        if stop_after is not None:
            return  # stopped before the release is recorded as live
        await self.settle(d)
        if strategy.finalizes:
            await self.finalize(d)

    def retire(self, d: Deployment, strategy: Strategy, moves: list[Move]) -> None:
        """Start ``moves`` (an old batch's drain and stop) as a background task: the batch is
        out of the route table, so the next batch need not wait for its drain."""

        async def run(move: Move) -> None:
            # Not the deployment's recorded step: recovery decides by the foreground one.
            self.announce(d, move, current=False)
            try:
                await strategy.perform(self.ops, d, move)
            except BatonError as exc:
                d.run.emit(Warned(message=f"{move.stored}: {exc}"))

        d.retiring.start(moves[0].batch, moves, run)

    async def settle(self, d: Deployment) -> None:
        """Await the old batches retiring in the background; their errors are warnings (the
        new release serves: a failed stop of an old instance does not fail the deploy)."""
        for exc in await d.retiring.wait():
            d.run.emit(Warned(message=f"retiring an old batch: {type(exc).__name__}: {exc}"))

    def announce(self, d: Deployment, move: Move, *, current: bool = True) -> None:
        """Write the step to the store before it runs (``current``: as the deployment's
        step), and tell the followers."""
        store = self.ops.store
        if current:
            store.set_step(d.run.id, move.stored)
        if move.record:
            store.add_event(d.run.id, d.app, "step", {"step": move.stored, **move.extra})
        d.run.emit(StepStarted(step=move.kind, batch=move.batch, **move.extra))

    async def finalize(self, d: Deployment) -> None:
        """The new release took the traffic and passed verification: record it as live."""
        if d.finalized:
            return
        ops, store = self.ops, self.ops.store
        d.finalized = True
        now = time.time()
        older_warm: list[ReleaseRow] = []
        with store.transaction():
            store.update_release(
                d.release.id,
                state=ReleaseState.LIVE,
                weight=100,
                live_since=now,
                clear_warm_until=True,
            )
            store.set_app_stopped(d.app, False)
            for release in store.releases(d.app, ACTIVE_RELEASE_STATES):
                if release.id == d.release.id:
                    continue
                if (
                    d.previous is not None
                    and release.id == d.previous.id
                    and release.state == ReleaseState.WARM
                ):
                    continue
                if release.state == ReleaseState.WARM:
                    older_warm.append(release)
                store.update_release(release.id, state=ReleaseState.STOPPED, weight=0)
                for row in store.instances(
                    release.id, (InstanceState.ROUTED, InstanceState.READY, InstanceState.STARTING)
                ):
                    store.set_instance_state(row.id, InstanceState.DRAINING)
        try:
            await ops.router.push_app(d.app)
        except BatonError as exc:
            # The store says what is live; the proxy watcher sends it once the proxy answers.
            d.run.emit(Warned(message=f"route table: {exc}"))
        leftovers = [
            (r, row)
            for r in store.releases(d.app, (ReleaseState.STOPPED,))
            for row in store.instances(r.id, (InstanceState.DRAINING,))
        ]
        if leftovers:
            await ops.drain(None, leftovers, d.cfg.deploy.drain_timeout)
            await ops.stop_rows(leftovers, d.cfg.deploy.stop_timeout)

    def keep_desired_state(self, d: Deployment) -> None:
        """A deploy succeeded: its env and secrets are the app's from now on; prune."""
        ops, store = self.ops, self.ops.store
        if d.app_env is not None:
            store.set_app_env(d.app, d.app_env)
        try:
            if d.secrets is not None and d.secrets != ops.secrets.read(d.app):
                ops.secrets.write(d.app, d.secrets)
        except OSError as exc:  # the release is live; say what could not be kept
            d.run.emit(Warned(message=f"could not keep the secrets: {exc.strerror}"))
        try:
            removed = artifacts.prune(store, d.app, d.cfg.deploy.keep_releases)
        except OSError as exc:
            d.run.emit(Warned(message=f"could not prune old releases: {exc}"))
            return
        if removed:
            d.run.emit(Pruned(versions=removed))
