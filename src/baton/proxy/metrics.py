"""Per-release golden signals, cheap enough to record on every request.

Theory of operation. The proxy owns one ``ReleaseMetrics`` per (app, release), kept in a
``MetricsRegistry`` across route-table swaps, so counters are cumulative for the life of the
proxy process and the control plane takes deltas. Recording is a handful of list-index
increments and one bucket search per histogram: no locks (one event loop), no allocation.
Rendering (Prometheus text, JSON) happens only when the admin API is asked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from baton.proxy.fuse import Fuse

# Upper bounds in seconds; a final +Inf bucket is implicit. Fine at the low end, where a
# fast app lives, so p95 comparisons (canary analysis) have resolution.
LATENCY_BOUNDS: Final[tuple[float, ...]] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.4,
    0.5,
    0.75,
    1.0,
    1.5,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def bucket(seconds: float) -> int:
    """The index of the first bound >= ``seconds`` (``bisect_left``), len() past the last.

    A scan from the low end, not a bisection: most answers land in the first few buckets,
    and compiled (mypyc) this is a few native float compares, not a call into ``bisect``.
    """
    i = 0
    for bound in LATENCY_BOUNDS:
        if seconds <= bound:
            return i
        i += 1
    return i


class Histogram:
    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BOUNDS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bucket(seconds)] += 1
        self.sum += seconds
        self.count += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "bounds": list(LATENCY_BOUNDS),
            "counts": list(self.counts),
            "sum": self.sum,
            "count": self.count,
        }


class ReleaseMetrics:
    """Counters for one release of one app."""

    __slots__ = (
        "app",
        "fuse",
        "in_flight",
        "on_trip",
        "release",
        "retries",
        "stable_retries",
        "status",
        "total",
        "ttfb",
        "tunnels",
        "upstream_errors",
    )

    def __init__(self, app: str, release: str) -> None:
        self.app = app
        self.release = release
        self.status = [0, 0, 0, 0, 0]  # 1xx..5xx
        self.upstream_errors = 0
        self.retries = 0
        self.in_flight = 0
        self.tunnels = 0
        self.stable_retries = 0  # canary 5xx answers retried on the stable release
        # A canary's fuse (proxy/fuse.py), armed by the proxy for each table; ``on_trip`` is
        # called in the same turn as the outcome that tripped it.
        self.fuse: Fuse | None = None
        self.on_trip: Callable[[ReleaseMetrics], None] | None = None
        self.ttfb = Histogram()
        self.total = Histogram()

    def record(self, status: int, ttfb: float, total: float) -> None:
        idx = status // 100 - 1
        if 0 <= idx < 5:
            self.status[idx] += 1
        # Histogram.observe inlined twice: this runs on every request.
        h = self.ttfb
        h.counts[bucket(ttfb)] += 1
        h.sum += ttfb
        h.count += 1
        h = self.total
        h.counts[bucket(total)] += 1
        h.sum += total
        h.count += 1
        fuse = self.fuse
        if fuse is not None and fuse.record(idx == 4) and self.on_trip is not None:
            self.on_trip(self)

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": dict(zip(CLASSES, self.status, strict=True)),
            "upstream_errors": self.upstream_errors,
            "retries": self.retries,
            "in_flight": self.in_flight,
            "tunnels": self.tunnels,
            "stable_retries": self.stable_retries,
            **({"fuse": self.fuse.to_json()} if self.fuse is not None else {}),
            "ttfb": self.ttfb.to_json(),
            "total": self.total.to_json(),
        }


FLAG_COHORT_PREFIX = "flag:"  # pseudo-releases counting a feature flag's cohorts


class MetricsRegistry:
    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], ReleaseMetrics] = {}
        # Per app: requests waiting for a healthy target, and how many timed out or were
        # refused a place (set by the proxy; ``queue.py``).
        self.queue_figures: Callable[[], dict[str, dict[str, int]]] = dict

    def get(self, app: str, release: str) -> ReleaseMetrics:
        key = (app, release)
        found = self._by_key.get(key)
        if found is None:
            found = self._by_key[key] = ReleaseMetrics(app, release)
        return found

    def forget(self, keep: set[tuple[str, str]]) -> None:
        """Drop releases that are no longer routed and have no work left."""
        apps = {app for app, _ in keep}
        for key, m in list(self._by_key.items()):
            if key[1].startswith(FLAG_COHORT_PREFIX) and key[0] in apps:
                continue  # a feature flag's cohort lives as long as its app
            if key not in keep and m.in_flight == 0 and m.tunnels == 0:
                del self._by_key[key]

    def to_json(self) -> dict[str, Any]:
        apps: dict[str, Any] = {}
        for (app, release), m in sorted(self._by_key.items()):
            apps.setdefault(app, {"releases": {}})["releases"][release] = m.to_json()
        for app, figures in self.queue_figures().items():
            apps.setdefault(app, {"releases": {}})["queue"] = figures
        return {"apps": apps}

    def to_prometheus(self) -> str:
        out: list[str] = []

        def head(name: str, kind: str, text: str) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")

        items = sorted(self._by_key.items())
        head("baton_requests_total", "counter", "Requests answered, by status class.")
        for (app, rel), m in items:
            for cls, n in zip(CLASSES, m.status, strict=True):
                out.append(
                    f'baton_requests_total{{app="{_esc(app)}",release="{_esc(rel)}",class="{cls}"}} {n}'
                )
        scalar = (
            (
                "baton_upstream_errors_total",
                "counter",
                "Requests failed by the upstream.",
                "upstream_errors",
            ),
            ("baton_retries_total", "counter", "Requests retried on another attempt.", "retries"),
            ("baton_in_flight", "gauge", "Requests in flight.", "in_flight"),
            ("baton_open_tunnels", "gauge", "Open upgraded connections (WebSocket).", "tunnels"),
            (
                "baton_stable_retries_total",
                "counter",
                "Canary 5xx answers retried on the stable release.",
                "stable_retries",
            ),
        )
        for name, kind, text, attr in scalar:
            head(name, kind, text)
            for (app, rel), m in items:
                out.append(f'{name}{{app="{_esc(app)}",release="{_esc(rel)}"}} {getattr(m, attr)}')
        head("baton_release_fuse_tripped", "gauge", "1 when the canary's fuse tripped.")
        for (app, rel), m in items:
            if m.fuse is not None:
                tripped = int(m.fuse.tripped)
                out.append(
                    f'baton_release_fuse_tripped{{app="{_esc(app)}",release="{_esc(rel)}"}} {tripped}'
                )
        for name, attr, text in (
            ("baton_upstream_ttfb_seconds", "ttfb", "Upstream time to first response byte."),
            ("baton_request_duration_seconds", "total", "Total request time through the proxy."),
        ):
            head(name, "histogram", text)
            for (app, rel), m in items:
                h: Histogram = getattr(m, attr)
                labels = f'app="{_esc(app)}",release="{_esc(rel)}"'
                running = 0
                for bound, n in zip(LATENCY_BOUNDS, h.counts, strict=False):
                    running += n
                    out.append(f'{name}_bucket{{{labels},le="{bound:g}"}} {running}')
                out.append(f'{name}_bucket{{{labels},le="+Inf"}} {h.count}')
                out.append(f"{name}_sum{{{labels}}} {h.sum:.6f}")
                out.append(f"{name}_count{{{labels}}} {h.count}")
        queues = sorted(self.queue_figures().items())
        for name, kind, text, key in (
            ("baton_queued", "gauge", "Requests waiting for a healthy target.", "queued"),
            (
                "baton_queue_timeouts_total",
                "counter",
                "Requests answered 503 after waiting queue_timeout for a healthy target.",
                "queue_timeouts",
            ),
            (
                "baton_queue_rejected_total",
                "counter",
                "Requests answered 503 at once because queue_limit requests were waiting.",
                "queue_rejected",
            ),
        ):
            head(name, kind, text)
            for app, figures in queues:
                out.append(f'{name}{{app="{_esc(app)}"}} {figures[key]}')
        return "\n".join(out) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
