"""Canary releases: move a share of the traffic to the new release, step by step, and judge it.

Theory of operation. ``run_canary`` is the engine's ``canary`` strategy. It starts the new
release exactly as blue-green does (prepare, pre_deploy, start, readiness, smoke test), then
walks ``deploy.canary.steps``. Each step is one route-table change: the stable release gets
``100 - weight``, the canary ``weight``, with the app's stickiness, the stable release listed
before the canary (the proxy's hash stickiness only ever moves clients onto the release
listed last as its weight grows). The step then holds for ``hold``; every ``GUARD_INTERVAL``
the always-on guard reads the canary's last ``GUARD_WINDOW`` seconds of traffic and aborts at
once when more than ``max_error_rate`` of at least ``GUARD_MIN_REQUESTS`` requests failed.
At the end of the hold, ``analysis.judge`` compares the canary with the stable release over
the step's window (the deltas of two ``/metrics.json`` snapshots; a proxy restart in between
is handled by ``analysis.window``) and ``decide`` turns the verdict into what happens next:

- pass: the next step (after the last one: promotion);
- fail on errors (ceiling or significant increase): abort at once;
- fail on latency alone: hold once more over a *fresh* window and abort only if the canary
  is slower again. The judge's latency rule, on identical releases with heavy latency noise,
  fails about 0.1-1.8 % of steps; two independent windows in a row make a false abort
  about 1 in 3,000 steps or rarer, at the price of one more hold before a slow release is
  caught (a slow release hurts less than a failing one, which the error rules and the guard
  catch at once);
- inconclusive (too little traffic on either side): hold the step again, judging the whole
  step so far, up to ``max_hold_extensions`` times; still inconclusive after that: abort
  (fail safe).

A step at weight 100 leaves the stable release no traffic to compare with; it is judged
against the error ceiling alone (the canary is compared with itself).

Promotion is one more table change: the canary gets weight 100, the stable release 0 (still
in the table and running, so ``deploy.verify`` can still switch back), then the stable
release drains and is stopped or kept warm, as after a blue-green switch. An abort (a fail,
the guard, ``baton abort``) raises ``DeploymentFailed``; the engine's undo sets the canary's
weight to 0, drains and stops it, and the deployment exits 1. Every verdict (and every
guard trip, promote and abort request) is written to the deployment's events with its
figures. ``baton promote`` and ``baton abort`` reach a running canary through its
``CanaryControl`` (``Engine.canaries``).

Crash recovery: the store records ``canary#N`` as the deployment's step; a control plane
that restarts finds it unfinished and undoes it (``plan.plan_recovery``): users go back to
the stable release, the canary's instances are stopped.

The canary strategy needs a live release to compare with: the first deploy of an app, a
rollback, or a stable release with no running instance is a plain blue-green switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from baton.config import CanaryAnalysisConfig
from baton.deploy.analysis import AnalysisConfig, Verdict, guard, judge, summary
from baton.deploy.plan import ArmedFuse, Step, plan_deploy
from baton.deploy.proxyclient import ProxyUnavailable
from baton.deploy.traffic import Snapshot, Traffic, between, figures
from baton.errors import BatonError, DeploymentFailed, UsageError
from baton.state.store import InstanceRow, ReleaseRow

if TYPE_CHECKING:
    from baton.deploy.engine import DeploymentRun, Engine, _Deploy

GUARD_INTERVAL = 1.0  # seconds between two checks of the guard (and of promote/abort)
GUARD_WINDOW = 10.0  # the guard's window: the canary's last seconds of traffic
GUARD_MIN_REQUESTS = 20  # requests the guard needs in its window before it may abort
FUSE_WINDOW = 200  # the proxy's fuse judges the canary's last this many answers
FUSE_WATCH = 5.0  # seconds one long poll of the proxy's fuses waits for a trip
METRICS_GRACE = 30.0  # how long past a step's end to wait for a proxy that does not answer

Action = Literal["next", "extend", "confirm", "abort"]
Request = Literal["promote", "abort"]


# -- pure: from a verdict to what happens next ----------------------------------------------------


def analysis_config(cfg: CanaryAnalysisConfig) -> AnalysisConfig:
    """The judge's settings from ``deploy.canary.analysis``."""
    return AnalysisConfig.of(cfg)


