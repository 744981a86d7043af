"""Recent traffic: the last couple of minutes of the proxy's ``/metrics.json``, sampled.

The proxy's counters are cumulative, so a rate, an error rate or a percentile "over the last
N seconds" needs the snapshot of N seconds ago. This module owns that memory: ``Traffic``
keeps timestamped snapshots (``time.monotonic()``), at most one per ``min_interval``, for
``keep`` seconds, and turns them into ``analysis.ReleaseWindow``s: ``since`` walks every
snapshot from a start on through an ``analysis.Tally``, so a proxy restart in between starts a
new segment instead of a wrong difference. The canary's always-on guard (its canary's last
10 s), ``baton status`` (each release's last 30 s) and a release's verification (since its
switch) read it; the daemon samples it every second, a running deployment whenever it checks.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from baton.deploy.analysis import ReleaseWindow, Tally, release_snapshot, summary, window
from baton.deploy.proxyclient import ProxyClient
from baton.errors import BatonError

KEEP_SECONDS = 120.0
STATUS_WINDOW = 30.0  # seconds of traffic behind the figures of `baton status`


@dataclass(frozen=True)
class Snapshot:
    """One ``/metrics.json`` answer and when it was taken (monotonic seconds)."""

    t: float
    metrics: Mapping[str, Any]


class Traffic:
    """Timestamped ``/metrics.json`` snapshots of the last ``keep`` seconds."""

    def __init__(self, keep: float = KEEP_SECONDS, min_interval: float = 0.2) -> None:
        self.keep = keep
        self.min_interval = min_interval
        self._snapshots: deque[Snapshot] = deque()

    def add(self, metrics: Mapping[str, Any], t: float | None = None) -> Snapshot:
        snap = Snapshot(time.monotonic() if t is None else t, metrics)
        self._snapshots.append(snap)
        while self._snapshots and self._snapshots[0].t < snap.t - self.keep:
            self._snapshots.popleft()
        return snap

    async def sample(self, proxy: ProxyClient, *, fresh: bool = False) -> Snapshot | None:
        """A new snapshot from the proxy (or the latest, if taken under ``min_interval`` ago
        and ``fresh`` is not asked); None when the proxy does not answer."""
        latest = self.latest
        if not fresh and latest is not None and time.monotonic() - latest.t < self.min_interval:
            return latest
        try:
            metrics = await proxy.metrics()
        except BatonError:
            return None
        return self.add(metrics)

    @property
    def latest(self) -> Snapshot | None:
        return self._snapshots[-1] if self._snapshots else None

    def at(self, t: float) -> Snapshot | None:
        """The newest snapshot taken at or before ``t``, else the oldest one kept."""
        found: Snapshot | None = None
        for snap in self._snapshots:
            if snap.t > t:
                break
            found = snap
        if found is None and self._snapshots:
            found = self._snapshots[0]
        return found

    def recent(self, app: str, release: str, seconds: float) -> ReleaseWindow | None:
        """What ``release`` served over (about) the last ``seconds``; None without two
        snapshots to compare."""
        latest = self.latest
        if latest is None:
            return None
        start = self.at(latest.t - seconds)
        if start is None or start is latest:
            return None
        return self.since(start, app, release)

    def since(self, start: Snapshot, app: str, release: str) -> ReleaseWindow:
        """What ``release`` served from ``start`` to the latest snapshot, summed across proxy
        restarts (each kept snapshot after ``start`` is compared with the one before)."""
        tally = Tally.start(release_snapshot(start.metrics, app, release))
        end = start
        for snap in self._snapshots:
            if snap.t > start.t:
                tally = tally.add(release_snapshot(snap.metrics, app, release))
                end = snap
        return tally.window(seconds=max(end.t - start.t, 1e-3))


def between(start: Snapshot, end: Snapshot, app: str, release: str) -> ReleaseWindow:
    """The release's traffic from ``start`` to ``end``, two snapshots alone: a proxy restart
    in between is seen only if a counter ended lower (``Traffic.since`` sees every one)."""
    return window(
        release_snapshot(start.metrics, app, release),
        release_snapshot(end.metrics, app, release),
        seconds=max(end.t - start.t, 1e-3),
    )


def figures(traffic: Traffic, app: str, release: str, seconds: float = STATUS_WINDOW) -> Any:
    """``analysis.summary`` of a release's recent traffic, with the window's length; None
    when there is nothing to compare yet."""
    w = traffic.recent(app, release, seconds)
    if w is None:
        return None
    return {**summary(w), "seconds": round(w.seconds or 0.0, 1)}
