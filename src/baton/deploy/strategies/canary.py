"""Canary: move a share of the traffic to the new release, step by step, and judge each step.

The rules (steps, holds, the guard, the proxy's fuse, the judge and ``canary.decide``) are
described in ``baton.deploy.canary``; this module is the strategy that carries them out.
Its plan: the new release starts as blue-green does (prepare, pre_deploy, expand, start,
readiness, smoke test), one ``canary`` step per ``deploy.canary.steps`` entry, ``promote``,
then verify, drain, stop or keep warm, post_deploy. ``before`` is where a user's
``baton abort`` fails the deployment and ``baton promote`` skips the remaining steps;
``perform`` holds each canary step until its verdict says what comes next.

A driven canary (a fleet canary without edges) has one open ``canary`` step whose weight the
fleet's controller moves (``canary.drive``); it has no hold, judge, guard or fuse of its own.

``choose`` falls back to blue-green when there is nothing to compare with (a first deploy,
a rollback, a stable release with no running instance).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from baton.deploy.analysis import guard, judge, summary
from baton.deploy.canary import (
    FUSE_WATCH,
    FUSE_WINDOW,
    GUARD_INTERVAL,
    GUARD_MIN_REQUESTS,
    GUARD_WINDOW,
    METRICS_GRACE,
    CanaryControl,
    analysis_config,
    decide,
)
from baton.deploy.deployment import Deployment
from baton.deploy.operations import Operations
from baton.deploy.plan import ArmedFuse, plan_deploy
from baton.deploy.proxyclient import ProxyUnavailable
from baton.deploy.steps import ACTIONS, Move
from baton.deploy.strategies.base import Strategy
from baton.deploy.strategies.blue_green import BlueGreen
from baton.deploy.traffic import Snapshot
from baton.errors import BatonError, DeploymentFailed
from baton.events import CanaryNote, CanaryStep, Switched, from_dict
from baton.state.states import InstanceState
from baton.state.store import InstanceRow, ReleaseRow

BEFORE_TRAFFIC = ("pre_deploy", "expand", "start", "ready", "smoke_test")


def choose(ops: Operations, d: Deployment) -> Strategy:
    """The canary strategy for ``d``, or blue-green when there is nothing to compare with."""
    previous = d.previous
    stable_rows = ops.store.instances(previous.id, (InstanceState.ROUTED,)) if previous else []
    if d.kind != "deploy" or d.warm_switch or previous is None or not stable_rows:
        if d.kind == "deploy" and not d.warm_switch:
            d.run.emit(
                CanaryNote(
                    phase="skipped",
                    message="no live release to compare with: a plain blue-green switch",
                )
            )
        return BlueGreen()
    return Canary(ops, d, previous, stable_rows)


class Canary:
    """One canary deployment (a strategy instance holds its control and fuse watcher)."""

    name = "canary"
    finalizes = True

    def __init__(
        self,
        ops: Operations,
        d: Deployment,
        stable: ReleaseRow,
        stable_rows: list[InstanceRow],
    ) -> None:
        self.ops = ops
        self.d = d
        self.stable = stable
        self.stable_rows = stable_rows
        self.cfg = d.cfg.deploy.canary
        self.analysis = analysis_config(self.cfg.analysis)
        self.traffic = ops.traffic
        self.watcher: asyncio.Future[None] | None = None
        self.control = CanaryControl(
            deployment_id=d.run.id,
            app=d.app,
            version=d.release.version,
            stable=stable.version,
            steps=[(s.weight, s.hold) for s in self.cfg.steps],
        )
        if d.canary_weight is not None:  # driven by the fleet's controller: one open step
            self.control.steps = [(d.canary_weight, 0.0)]
            self.control.driven, self.control.target = True, d.canary_weight
        ops.canaries[d.app] = self.control  # `baton promote`/`abort` reach it from now on

    # -- the strategy ---------------------------------------------------------------------

    def plan(self, ops: Operations, d: Deployment) -> list[Move]:
        hooks = d.cfg.hooks
        before = plan_deploy(
            "blue-green",
            new_count=d.cfg.instances,
            old=(),
            pre_deploy=bool(hooks.pre_deploy),
            expand=bool(d.cfg.migrations.expand),
            smoke_test=bool(hooks.smoke_test),
        )
        moves = [Move("prepare")]
        moves += [Move.of(s) for s in before if s.kind in BEFORE_TRAFFIC]
        moves += [
            Move("canary", label=f"canary#{n - 1}", extra={"weight": weight}, number=n)
            for n, (weight, _) in enumerate(self.control.steps, start=1)
        ]
        moves.append(Move("promote"))
        if d.cfg.deploy.verify > 0:
            moves.append(Move("verify"))
        old = tuple(row.id for row in self.stable_rows)
        keep = d.cfg.deploy.keep_previous > 0
        moves += [Move("drain", old=old), Move("keep_warm" if keep else "stop", old=old)]
        if hooks.post_deploy:
            moves.append(Move("post_deploy"))
        return moves

    async def before(self, ops: Operations, d: Deployment, move: Move) -> bool:
        if move.kind in BEFORE_TRAFFIC:
            self._abort_requested()
        elif move.kind == "canary":
            self._abort_requested()
            return self.control.request != "promote"
        elif move.kind == "promote":
            await self._last_fuse_check()
            if self.control.request == "promote":
                self._record(
                    "canary_request",
                    {
                        "request": "promote",
                        "step": self.control.step,
                        "weight": self.control.weight,
                    },
                )
        return True

    async def perform(self, ops: Operations, d: Deployment, move: Move) -> None:
        if move.kind == "canary":
            assert move.number is not None
            weight, hold = self.control.steps[move.number - 1]
            if self.control.driven:
                await self._driven_step()
                return
            if self.watcher is None:
                self._arm_fuse()
                self.watcher = asyncio.ensure_future(self._watch_fuse())
            await self._canary_step(move.number, weight, hold)
        elif move.kind == "promote":
            self._disarm_fuse()  # no longer a canary: the proxy drops its fuse
            await self._set_weight(100)
            d.run.emit(Switched(weights=self._weights(), batch=None))
        else:
            await ACTIONS[move.kind](ops, d, move)

    async def close(self, ops: Operations, d: Deployment) -> None:
        await self._stop_watcher()
        if ops.canaries.get(d.app) is self.control:
            del ops.canaries[d.app]

    # -- helpers --------------------------------------------------------------------------

    def _record(self, kind: str, data: dict[str, Any]) -> None:
        d = self.d
        self.ops.store.add_event(d.run.id, d.app, kind, data)
        d.run.emit(from_dict({"event": kind, **data}))  # CanaryVerdict, CanaryRequest

    def _weights(self) -> dict[str, int]:
        return self.ops.router.weights(self.d.app)

    async def _set_weight(self, weight: int) -> None:
        """One table change: the canary gets ``weight``, the stable release the rest."""
        d, store = self.d, self.ops.store
        with store.transaction():
            for row_id, _ in d.started.values():
                store.set_instance_state(row_id, InstanceState.ROUTED)
            store.update_release(d.release.id, weight=weight)
            store.update_release(self.stable.id, weight=100 - weight)
        d.switched = True
        await self.ops.router.push_app(d.app)

    def _abort_requested(self) -> None:
        if self.control.request == "abort":
            self._record(
                "canary_request",
                {"request": "abort", "step": self.control.step, "weight": self.control.weight},
            )
            where = (
                f" at step {self.control.step} ({self.control.weight}%)"
                if self.control.step
                else " before any traffic moved"
            )
            raise DeploymentFailed(f"{self.d.release.version} aborted by `baton abort`{where}")

    # -- the proxy's fuse -----------------------------------------------------------------

    def _arm_fuse(self) -> None:
        """From the first step on, the canary's route carries the fuse (and the retry on
        stable); it stays on the route after an abort, so the canary stays at weight 0."""
        d = self.d
        self.ops.router.fuses[d.app] = ArmedFuse(
            release_id=d.release.id,
            version=d.release.version,
            deployment=d.run.id,
            max_error_rate=self.analysis.max_error_rate,
            min_requests=GUARD_MIN_REQUESTS,
            window=max(FUSE_WINDOW, GUARD_MIN_REQUESTS),
            retry_on_stable=tuple(self.cfg.retry_on_stable),
        )

    def _disarm_fuse(self) -> None:
        armed = self.ops.router.fuses.get(self.d.app)
        if armed is not None and armed.deployment == self.d.run.id:
            del self.ops.router.fuses[self.d.app]

    async def _stop_watcher(self) -> None:
        watcher, self.watcher = self.watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _last_fuse_check(self) -> None:
        """The steps are over: a trip the watcher has not brought yet must not be promoted
        over."""
        try:
            with contextlib.suppress(BatonError):
                answer = await self.ops.proxy.fuses()
                self.control.fuse = self.control.fuse or next(
                    (e for e in answer.get("events", []) if self._is_ours(e)), None
                )
            self._fuse_tripped(self.control.step, self.control.weight)
        finally:
            await self._stop_watcher()

    def _is_ours(self, event: Any) -> bool:
        d = self.d
        return (
            isinstance(event, dict)
            and event.get("app") == d.app
            and event.get("release") == d.release.version
            and event.get("deployment") == str(d.run.id)
        )

    async def _watch_fuse(self) -> None:
        """Long-poll the proxy's fuses; a trip of this canary wakes the step loop at once."""
        proxy, control = self.ops.proxy, self.control
        seen: int | None = None
        while control.fuse is None:
            try:
                answer = await proxy.fuses(
                    after=seen or 0, wait=0.0 if seen is None else FUSE_WATCH
                )
            except (ProxyUnavailable, BatonError):
                await asyncio.sleep(0.2)
                continue
            for event in answer.get("new", []) if seen is not None else []:
                if self._is_ours(event):
                    control.fuse = event
                    control.wake.set()
                    return
            if seen is None:
                # Already tripped before we watched (a restarted control plane)?
                for event in answer.get("events", []):
                    if self._is_ours(event):
                        control.fuse = event
                        control.wake.set()
                        return
            seen = int(answer.get("trips", 0))

    def _fuse_from_metrics(self, snap: Snapshot | None) -> None:
        """The metrics the guard reads carry the fuse too: a trip the watcher missed."""
        if snap is None or self.control.fuse is not None:
            return
        d = self.d
        release = snap.metrics.get("apps", {}).get(d.app, {}).get("releases", {})
        fuse = release.get(d.release.version, {}).get("fuse")
        if (
            isinstance(fuse, dict)
            and fuse.get("tripped")
            and fuse.get("deployment") == str(d.run.id)
        ):
            self.control.fuse = {
                "app": d.app,
                "release": d.release.version,
                **(fuse.get("trip") or {}),
            }

    def _fuse_tripped(self, n: int, weight: int) -> None:
        """Abort (as the guard does) once the proxy's fuse tripped on this canary."""
        trip = self.control.fuse
        if trip is None:
            return
        errors, requests = int(trip.get("errors", 0)), int(trip.get("requests", 0))
        ceiling = float(trip.get("max_error_rate", self.analysis.max_error_rate))
        rate = errors / requests if requests else 0.0
        reason = (
            f"fuse tripped: the proxy saw the canary fail {errors} of its last {requests}"
            f" requests ({rate:.1%}), above the {ceiling:.1%} ceiling, and set its weight to 0"
        )
        self._record(
            "verdict",
            {
                "step": n,
                "weight": weight,
                "window": round(time.time() - (self.control.step_started or time.time()), 2),
                "fuse": True,
                "decision": "abort",
                "reason": reason,
                "verdict": "fail",
                "reasons": [reason],
                "figures": {
                    "canary_errors": errors,
                    "canary_requests": requests,
                    "canary_error_rate": round(rate, 4),
                    "max_error_rate": ceiling,
                    "min_requests": trip.get("min_requests"),
                    "tripped_at": trip.get("ts"),
                },
            },
        )
        self._fail(n, weight, reason)

    # -- one step -------------------------------------------------------------------------

    async def _canary_step(self, n: int, weight: int, hold: float) -> str:
        d, control = self.d, self.control
        version, stable = d.release.version, self.stable.version
        await self._set_weight(weight)
        control.step, control.weight = n, weight
        control.step_started = time.time()
        control.hold_until = control.step_started + hold
        control.extensions, control.confirming = 0, False
        d.run.emit(
            CanaryStep(
                step=n, steps=len(control.steps), weight=weight, hold=hold, weights=self._weights()
            )
        )
        start: Snapshot | None = await self.traffic.sample(self.ops.proxy, fresh=True)
        deadline = time.monotonic() + hold
        while True:
            left = deadline - time.monotonic()
            if left > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(control.wake.wait(), min(GUARD_INTERVAL, left))
            self._abort_requested()
            self._fuse_tripped(n, weight)
            if control.request == "promote":
                return "promote"
            snap = await self.traffic.sample(self.ops.proxy, fresh=True)
            self._fuse_from_metrics(snap)
            self._fuse_tripped(n, weight)
            if snap is not None:
                start = start or snap
                self._guard(n, weight)
            now = time.monotonic()
            if now < deadline:
                continue
            if snap is None or start is None or snap is start:
                if now > deadline + METRICS_GRACE:
                    self._fail(
                        n, weight, "no metrics from the proxy at the step's end, failing safe"
                    )
                continue
            # Over every snapshot of the step: a proxy restart starts a new segment.
            baseline = self.traffic.since(start, d.app, stable)
            canary = self.traffic.since(start, d.app, version)
            verdict = judge(canary if weight >= 100 else baseline, canary, self.analysis)
            decision = decide(
                verdict,
                self.analysis,
                extensions=control.extensions,
                max_extensions=self.cfg.max_hold_extensions,
                confirming=control.confirming,
            )
            record = {
                "step": n,
                "weight": weight,
                "window": round(snap.t - start.t, 2),
                "confirming": control.confirming,
                "extensions": control.extensions,
                "decision": decision.action,
                "reason": decision.reason,
                **verdict.to_json(),
            }
            control.last_verdict = {
                k: record[k] for k in ("step", "verdict", "decision", "reasons")
            }
            self._record("verdict", record)
            if decision.action == "next":
                return "next"
            if decision.action == "abort":
                self._fail(n, weight, decision.reason)
            if decision.action == "extend":
                control.extensions += 1
            else:  # confirm: a fresh window, a fresh extension budget
                control.confirming, control.extensions = True, 0
                start = snap
            deadline = now + hold
            control.hold_until = time.time() + hold

    async def _driven_step(self) -> None:
        """A driven canary's one step: apply each weight the controller asks for, until
        promote (return) or abort (``DeploymentFailed``)."""
        control = self.control
        while True:
            control.wake.clear()
            self._abort_requested()
            if control.request == "promote":
                return
            if control.step == 0 or control.target != control.weight:
                await self._set_weight(control.target)
                control.step, control.weight = 1, control.target
                control.step_started = time.time()
                self.d.run.emit(
                    CanaryStep(
                        step=1, steps=1, weight=control.weight, hold=0.0, weights=self._weights()
                    )
                )
                continue
            await control.wake.wait()

    def _guard(self, n: int, weight: int) -> None:
        d = self.d
        last = self.traffic.recent(d.app, d.release.version, GUARD_WINDOW)
        if last is None or not guard(last, self.analysis.max_error_rate, GUARD_MIN_REQUESTS):
            return
        figures = {f"canary_{k}": v for k, v in summary(last).items()}
        reason = (
            f"guard: the canary failed {last.errors} of its last {last.requests} requests"
            f" ({last.error_rate:.1%}) over {last.seconds or 0:.1f}s, above the"
            f" {self.analysis.max_error_rate:.1%} ceiling"
        )
        self._record(
            "verdict",
            {
                "step": n,
                "weight": weight,
                "window": round(last.seconds or 0.0, 2),
                "guard": True,
                "decision": "abort",
                "reason": reason,
                "verdict": "fail",
                "reasons": [reason],
                "figures": figures,
            },
        )
        self._fail(n, weight, reason)

    def _fail(self, n: int, weight: int, reason: str) -> None:
        steps = len(self.control.steps)
        raise DeploymentFailed(
            f"{self.d.release.version} failed canary step {n} of {steps} ({weight}%): {reason}"
        )