def failed_rules(verdict: Verdict, cfg: AnalysisConfig) -> list[str]:
    """Which of the judge's rules a failed verdict broke: ``error_rate`` (the ceiling),
    ``error_increase``, ``latency``. Read from its figures (the judge's rules, again)."""
    if verdict.verdict != "fail":
        return []
    f = verdict.figures

    def number(key: str) -> float | None:
        value = f.get(key)
        return None if value is None else float(value)

    alpha = number("alpha") or 0.0
    canary_n = int(number("canary_requests") or 0)
    baseline_n = int(number("baseline_requests") or 0)
    compared = canary_n >= cfg.min_requests and baseline_n >= cfg.min_requests
    rules: list[str] = []
    rate = number("canary_error_rate")
    if canary_n >= cfg.min_requests and rate is not None and rate > cfg.max_error_rate:
        rules.append("error_rate")
    increase, error_p = number("error_rate_increase"), number("error_p_value")
    if (
        compared
        and increase is not None
        and error_p is not None
        and increase > cfg.max_error_rate_increase
        and error_p < alpha
    ):
        rules.append("error_increase")
    ratio, latency_p = number("latency_ratio_p95"), number("latency_p_value")
    if (
        compared
        and ratio is not None
        and latency_p is not None
        and latency_p < alpha
        and ratio > cfg.max_latency_ratio
    ):
        rules.append("latency")
    return rules


@dataclass(frozen=True)
class Decision:
    """What a step does after a verdict, and why (in words, for the history and the CLI)."""

    action: Action
    reason: str


def decide(
    verdict: Verdict,
    cfg: AnalysisConfig,
    *,
    extensions: int,
    max_extensions: int,
    confirming: bool,
) -> Decision:
    """The step state machine (rules: module docstring).

    ``extensions`` is how many times the current window was already held again for want of
    traffic; ``confirming`` says the window is the fresh one that confirms a latency fail.
    """
    why = "; ".join(verdict.reasons)
    if verdict.verdict == "fail":
        rules = failed_rules(verdict, cfg)
        if rules == ["latency"] and not confirming:
            return Decision("confirm", f"slower in this window, confirming over a fresh one: {why}")
        if rules == ["latency"]:
            return Decision("abort", f"slower in two windows in a row: {why}")
        return Decision("abort", why)
    if verdict.verdict == "inconclusive":
        if extensions < max_extensions:
            return Decision(
                "extend",
                f"inconclusive, holding the step again ({extensions + 1} of {max_extensions}):"
                f" {why}",
            )
        held = f"after {max_extensions} extra hold(s)" if max_extensions else "at the step's end"
        return Decision("abort", f"still inconclusive {held}, failing safe: {why}")
    if confirming:
        return Decision("next", f"the latency shift was not confirmed: {why}")
    return Decision("next", why)


# -- the running canary, as `baton status`, `baton promote` and `baton abort` see it -------------


@dataclass
class CanaryControl:
    """A running canary: where it is, and what a user asked of it."""

    deployment_id: int
    app: str
    version: str
    stable: str
    steps: list[tuple[int, float]]  # (weight, hold seconds)
    step: int = 0  # 1-based; 0 before any traffic moved
    weight: int = 0
    step_started: float | None = None  # wall clock
    hold_until: float | None = None  # wall clock
    extensions: int = 0
    confirming: bool = False
    last_verdict: dict[str, Any] | None = None
    request: Request | None = None
    fuse: dict[str, Any] | None = None  # the proxy's trip event, once the fuse tripped
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def ask(self, what: Request) -> None:
        if self.request is None:
            self.request = what
        self.wake.set()

    def describe(self) -> dict[str, Any]:
        now = time.time()
        return {
            "deployment": self.deployment_id,
            "version": self.version,
            "stable": self.stable,
            "step": self.step,
            "steps": len(self.steps),
            "weight": self.weight,
            "held": round(now - self.step_started, 1) if self.step_started else None,
            "left": round(max(0.0, self.hold_until - now), 1) if self.hold_until else None,
            "extensions": self.extensions,
            "confirming": self.confirming,
            "last_verdict": self.last_verdict,
            "request": self.request,
            "fuse": self.fuse,
        }


