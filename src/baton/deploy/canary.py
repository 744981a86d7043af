"""Canary releases: move a share of the traffic to the new release, step by step, and judge it.

Theory of operation. ``strategies.canary.Canary`` is the ``canary`` strategy; this module
holds its pure rules (``decide``) and its public face (``CanaryControl``). It starts the new
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
``CanaryControl`` (``Engine.canary``).

Crash recovery: the store records ``canary#N`` as the deployment's step; a control plane
that restarts finds it unfinished and undoes it (``plan.plan_recovery``): users go back to
the stable release, the canary's instances are stopped.

A **driven** canary (``Deployment.canary_weight``, a fleet canary without edges, see
``baton.cluster.hostcanary``) has no timer and no judge of its own: it starts at the weight
the fleet's controller gave, moves when ``drive`` gives another and holds until promote or
abort; the controller judges the whole fleet's traffic. The proxy's fuse is not armed for
it, so every host keeps the weight the fleet agreed on.

The canary strategy needs a live release to compare with: the first deploy of an app, a
rollback, or a stable release with no running instance is a plain blue-green switch.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from baton.config import CanaryAnalysisConfig
from baton.deploy.analysis import AnalysisConfig, Verdict
from baton.deploy.deployment import DeploymentRun
from baton.errors import UsageError
from baton.state.store import DeploymentRow, EventRow

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
        rules = verdict.failed
        if rules == ("latency",) and not confirming:
            return Decision("confirm", f"slower in this window, confirming over a fresh one: {why}")
        if rules == ("latency",):
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
    # Driven from outside (a fleet canary without edges): no timer, no judge of its own;
    # the weight the fleet's controller asked for (``drive``).
    driven: bool = False
    target: int = 0

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
            **({"driven": True} if self.driven else {}),
        }


class CanaryHost(Protocol):
    """What the functions below read of the engine (its public methods)."""

    def canary(self, app: str) -> CanaryControl | None: ...

    def run(self, deployment_id: int) -> DeploymentRun | None: ...

    def running_deployment(self, app: str) -> DeploymentRow | None: ...

    def events(self, deployment_id: int) -> list[EventRow]: ...

    def release_figures(self, app: str, version: str, seconds: float | None = None) -> Any: ...


def request(engine: CanaryHost, app: str, what: Request) -> DeploymentRun:
    """``baton promote`` / ``baton abort``: ask the app's running canary; its run to follow."""
    control = engine.canary(app)
    run = engine.run(control.deployment_id) if control is not None else None
    if control is None or run is None or run.finished:
        running = engine.running_deployment(app)
        doing = f" (deployment #{running.id} is a {running.strategy} one)" if running else ""
        raise UsageError(f"no canary deployment of {app} is running{doing}")
    control.ask(what)
    return run


def check_weight(value: object, what: str = "canary_weight") -> int:
    """A driven canary's weight from an API body; ``UsageError`` naming ``what`` if it is not
    a whole percentage."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise UsageError(f"{what}: expected a whole percentage, 0 to 100, got {value!r}")
    return value


def drive(engine: CanaryHost, app: str, weight: int) -> CanaryControl:
    """``POST /canary/weight``: move the app's driven canary (a fleet canary without edges)
    to ``weight``; its control."""
    control = engine.canary(app)
    if control is None or not control.driven:
        raise UsageError(f"no driven canary of {app} is running (a fleet canary sets one up)")
    control.target = weight
    control.wake.set()
    return control


def annotate_status(engine: CanaryHost, status: dict[str, Any]) -> None:
    """Add each release's recent traffic and each app's running canary to ``/status``."""
    for name, app in status.get("apps", {}).items():
        for release in app.get("releases", []):
            release["traffic"] = engine.release_figures(name, release["version"])
        control = engine.canary(name)
        app["canary"] = control.describe() if control is not None else None


def canary_events(engine: CanaryHost, deployment_id: int) -> list[dict[str, Any]]:
    """A canary deployment's steps, verdicts (with their figures) and user requests, oldest
    first, each with its wall-clock ``ts`` (``baton history --json``)."""
    return [
        {"ts": e.ts, "kind": e.kind, **e.data}
        for e in engine.events(deployment_id)
        if e.kind in ("step", "verdict", "canary_request")
    ]
