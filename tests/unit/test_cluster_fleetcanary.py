"""The fleet canary's figures and judge: every publisher's counters and latency histograms
summed, and judged by the single-host canary's rules. Pure: no etcd, no proxy."""

from __future__ import annotations

import json
from typing import Any

import pytest

from baton.cluster import keys
from baton.cluster.figures import FleetTally, release_figures
from baton.cluster.fleetcanary import analysis_of, judge_step, tripped, verdict
from baton.deploy.analysis import AnalysisConfig, ReleaseWindow
from baton.deploy.canary import check_weight
from baton.errors import UsageError
from baton.proxy.metrics import LATENCY_BOUNDS

CFG = AnalysisConfig(min_requests=50, max_error_rate=0.05)


def snapshot(latencies: list[float], errors: int = 0) -> dict[str, Any]:
    """A release as the proxy's /metrics.json shows it: status classes and a ttfb histogram."""
    w = ReleaseWindow.from_samples(latencies, errors)
    return {
        "requests": {"2xx": w.requests - errors, "5xx": errors},
        "upstream_errors": 0,
        "ttfb": {"bounds": list(LATENCY_BOUNDS), "counts": list(w.counts), "sum": 0, "count": 0},
    }


def test_a_publisher_sends_the_counters_and_latency_histogram_of_each_release() -> None:
    apps = {
        "shop": {"releases": {"v1": snapshot([0.01] * 3), "v2": snapshot([0.2], errors=1)}},
        "other": {"releases": {"x": snapshot([0.01])}},
    }
    figures = release_figures(apps, ["shop"])
    assert set(figures) == {"shop"} and set(figures["shop"]) == {"v1", "v2"}
    v2 = figures["shop"]["v2"]
    assert v2["requests"] == {"2xx": 0, "5xx": 1}
    assert v2["ttfb"]["bounds"] == list(LATENCY_BOUNDS) and sum(v2["ttfb"]["counts"]) == 1
    json.dumps(figures)  # goes to etcd as it is


def test_the_fleet_sums_every_publishers_traffic_since_the_step_began() -> None:
    before = {"web1": {"v1": snapshot([0.01] * 100)}, "web2": {"v1": snapshot([0.01] * 50)}}
    tally = FleetTally(before, ("v1", "v2"))
    tally.add(
        {
            "web1": {"v1": snapshot([0.01] * 160), "v2": snapshot([0.01] * 30, errors=3)},
            "web2": {"v1": snapshot([0.01] * 90), "v2": snapshot([0.01] * 20, errors=1)},
            "web3": {"v1": snapshot([0.01] * 7)},  # appeared during the step: from here on
        }
    )
    assert tally.window("v1").requests == 60 + 40
    v2 = tally.window("v2")
    assert (v2.requests, v2.errors) == (50, 4)  # a release new in the step counts from zero


def test_a_publisher_whose_proxy_restarted_is_not_counted_negative_nor_twice() -> None:
    tally = FleetTally({"edge1": {"v2": snapshot([0.01] * 100)}}, ("v1", "v2"))
    tally.add({"edge1": {"v2": snapshot([0.01] * 130)}})  # 30 since the baseline
    tally.add({"edge1": {"v2": snapshot([0.01] * 20)}})  # restarted: 20 more since
    tally.add({"edge1": {}})  # the release left its table for a moment: nothing changes
    tally.add({"edge1": {"v2": snapshot([0.01] * 25)}})
    assert tally.window("v2").requests == 30 + 25


def test_a_canary_slower_across_the_fleet_fails_the_latency_rule_with_no_error() -> None:
    baseline: dict[str, dict[str, dict[str, Any]]] = {"web1": {}, "web2": {}}
    tally = FleetTally(baseline, ("v1", "v2"))
    fast, slow = [0.004, 0.005, 0.006] * 100, [0.18, 0.2, 0.22] * 40
    tally.add(
        {
            "web1": {"v1": snapshot(fast), "v2": snapshot(slow)},
            "web2": {"v1": snapshot(fast), "v2": snapshot(slow)},
        }
    )
    judged = verdict(tally, "v1", "v2", 30, CFG)
    assert judged.verdict == "fail" and judged.failed == ("latency",), judged.reasons
    assert tripped(tally, "v2", CFG) is None  # no error: the guard lets it be