def request(engine: Engine, app: str, what: Request) -> DeploymentRun:
    """``baton promote`` / ``baton abort``: ask the app's running canary; its run to follow."""
    control = engine.canaries.get(app)
    run = engine.runs.get(control.deployment_id) if control is not None else None
    if control is None or run is None or run.finished:
        running = engine.store.running_deployment(app)
        doing = f" (deployment #{running.id} is a {running.strategy} one)" if running else ""
        raise UsageError(f"no canary deployment of {app} is running{doing}")
    control.ask(what)
    return run


def annotate_status(engine: Engine, status: dict[str, Any]) -> None:
    """Add each release's recent traffic and each app's running canary to ``/status``."""
    for name, app in status.get("apps", {}).items():
        for release in app.get("releases", []):
            release["traffic"] = figures(engine.traffic, name, release["version"])
        control = engine.canaries.get(name)
        app["canary"] = control.describe() if control is not None else None


def canary_events(engine: Engine, deployment_id: int) -> list[dict[str, Any]]:
    """A canary deployment's steps, verdicts (with their figures) and user requests, oldest
    first, each with its wall-clock ``ts`` (``baton history --json``)."""
    return [
        {"ts": e.ts, "kind": e.kind, **e.data}
        for e in engine.store.events(deployment_id)
        if e.kind in ("step", "verdict", "canary_request")
    ]


# -- the step loop ---------------------------------------------------------------------------------


async def run_canary(engine: Engine, d: _Deploy) -> None:
    """Deploy ``d`` as a canary (or, when there is nothing to compare with, blue-green)."""
    previous = d.previous
    stable_rows = engine.store.instances(previous.id, ("routed",)) if previous else []
    if d.kind != "deploy" or d.warm_switch or previous is None or not stable_rows:
        if d.kind == "deploy" and not d.warm_switch:
            d.run.emit(
                {
                    "event": "canary",
                    "phase": "skipped",
                    "message": "no live release to compare with: a plain blue-green switch",
                }
            )
        d.strategy = "blue-green"
        await engine._steps(d)
        return
    canary_cfg = d.cfg.deploy.canary
    control = CanaryControl(
        deployment_id=d.run.id,
        app=d.app,
        version=d.release.version,
        stable=previous.version,
        steps=[(s.weight, s.hold) for s in canary_cfg.steps],
    )
    engine.canaries[d.app] = control
    try:
        await _Canary(engine, d, control, previous, stable_rows).run()
    finally:
        if engine.canaries.get(d.app) is control:
            del engine.canaries[d.app]


