"""Deploy-correlated signals: how a release did in its first minutes, against its predecessor.

Theory of operation. ``SnapshotLog`` keeps the proxy's ``/metrics.json`` snapshots (the ones
the daemon already samples every second for ``baton status``) with their wall-clock time,
for as long as the longest ``deploy.signals.window`` needs. ``SignalBook`` listens to
deployment events: it notes when a deployment first moved traffic to its new release (the
``switch`` or first ``canary`` step) and, once the deployment succeeded, waits until
``window`` seconds after that moment. It then compares the new release's first ``window``
seconds with the previous release's last ``window`` seconds before the switch: p50/p95/p99
time to first byte and error rate (``judge``, pure), and stores the result as a
``signals`` event of the deployment, which ``baton history`` and the dashboard show. While
``deploy.verify`` runs, the engine may ask ``regression`` for a verdict on what the window
holds so far, and switch back when ``deploy.signals.rollback`` is set.

A control plane restarted in the middle of a window loses that window's measurement (the
snapshots live in memory); the deployment itself is not affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from baton.deploy.analysis import ReleaseWindow, release_snapshot, summary, window

if TYPE_CHECKING:
    from baton.config import SignalsConfig
    from baton.deploy.traffic import Snapshot
    from baton.state.store import EventRow


class Engine(Protocol):
    """What the signals read of the deploy engine (its public methods; no import of it,
    so the engine can import this module's book)."""

    def latest_traffic(self) -> Snapshot | None: ...

    def app_names(self) -> list[str]: ...

    def app_config(self, app: str) -> dict[str, Any] | None: ...

    def add_event(
        self, deployment_id: int | None, app: str, kind: str, data: dict[str, Any]
    ) -> None: ...

    def events(self, deployment_id: int) -> list[EventRow]: ...


log = logging.getLogger("baton.signals")

TICK = 1.0  # seconds between snapshots
MIN_KEEP = 330.0  # seconds of snapshots kept at least (the default 5m window, and a margin)
MAX_KEEP = 3630.0  # and at most (an hour's window)


# -- the judgement (pure) --------------------------------------------------------------------


def judge(
    new: ReleaseWindow,
    previous: ReleaseWindow,
    *,
    max_latency_ratio: float,
    max_error_rate_increase: float,
    min_requests: int,
) -> dict[str, Any]:
    """The new release against the previous one. ``regression`` is True only when both had
    ``min_requests`` and p95 grew beyond the ratio or the error rate beyond the increase."""
    n, p = summary(new), summary(previous)
    result: dict[str, Any] = {
        "new": n,
        "previous": p,
        "latency_ratio": None,
        "error_rate_increase": None,
        "regression": False,
        "reasons": [],
    }
    if new.requests < min_requests or previous.requests < min_requests:
        result["verdict"] = (
            f"not judged: too little traffic ({new.requests} and {previous.requests}"
            f" requests, {min_requests} needed)"
        )
        return result
    reasons: list[str] = []
    if n["p95"] is not None and p["p95"]:
        ratio = float(n["p95"]) / float(p["p95"])
        result["latency_ratio"] = round(ratio, 3)
        if ratio > max_latency_ratio:
            reasons.append(
                f"p95 {float(n['p95']) * 1000:.1f} ms vs {float(p['p95']) * 1000:.1f} ms"
                f" ({ratio:.2f}x, limit {max_latency_ratio:g}x)"
            )
    increase = new.error_rate - previous.error_rate
    result["error_rate_increase"] = round(increase, 6)
    if increase > max_error_rate_increase:
        reasons.append(
            f"error rate {new.error_rate:.2%} vs {previous.error_rate:.2%}"
            f" (+{increase:.2%}, limit +{max_error_rate_increase:.2%})"
        )
    result["reasons"] = reasons
    result["regression"] = bool(reasons)
    result["verdict"] = "regression: " + "; ".join(reasons) if reasons else "no regression"
    return result


# -- snapshots ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timed:
    t: float  # wall clock (time.time())
    metrics: Mapping[str, Any]


class SnapshotLog:
    """Wall-clock-stamped ``/metrics.json`` snapshots, oldest first."""

    def __init__(self, keep: float = MIN_KEEP) -> None:
        self.keep = keep
        self._snaps: deque[Timed] = deque()

    def add(self, t: float, metrics: Mapping[str, Any]) -> None:
        if self._snaps and metrics is self._snaps[-1].metrics:
            return  # the same sample again
        self._snaps.append(Timed(t, metrics))
        while self._snaps and self._snaps[0].t < t - self.keep:
            self._snaps.popleft()

    def at(self, t: float) -> Timed | None:
        """The newest snapshot taken at or before ``t``, else the oldest one."""
        if not self._snaps:
            return None
        i = bisect_right([s.t for s in self._snaps], t)
        return self._snaps[i - 1] if i else self._snaps[0]

    def release(self, app: str, release: str, start: float, end: float) -> ReleaseWindow | None:
        a, b = self.at(start), self.at(end)
        if a is None or b is None or b.t <= a.t:
            return None
        return window(
            release_snapshot(a.metrics, app, release),
            release_snapshot(b.metrics, app, release),
            seconds=b.t - a.t,
        )


# -- following deployments --------------------------------------------------------------------------


@dataclass
class Watch:
    deployment_id: int
    app: str
    version: str
    previous: str | None
    switched_at: float | None = None
    succeeded: bool = False


def _settings(config: Mapping[str, Any] | None) -> dict[str, Any]:
    from baton.config import SignalsConfig

    raw = ((config or {}).get("deploy") or {}).get("signals") or {}
    try:
        return SignalsConfig.model_validate(raw).model_dump()
    except ValueError:
        return SignalsConfig().model_dump()


class SignalBook:
    def __init__(self) -> None:
        self.log = SnapshotLog()
        self.watches: dict[int, Watch] = {}

    # fed by baton.observe.hub
    def on_event(
        self, deployment_id: int, app: str, version: str, event: Mapping[str, Any]
    ) -> None:
        kind = event.get("event")
        ts = float(event.get("ts") or time.time())
        if kind == "deployment":
            self.watches[deployment_id] = Watch(
                deployment_id, app, str(event.get("version") or version), event.get("previous")
            )
            return
        watch = self.watches.get(deployment_id)
        if watch is None:
            return
        if kind == "step" and event.get("step") in ("switch", "canary", "promote"):
            if watch.switched_at is None:
                watch.switched_at = ts
        elif kind == "result":
            if event.get("ok") and watch.previous and watch.switched_at is not None:
                watch.succeeded = True
            else:
                self.watches.pop(deployment_id, None)

    def measure(
        self, watch: Watch, settings: Mapping[str, Any], now: float
    ) -> dict[str, Any] | None:
        if watch.switched_at is None or not watch.previous:
            return None
        span = float(settings["window"])
        end = min(now, watch.switched_at + span)
        new = self.log.release(watch.app, watch.version, watch.switched_at, end)
        old = self.log.release(
            watch.app, watch.previous, watch.switched_at - span, watch.switched_at
        )
        if new is None or old is None:
            return None
        verdict = judge(
            new,
            old,
            max_latency_ratio=float(settings["max_latency_ratio"]),
            max_error_rate_increase=float(settings["max_error_rate_increase"]),
            min_requests=int(settings["min_requests"]),
        )
        return {
            "version": watch.version,
            "previous_version": watch.previous,
            "window": span,
            "new_seconds": round(new.seconds or 0.0, 1),
            "previous_seconds": round(old.seconds or 0.0, 1),
            **verdict,
        }

    def regression(self, deployment_id: int, settings: SignalsConfig) -> str | None:
        """During ``deploy.verify``: why the new release regressed so far, or None."""
        watch = self.watches.get(deployment_id)
        if watch is None:
            return None
        found = self.measure(watch, settings.model_dump(), time.time())
        if found is None or not found["regression"]:
            return None
        return f"deploy signals: {'; '.join(found['reasons'])}"

    def tick(self, engine: Engine, now: float) -> None:
        """Take the daemon's latest sample; store every window that is complete."""
        latest = engine.latest_traffic()
        if latest is not None:
            self.log.add(now - (time.monotonic() - latest.t), latest.metrics)
        keep = MIN_KEEP
        for name in engine.app_names():
            keep = max(keep, float(_settings(engine.app_config(name))["window"]) + 30.0)
        self.log.keep = min(keep, MAX_KEEP)
        for dep_id, watch in list(self.watches.items()):
            if not watch.succeeded or watch.switched_at is None:
                continue
            settings = _settings(engine.app_config(watch.app))
            if now < watch.switched_at + float(settings["window"]):
                continue
            self.watches.pop(dep_id, None)
            found = self.measure(watch, settings, now)
            if found is None:
                continue
            engine.add_event(dep_id, watch.app, "signals", found)
            (log.warning if found["regression"] else log.info)(
                "deploy signals of #%s %s %s: %s",
                dep_id,
                watch.app,
                watch.version,
                found["verdict"],
            )


SIGNALS = SignalBook()


def stored(engine: Engine, deployment_id: int) -> dict[str, Any] | None:
    """The deployment's measured signals, if its window is complete."""
    found = [e for e in engine.events(deployment_id) if e.kind == "signals"]
    return {"ts": found[-1].ts, **found[-1].data} if found else None


async def watch(engine: Engine, stop: asyncio.Event) -> None:
    """The daemon's loop: one tick a second until ``stop``."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), TICK)
        try:
            SIGNALS.tick(engine, time.time())
        except Exception:  # measuring must never stop the daemon
            log.exception("measuring deploy signals failed; going on")