def test_a_canary_failing_on_the_summed_figures_trips_the_guard_and_the_ceiling() -> None:
    tally = FleetTally({"edge1": {}, "edge2": {}}, ("v1", "v2"))
    # Neither edge alone has the 50 canary requests the judge needs; the fleet has.
    tally.add(
        {
            "edge1": {"v1": snapshot([0.01] * 100), "v2": snapshot([0.01] * 30, errors=15)},
            "edge2": {"v1": snapshot([0.01] * 100), "v2": snapshot([0.01] * 30, errors=15)},
        }
    )
    why = tripped(tally, "v2", CFG)
    assert why is not None and "error rate 50.0%" in why, why
    judged = verdict(tally, "v1", "v2", 10, CFG)
    assert judged.verdict == "fail" and "error_rate" in judged.failed


def test_a_good_canary_passes_and_too_little_traffic_is_inconclusive() -> None:
    tally = FleetTally({"web1": {}}, ("v1", "v2"))
    tally.add({"web1": {"v1": snapshot([0.01] * 300), "v2": snapshot([0.01] * 100)}})
    assert verdict(tally, "v1", "v2", 25, CFG).verdict == "pass"
    short = FleetTally({"web1": {}}, ("v1", "v2"))
    short.add({"web1": {"v1": snapshot([0.01] * 300), "v2": snapshot([0.01] * 10)}})
    assert verdict(short, "v1", "v2", 25, CFG).verdict == "inconclusive"


def test_a_deploy_request_carries_every_analysis_limit_and_refuses_bad_ones() -> None:
    release = keys.DesiredRelease("shop", "v2", "d", "/srv/baton.yml", canary_weight=10)
    assert keys.DesiredRelease.from_json(release.to_json()) == release
    request = keys.DeployRequest(
        release, ("web1", "web2"), canary=((10, 30.0),), canary_max_latency_ratio=1.5,
        canary_confidence=0.99, canary_max_hold_extensions=1,
    )  # fmt: skip
    assert keys.DeployRequest.from_json(request.to_json()) == request
    cfg = analysis_of(request)
    assert (cfg.max_latency_ratio, cfg.confidence) == (1.5, 0.99)
    body = json.loads(request.to_json())
    for key, value in [
        ("canary_max_latency_ratio", 0),
        ("canary_confidence", 1),
        ("canary_max_error_rate_increase", -0.1),
        ("canary_max_hold_extensions", "2"),
    ]:
        with pytest.raises(ValueError, match=key):
            keys.DeployRequest.from_json(json.dumps({**body, key: value}))
    bad = {**json.loads(release.to_json()), "canary_weight": 101}
    with pytest.raises(ValueError, match="canary_weight"):
        keys.DesiredRelease.from_json(json.dumps(bad))
    progress = keys.Progress("shop", "v2", "d", "deploying", weight=30)
    assert keys.Progress.from_json(progress.to_json()) == progress


def test_a_driven_canarys_weight_must_be_a_whole_percentage() -> None:
    assert check_weight(0) == 0 and check_weight(100) == 100
    for bad in (-1, 101, 2.5, "50", True, None):
        with pytest.raises(UsageError, match="weight: expected a whole percentage"):
            check_weight(bad, "weight")


class Growing:
    """Figures of two publishers whose proxies answer ``per_read`` more requests of each
    release at every read (the canary ``slow`` or not): cumulative, as proxies count."""

    def __init__(self, per_read: int, slow: bool) -> None:
        self.per_read, self.slow, self.reads = per_read, slow, 0

    async def read(self) -> dict[str, dict[str, dict[str, Any]]]:
        self.reads += 1
        n = self.per_read * self.reads
        canary = [0.2] * n if self.slow else [0.005] * n
        return {p: {"v1": snapshot([0.005] * n), "v2": snapshot(canary)} for p in ("a", "b")}


async def test_a_step_slower_in_two_windows_in_a_row_is_aborted_by_the_latency_rule() -> None:
    figures = Growing(100, slow=True)
    passed, why = await judge_step(
        figures.read, {"a": {}, "b": {}}, stable="v1", version="v2", weight=30, hold=0.1,
        cfg=CFG, max_extensions=3,
    )  # fmt: skip
    assert not passed and why.startswith("slower in two windows in a row"), why


async def test_a_good_step_passes_and_a_starved_one_fails_safe_after_its_extensions() -> None:
    good = Growing(100, slow=False)
    passed, why = await judge_step(
        good.read, {}, stable="v1", version="v2", weight=30, hold=0.1, cfg=CFG,
        max_extensions=3,
    )  # fmt: skip
    assert passed, why
    starved = Growing(0, slow=False)
    passed, why = await judge_step(
        starved.read, {}, stable="v1", version="v2", weight=30, hold=0.1, cfg=CFG,
        max_extensions=2,
    )  # fmt: skip
    assert not passed and "still inconclusive after 2 extra hold(s)" in why, why
