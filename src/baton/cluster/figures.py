"""The fleet's traffic figures: what each proxy publishes for a fleet canary, and their sum.

Whoever splits an app's traffic for a fleet canary publishes its proxy's figures of that app
to etcd every ``INTERVAL``: the edges (``/baton/edge-figures/EDGE``, topology b) or, without
edges, every app host (``/baton/host-figures/HOST``, topology a). A publisher's value holds,
per app and release, the proxy's own ``/metrics.json`` counters that the judge reads: the
requests per status class and the ``ttfb`` latency histogram (bounds and counts), cumulative
since that proxy started (``release_figures``, pure).

``FleetTally`` (pure) sums them over every publisher for ``baton.deploy.analysis``: one
``analysis.Tally`` per publisher and release, so a publisher whose proxy restarted (its
counters went back to zero) starts a new segment instead of a negative difference, and the
windows of all publishers are merged into one ``ReleaseWindow`` per release: the whole
fleet's traffic, judged by the single-host judge's rules.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from baton.cluster import keys
from baton.cluster.etcd import Etcd
from baton.deploy.analysis import ReleaseWindow, Tally, merge

EDGE_FIGURES = keys.ROOT + "edge-figures/"  # EDGE → its proxy's figures of the apps it routes
HOST_FIGURES = keys.ROOT + "host-figures/"  # HOST → its proxy's figures of its canaries
INTERVAL = 0.5  # seconds between two publications

# publisher → release → the proxy's snapshot of that release (requests per class, ttfb)
Figures = dict[str, dict[str, dict[str, Any]]]


def release_figures(apps: Mapping[str, Any], wanted: Iterable[str]) -> dict[str, Any]:
    """Per app of ``wanted`` and release: the proxy's counters the judge reads (pure)."""
    out: dict[str, dict[str, Any]] = {}
    for app in wanted:
        for release, m in ((apps.get(app) or {}).get("releases") or {}).items():
            if not isinstance(m, Mapping):
                continue
            ttfb = m.get("ttfb") or {}
            out.setdefault(app, {})[release] = {
                "requests": dict(m.get("requests") or {}),
                "ttfb": {"bounds": ttfb.get("bounds", []), "counts": ttfb.get("counts", [])},
                # what draining at the edges waits for (``edge.in_flight``)
                "in_flight": int(m.get("in_flight", 0)) + int(m.get("tunnels", 0)),
            }
    return out


async def publish_figures(etcd: Etcd, key: str, figures: Mapping[str, Any]) -> None:
    await etcd.put(key, json.dumps(figures, sort_keys=True))


async def read_figures(etcd: Etcd, prefix: str, app: str) -> Figures:
    """``app``'s figures from every publisher under ``prefix``: publisher → release → snapshot.
    A value that is not JSON of that shape is left out."""
    kvs, _ = await etcd.get_prefix(prefix)
    out: Figures = {}
    for kv in kvs:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            releases = json.loads(kv.value).get(app)
            if isinstance(releases, dict):
                out[keys.name_after(prefix, kv.key)] = {
                    str(r): m for r, m in releases.items() if isinstance(m, dict)
                }
    return out


class FleetTally:
    """Every publisher's traffic of some releases from a baseline on, summed (pure).

    A publisher named in ``baseline`` counts from its baseline snapshot (a release it had
    not served yet, from zero); one that appears later counts from its first snapshot."""

    def __init__(self, baseline: Figures, releases: Iterable[str]) -> None:
        self.releases = tuple(releases)
        self.tallies: dict[tuple[str, str], Tally] = {}
        for publisher, snapshots in baseline.items():
            for release in self.releases:
                self.tallies[publisher, release] = _tally(snapshots.get(release))

    def add(self, now: Figures) -> None:
        """Newer figures (a publisher missing from them keeps what it had)."""
        for publisher, snapshots in now.items():
            for release in self.releases:
                snapshot = snapshots.get(release)
                if snapshot is None:  # not in this publisher's table (yet, or any more)
                    continue
                tally = self.tallies.get((publisher, release))
                with contextlib.suppress(ValueError):  # a malformed snapshot is skipped
                    self.tallies[publisher, release] = (
                        _tally(snapshot) if tally is None else tally.add(snapshot)
                    )

    def window(self, release: str) -> ReleaseWindow:
        """``release``'s traffic over every publisher since the baseline."""
        return merge([t.window() for (_, r), t in sorted(self.tallies.items()) if r == release])


def _tally(snapshot: Mapping[str, Any] | None) -> Tally:
    try:
        return Tally.start(snapshot)
    except ValueError:
        return Tally.start(None)