class _Canary:
    def __init__(
        self,
        engine: Engine,
        d: _Deploy,
        control: CanaryControl,
        stable: ReleaseRow,
        stable_rows: list[InstanceRow],
    ) -> None:
        self.engine = engine
        self.d = d
        self.control = control
        self.stable = stable
        self.stable_rows = stable_rows
        self.cfg = d.cfg.deploy.canary
        self.analysis = analysis_config(self.cfg.analysis)
        self.traffic: Traffic = engine.traffic

    # -- helpers --------------------------------------------------------------------------

    def _step(self, label: str, kind: str, **extra: Any) -> None:
        d = self.d
        self.engine.store.set_step(d.run.id, label)
        self.engine.store.add_event(d.run.id, d.app, "step", {"step": label, **extra})
        d.run.emit({"event": "step", "step": kind, "batch": None, **extra})

    def _record(self, kind: str, data: dict[str, Any]) -> None:
        d = self.d
        self.engine.store.add_event(d.run.id, d.app, kind, data)
        d.run.emit({"event": kind, **data})

    def _weights(self) -> dict[str, int]:
        return {p.release: p.weight for _, p in self.engine.router.pools(self.d.app)}

    async def _set_weight(self, weight: int) -> None:
        """One table change: the canary gets ``weight``, the stable release the rest."""
        d, store = self.d, self.engine.store
        with store.transaction():
            for row_id, _ in d.started.values():
                store.set_instance_state(row_id, "routed")
            store.update_release(d.release.id, weight=weight)
            store.update_release(self.stable.id, weight=100 - weight)
        d.switched = True
        await self.engine.router.push_app(d.app)

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

    # -- the deployment -------------------------------------------------------------------

    async def run(self) -> None:
        await self._before_traffic()
        self._arm_fuse()
        watcher = asyncio.ensure_future(self._watch_fuse())
        try:
            steps = self.control.steps
            for n, (weight, hold) in enumerate(steps, start=1):
                self._abort_requested()
                if self.control.request == "promote":
                    break
                if await self._canary_step(n, weight, hold) == "promote":
                    break
            # A trip the watcher has not brought yet must not be promoted over.
            with contextlib.suppress(BatonError):
                answer = await self.engine.proxy.fuses()
                self.control.fuse = self.control.fuse or next(
                    (e for e in answer.get("events", []) if self._is_ours(e)), None
                )
            self._fuse_tripped(self.control.step, self.control.weight)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if self.control.request == "promote":
            self._record(
                "canary_request",
                {"request": "promote", "step": self.control.step, "weight": self.control.weight},
            )
        await self._promote()

    # -- the proxy's fuse -----------------------------------------------------------------

    def _arm_fuse(self) -> None:
        """From the first step on, the canary's route carries the fuse (and the retry on
        stable); it stays on the route after an abort, so the canary stays at weight 0."""
        d = self.d
        self.engine.router.fuses[d.app] = ArmedFuse(
            release_id=d.release.id,
            version=d.release.version,
            deployment=d.run.id,
            max_error_rate=self.analysis.max_error_rate,
            min_requests=GUARD_MIN_REQUESTS,
            window=max(FUSE_WINDOW, GUARD_MIN_REQUESTS),
            retry_on_stable=tuple(self.cfg.retry_on_stable),
        )

    def _disarm_fuse(self) -> None:
        armed = self.engine.router.fuses.get(self.d.app)
        if armed is not None and armed.deployment == self.d.run.id:
            del self.engine.router.fuses[self.d.app]

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
        proxy, control = self.engine.proxy, self.control
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

    async def _before_traffic(self) -> None:
        d, engine = self.d, self.engine
        self._step("prepare", "prepare")
        await engine.prepare_release(d)
        hooks = d.cfg.hooks
        steps = plan_deploy(
            "blue-green",
            new_count=d.cfg.instances,
            old=(),
            pre_deploy=bool(hooks.pre_deploy),
            expand=bool(d.cfg.migrations.expand),
            smoke_test=bool(hooks.smoke_test),
        )
        for step in steps:
            if step.kind == "switch":
                break
            self._abort_requested()
            self._step(step.label, step.kind)
            await engine._do(d, step)

    async def _canary_step(self, n: int, weight: int, hold: float) -> str:
        d, control = self.d, self.control
        version, stable = d.release.version, self.stable.version
        self._step(f"canary#{n - 1}", "canary", weight=weight)
        await self._set_weight(weight)
        control.step, control.weight = n, weight
        control.step_started = time.time()
        control.hold_until = control.step_started + hold
        control.extensions, control.confirming = 0, False
        d.run.emit(
            {
                "event": "canary_step",
                "step": n,
                "steps": len(control.steps),
                "weight": weight,
                "hold": hold,
                "weights": self._weights(),
            }
        )
        start: Snapshot | None = await self.traffic.sample(self.engine.proxy, fresh=True)
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
            snap = await self.traffic.sample(self.engine.proxy, fresh=True)
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
            baseline = between(start, snap, d.app, stable)
            canary = between(start, snap, d.app, version)
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

    async def _promote(self) -> None:
        d, engine = self.d, self.engine
        self._step("promote", "promote")
        self._disarm_fuse()  # no longer a canary: the proxy drops its fuse
        await self._set_weight(100)
        d.run.emit({"event": "switch", "weights": self._weights(), "batch": None})
        if d.cfg.deploy.verify > 0:
            self._step("verify", "verify")
            await engine._do(d, Step("verify"))
        # The new release has the traffic for good: a failure to drain or stop the old one
        # is a warning, not an undo (as after a blue-green switch).
        old = tuple(row.id for row in self.stable_rows)
        keep = d.cfg.deploy.keep_previous > 0
        for step in (Step("drain", old=old), Step("keep_warm" if keep else "stop", old=old)):
            self._step(step.label, step.kind)
            try:
                await engine._do(d, step)
            except BatonError as exc:
                d.run.emit({"event": "warning", "message": f"{step.kind}: {exc}"})
        if d.cfg.hooks.post_deploy:
            await engine._finalize(d)
            self._step("post_deploy", "post_deploy")
            await engine._do(d, Step("post_deploy"))
        await engine._finalize(d)
