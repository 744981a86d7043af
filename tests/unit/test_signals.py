"""Deploy signals: the judgement, and windows taken from timestamped proxy snapshots."""

from __future__ import annotations

from typing import Any

import pytest

from baton.deploy.analysis import ReleaseWindow
from baton.observe.signals import SignalBook, judge
from baton.proxy.metrics import LATENCY_BOUNDS

LIMITS: dict[str, Any] = {
    "max_latency_ratio": 1.5,
    "max_error_rate_increase": 0.01,
    "min_requests": 50,
}


def test_a_slower_release_is_flagged_with_its_figures() -> None:
    old = ReleaseWindow.from_samples([0.004] * 200, seconds=60)
    new = ReleaseWindow.from_samples([0.040] * 200, seconds=60)
    found = judge(new, old, **LIMITS)
    assert found["regression"] is True
    assert found["latency_ratio"] > 1.5
    assert "p95" in found["verdict"] and "limit 1.5x" in found["verdict"]


def test_more_errors_are_flagged_and_equal_releases_are_not() -> None:
    old = ReleaseWindow.from_samples([0.004] * 200, errors=1, seconds=60)
    worse = ReleaseWindow.from_samples([0.004] * 200, errors=10, seconds=60)
    assert judge(worse, old, **LIMITS)["regression"] is True
    assert "error rate 5.00% vs 0.50%" in judge(worse, old, **LIMITS)["verdict"]
    same = judge(ReleaseWindow.from_samples([0.004] * 300, seconds=60), old, **LIMITS)
    assert same["regression"] is False and same["verdict"] == "no regression"


def test_too_little_traffic_is_not_judged() -> None:
    old = ReleaseWindow.from_samples([0.004] * 10, seconds=60)
    new = ReleaseWindow.from_samples([1.0] * 10, errors=10, seconds=60)
    found = judge(new, old, **LIMITS)
    assert found["regression"] is False and found["verdict"].startswith("not judged")


def snapshot(counts: dict[str, tuple[int, float]]) -> dict[str, Any]:
    """/metrics.json with, per release, ``n`` requests all at latency ``seconds``."""
    releases = {}
    for release, (n, seconds) in counts.items():
        buckets = [0] * (len(LATENCY_BOUNDS) + 1)
        buckets[next(i for i, b in enumerate(LATENCY_BOUNDS) if b >= seconds)] = n
        hist = {"bounds": list(LATENCY_BOUNDS), "counts": buckets, "sum": n * seconds, "count": n}
        releases[release] = {"requests": {"2xx": n}, "ttfb": hist, "total": hist}
    return {"apps": {"shop": {"releases": releases}}}


def test_the_new_releases_first_window_is_compared_with_the_previous_releases_last() -> None:
    book = SignalBook()
    # v1 served 100 req/s for a minute before the switch at t=1000, at 4 ms...
    for t in range(900, 1001, 10):
        book.log.add(float(t), snapshot({"v1": ((t - 900) * 100, 0.004)}))
    book.on_event(
        2, "shop", "v2", {"event": "deployment", "version": "v2", "previous": "v1", "ts": 990}
    )
    book.on_event(2, "shop", "v2", {"event": "step", "step": "switch", "ts": 1000.0})
    # ...then v2 took everything, at 40 ms; v1 is gone from the proxy's metrics.
    for t in range(1010, 1071, 10):
        book.log.add(float(t), snapshot({"v2": ((t - 1000) * 100, 0.040)}))
    book.on_event(2, "shop", "v2", {"event": "result", "ok": True, "ts": 1001.0})
    watch = book.watches[2]
    settings = {"window": 60.0, **LIMITS}
    found = book.measure(watch, settings, now=1070.0)
    assert found is not None
    assert found["previous"]["requests"] == 6000 and found["new"]["requests"] == 6000
    assert found["previous_seconds"] == 60 and found["new_seconds"] == 60
    assert found["regression"] is True
    assert found["new"]["p95"] == pytest.approx(0.040, rel=0.2)
    assert found["previous"]["p95"] == pytest.approx(0.004, rel=0.3)


def test_a_failed_deployment_is_not_measured() -> None:
    book = SignalBook()
    book.on_event(3, "shop", "v3", {"event": "deployment", "version": "v3", "previous": "v2"})
    book.on_event(3, "shop", "v3", {"event": "step", "step": "switch", "ts": 5.0})
    book.on_event(3, "shop", "v3", {"event": "result", "ok": False, "ts": 6.0})
    assert 3 not in book.watches
