"""What the dashboard shows, as one JSON-able dict: built from the engine, once per tick.

``build_state`` gathers every app (releases, weights, instances, the running canary), each
release's live figures (req/s, error rate, p50/p95/p99 over the last ``LIVE_WINDOW``
seconds, and its cumulative request count, all from the proxy's per-release metrics the
daemon samples every second) and the recent deployments with their timeline (steps,
verdicts and their figures, deploy signals). ``StateCache`` shares one build between all
open pages, so ten browsers cost what one does.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from baton.deploy.analysis import release_snapshot, window
from baton.deploy.canary import annotate_status

if TYPE_CHECKING:
    from baton.deploy.engine import Engine

LIVE_WINDOW = 5.0  # seconds behind the live figures and chart points
DEPLOYMENTS = 12  # deployments in the timeline
TIMELINE_KINDS = (
    "step",
    "verdict",
    "canary_request",
    "failed",
    "succeeded",
    "signals",
    "started_by",
)


def release_totals(engine: Engine, app: str, release: str) -> dict[str, Any] | None:
    """The release's requests since the proxy started, per the latest sample."""
    latest = engine.latest_traffic()
    if latest is None:
        return None
    snap = release_snapshot(latest.metrics, app, release)
    if not snap:
        return None
    w = window(None, snap)
    return {"requests": w.requests, "errors": w.errors}


async def build_state(engine: Engine) -> dict[str, Any]:
    status = await engine.status()
    annotate_status(engine, status)
    for name, app in status["apps"].items():
        for release in app["releases"]:
            release["live"] = engine.release_figures(name, release["version"], LIVE_WINDOW)
            release["totals"] = release_totals(engine, name, release["version"])
    deployments = []
    for dep in engine.history(None, DEPLOYMENTS):
        timeline = [
            {"ts": e.ts, "kind": e.kind, **e.data}
            for e in engine.events(dep["id"])
            if e.kind in TIMELINE_KINDS
        ]
        signals = next((t for t in reversed(timeline) if t["kind"] == "signals"), None)
        by = next((t for t in timeline if t["kind"] == "started_by"), None)
        timeline = [t for t in timeline if t["kind"] != "started_by"]
        deployments.append({**dep, "timeline": timeline, "signals": signals, "started_by": by})
    return {"ts": time.time(), "apps": status["apps"], "deployments": deployments}


class StateCache:
    """One ``build_state`` at most every ``max_age`` seconds, shared by every page."""

    def __init__(self, engine: Engine, max_age: float = 0.5) -> None:
        self.engine = engine
        self.max_age = max_age
        self._at = 0.0
        self._state: dict[str, Any] | None = None

    async def get(self, *, fresh: bool = False) -> dict[str, Any]:
        now = time.monotonic()
        if fresh or self._state is None or now - self._at > self.max_age:
            self._state = await build_state(self.engine)
            self._at = now
        return self._state
