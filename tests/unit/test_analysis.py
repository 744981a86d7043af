"""The one judge: canary rules, verification, the failed rules named, traffic windows across
proxy restarts, the guard — on synthetic samples and real proxy metrics snapshots.

Reference p-values were computed with SciPy 1.17 (``scipy.stats.mannwhitneyu(canary, baseline,
alternative="greater", method="asymptotic")`` on the bucket indexes, and ``norm.sf`` of the
pooled two-proportion z); SciPy is not needed to run these tests.
"""

from __future__ import annotations

import json
import math
import random
from bisect import bisect_left
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baton.deploy.analysis import (
    MIN_VERIFY_REQUESTS,
    AnalysisConfig,
    ReleaseWindow,
    Tally,
    guard,
    judge,
    mann_whitney_u,
    percentile,
    release_snapshot,
    summary,
    two_proportion_z,
    verify,
    window,
)
from baton.proxy.metrics import LATENCY_BOUNDS, MetricsRegistry

BUCKETS = len(LATENCY_BOUNDS) + 1


def latencies(seed: int, n: int, median: float = 0.010, spread: float = 0.5) -> list[float]:
    """Lognormal request latencies (seconds): a typical web app, noisy on purpose."""
    rng = random.Random(seed)
    return [rng.lognormvariate(math.log(median), spread) for _ in range(n)]


def release(
    seed: int, n: int = 1000, errors: int = 0, median: float = 0.010, spread: float = 0.5
) -> ReleaseWindow:
    return ReleaseWindow.from_samples(latencies(seed, n, median, spread), errors)


# -- the cases -------------------------------------------------------------------------


def test_canary_from_the_same_distribution_as_the_baseline_passes() -> None:
    verdict = judge(release(1), release(2))
    assert verdict.verdict == "pass", verdict.reasons
    assert verdict.figures["canary_requests"] == 1000


def test_canary_three_times_slower_fails_on_latency() -> None:
    verdict = judge(release(1), release(2, median=0.030))
    assert verdict.verdict == "fail"
    assert any(r.startswith("canary is slower") for r in verdict.reasons), verdict.reasons
    ratio = verdict.figures["latency_ratio_p95"]
    assert isinstance(ratio, float) and 2.5 < ratio < 3.5
    p = verdict.figures["latency_p_value"]
    assert isinstance(p, float) and p < 1e-6


def test_canary_with_ten_points_more_errors_fails() -> None:
    verdict = judge(release(1, errors=5), release(2, errors=105))  # 0.5% -> 10.5%
    assert verdict.verdict == "fail"
    assert any("above the 1.00% ceiling" in r for r in verdict.reasons), verdict.reasons
    assert any("increase is significant" in r for r in verdict.reasons), verdict.reasons


def test_error_increase_fails_on_its_own_even_under_a_loose_ceiling() -> None:
    cfg = AnalysisConfig(max_error_rate=0.5)
    verdict = judge(release(1, errors=50), release(2, errors=150), cfg)  # 5% -> 15%
    assert verdict.verdict == "fail"
    assert len(verdict.reasons) == 1 and "increase is significant" in verdict.reasons[0]


def test_too_few_canary_requests_is_inconclusive() -> None:
    verdict = judge(release(1), release(2, n=150))
    assert verdict.verdict == "inconclusive"
    assert "canary served 150 requests in the window; 200 are needed" in verdict.reasons[0]


def test_too_few_baseline_requests_is_inconclusive() -> None:
    verdict = judge(release(1, n=199), release(2))
    assert verdict.verdict == "inconclusive"
    assert verdict.reasons[0].startswith("baseline served 199 requests")


def test_canary_over_the_ceiling_fails_without_waiting_for_baseline_traffic() -> None:
    verdict = judge(release(1, n=50), release(2, n=300, errors=90))
    assert verdict.verdict == "fail"
    assert verdict.reasons == ["canary error rate 30.00% (90 of 300) is above the 1.00% ceiling"]


def test_zero_errors_on_both_sides_passes() -> None:
    verdict = judge(release(1), release(2))
    assert verdict.verdict == "pass"
    assert verdict.figures["error_p_value"] == 1.0
    assert verdict.figures["error_z"] == 0.0
    assert verdict.figures["canary_error_rate"] == 0.0


def test_slightly_more_errors_without_significance_passes() -> None:
    # 0.30% -> 0.91%: over the +0.5% limit, under the 1% ceiling, but p = 0.10 on 220 requests.
    verdict = judge(release(1, errors=3), release(2, n=220, errors=2))
    assert verdict.verdict == "pass", verdict.reasons
    assert any("increase is not significant" in r for r in verdict.reasons)
    assert verdict.figures["error_p_value"] == pytest.approx(0.10022579010416037, rel=1e-9)


def test_significant_but_small_error_increase_passes() -> None:
    # 0.1% -> 0.4% over 100k requests each: p ~ 1e-41, but +0.3% is within the +0.5% limit.
    verdict = judge(release(1, n=100_000, errors=100), release(2, n=100_000, errors=400))
    assert verdict.verdict == "pass", verdict.reasons
    p = verdict.figures["error_p_value"]
    assert isinstance(p, float) and p < 1e-30


def test_significant_but_small_slowdown_passes() -> None:
    # 10% slower over 5000 requests each: the U test is sure, but p95 moves ~5% (< 1.25x).
    verdict = judge(release(1, n=5000), release(2, n=5000, median=0.011))
    assert verdict.verdict == "pass", verdict.reasons
    p = verdict.figures["latency_p_value"]
    assert isinstance(p, float) and p < 0.05
    assert any("significant but small" in r for r in verdict.reasons)


def test_slow_tail_alone_with_a_faster_bulk_passes() -> None:
    # Both conditions are needed: p95 is 4x worse, but most canary requests are faster, so
    # the U test (which compares whole distributions) does not say "slower".
    base = ReleaseWindow.from_samples([0.010] * 300)
    canary = ReleaseWindow.from_samples([0.005] * 280 + [0.05] * 20)
    verdict = judge(base, canary)
    ratio = verdict.figures["latency_ratio_p95"]
    assert isinstance(ratio, float) and ratio > 4
    assert verdict.verdict == "pass", verdict.reasons
    assert any("ratio is not significant" in r for r in verdict.reasons)


def test_a_slow_tenth_of_requests_fails() -> None:
    base = ReleaseWindow.from_samples([0.010] * 300)
    canary = ReleaseWindow.from_samples([0.010] * 270 + [0.5] * 30)
    assert judge(base, canary).verdict == "fail"


def test_faster_canary_passes() -> None:
    verdict = judge(release(1, median=0.030), release(2, median=0.010))
    assert verdict.verdict == "pass"
    p = verdict.figures["latency_p_value"]
    assert isinstance(p, float) and p > 0.99


def test_a_good_release_is_not_aborted_over_many_steps() -> None:
    verdicts = [
        judge(release(seed, n=1000), release(seed + 10_000, n=1000)).verdict for seed in range(100)
    ]
    assert verdicts.count("fail") == 0


def test_false_aborts_of_a_good_release_stay_under_one_minus_confidence() -> None:
    # At the smallest window and very noisy latency (p95 ~ 5x the median) each test alone
    # errs 5% of the time; requiring the ratio too keeps false aborts well under that
    # (measured: ~1.8% of steps at n=200, sigma=1; ~0.1% at sigma=0.5).
    verdicts = [
        judge(release(seed, n=200, spread=1.0), release(seed + 10_000, n=200, spread=1.0))
        for seed in range(400)
    ]
    assert [v.verdict for v in verdicts].count("fail") / len(verdicts) < 0.05


def test_a_three_times_slower_release_is_caught_at_the_smallest_window() -> None:
    verdicts = [
        judge(
            release(seed, n=200, spread=1.0),
            release(seed + 10_000, n=200, spread=1.0, median=0.030),
        ).verdict
        for seed in range(100)
    ]
    assert verdicts.count("fail") == len(verdicts)


def test_no_traffic_at_all_with_no_minimum_passes_without_dividing_by_zero() -> None:
    empty = ReleaseWindow(0, 0)
    verdict = judge(empty, empty, AnalysisConfig(min_requests=0))
    assert verdict.verdict == "pass"
    assert "latency not compared" in verdict.reasons[-1]
    assert verdict.figures["latency_ratio_p95"] is None
    assert verdict.figures["canary_error_rate"] is None


def test_a_verdict_names_the_rules_that_failed() -> None:
    cfg = AnalysisConfig(min_requests=100)
    assert judge(release(1), release(2, errors=150), cfg).failed == ("error_rate", "error_increase")
    assert judge(release(1), release(2, median=0.030), cfg).failed == ("latency",)
    loose = AnalysisConfig(min_requests=100, max_error_rate=1.0)
    assert judge(release(1), release(2, errors=150), loose).failed == ("error_increase",)
    # Over the ceiling with too little baseline traffic to compare: the ceiling alone.
    assert judge(release(1, n=10), release(2, errors=150), cfg).failed == ("error_rate",)


def test_a_verdict_that_did_not_fail_names_no_rule() -> None:
    assert judge(release(1), release(2)).failed == ()
    assert judge(release(1), release(2, n=50, errors=50)).verdict == "inconclusive"
    assert judge(release(1), release(2, n=50, errors=50)).failed == ()


def test_verdict_reasons_carry_the_figures() -> None:
    verdict = judge(release(1, errors=5), release(2, errors=105))
    text = " ".join(verdict.reasons)
    assert "10.50% (105 of 1000)" in text and "baseline 0.50%" in text and "p=" in text


def test_verdict_is_json_for_the_history() -> None:
    verdict = judge(release(1), release(2, median=0.030))
    data = json.loads(json.dumps(verdict.to_json(), allow_nan=False))
    assert data["verdict"] == "fail"
    assert data["failed"] == ["latency"]
    assert set(data["figures"]) >= {
        "baseline_error_rate",
        "canary_error_rate",
        "baseline_p50",
        "baseline_p95",
        "baseline_p99",
        "canary_p50",
        "canary_p95",
        "canary_p99",
        "latency_ratio_p95",
        "error_p_value",
        "latency_p_value",
        "latency_u",
    }


def test_judge_refuses_histograms_with_different_bounds() -> None:
    other = ReleaseWindow.from_samples([0.1] * 300, bounds=(0.1, 1.0))
    with pytest.raises(ValueError, match="different bounds"):
        judge(release(1), other)


# -- the guard ---------------------------------------------------------------------------------


def test_guard_trips_above_the_ceiling_with_twenty_requests() -> None:
    assert guard(ReleaseWindow(20, 1), max_error_rate=0.01)  # 5% > 1%
    assert guard(ReleaseWindow(400, 5), max_error_rate=0.01)  # 1.25% > 1%


def test_guard_holds_below_twenty_requests_even_if_all_fail() -> None:
    assert not guard(ReleaseWindow(19, 19), max_error_rate=0.01)
    assert not guard(ReleaseWindow(0, 0), max_error_rate=0.0, min_requests=0)


def test_guard_holds_at_or_under_the_ceiling() -> None:
    assert not guard(ReleaseWindow(100, 1), max_error_rate=0.01)  # exactly 1%: not above
    assert not guard(ReleaseWindow(1000, 0), max_error_rate=0.0)
    assert not guard(ReleaseWindow(20, 0), max_error_rate=0.01)


def test_guard_minimum_is_configurable() -> None:
    assert guard(ReleaseWindow(5, 5), max_error_rate=0.01, min_requests=5)


# -- percentiles and summary -------------------------------------------------------------------


def test_percentile_interpolates_linearly_inside_the_bucket() -> None:
    w = ReleaseWindow(20, 0, counts=(10, 10, 0, 0), bounds=(0.1, 0.2, 0.4))
    assert percentile(w, 0.50) == pytest.approx(0.1)  # rank 10: the top of the first bucket
    assert percentile(w, 0.75) == pytest.approx(0.15)  # rank 15: halfway through (0.1, 0.2]
    assert percentile(w, 0.25) == pytest.approx(0.05)  # the first bucket starts at 0
    assert percentile(w, 1.0) == pytest.approx(0.2)
    assert percentile(w, 0.0) == 0.0


def test_percentile_skips_empty_buckets() -> None:
    w = ReleaseWindow(4, 0, counts=(0, 2, 0, 2), bounds=(0.1, 0.2, 0.4))
    assert percentile(w, 0.0) == pytest.approx(0.1)  # the bottom of the first non-empty bucket
    assert percentile(w, 0.5) == pytest.approx(0.2)
    assert percentile(w, 0.95) == pytest.approx(0.4)  # +Inf: the last finite bound


def test_percentile_of_nothing_is_zero_and_q_is_a_fraction() -> None:
    assert percentile(ReleaseWindow(0, 0), 0.95) == 0.0
    with pytest.raises(ValueError, match="between 0 and 1"):
        percentile(release(1), 95)


def test_percentile_estimates_land_in_the_bucket_of_the_true_value() -> None:
    samples = latencies(7, 2000)
    w = ReleaseWindow.from_samples(samples)
    ordered = sorted(samples)
    for q in (0.5, 0.9, 0.95, 0.99):
        true = ordered[math.ceil(q * len(ordered)) - 1]
        i = bisect_left(LATENCY_BOUNDS, true)
        lower = LATENCY_BOUNDS[i - 1] if i else 0.0
        assert lower <= percentile(w, q) <= LATENCY_BOUNDS[i] + 1e-12


def test_summary_gives_rate_error_rate_and_percentiles() -> None:
    w = ReleaseWindow.from_samples([0.002] * 90 + [0.02] * 10, errors=3, seconds=10.0)
    s = summary(w)
    assert s["requests"] == 100 and s["errors"] == 3
    assert s["rate"] == pytest.approx(10.0)
    assert s["error_rate"] == pytest.approx(0.03)
    assert s["p50"] == pytest.approx(
        0.001 + (0.0025 - 0.001) * 50 / 90
    )  # rank 50 of 90 in (1, 2.5] ms
    p99 = s["p99"]
    assert isinstance(p99, float) and 0.015 < p99 <= 0.025


def test_summary_without_duration_or_traffic_leaves_figures_empty() -> None:
    assert summary(ReleaseWindow(0, 0)) == {
        "requests": 0,
        "errors": 0,
        "rate": None,
        "error_rate": None,
        "p50": None,
        "p95": None,
        "p99": None,
    }


# -- windows from /metrics.json ----------------------------------------------------------------


def snapshot(reg: MetricsRegistry) -> dict[str, object]:
    return json.loads(json.dumps(reg.to_json()))  # type: ignore[no-any-return]


def test_window_is_the_difference_between_two_snapshots() -> None:
    reg = MetricsRegistry()
    m = reg.get("shop", "v2")
    m.record(200, 0.003, 0.004)
    m.record(500, 0.3, 0.3)
    before = release_snapshot(snapshot(reg), "shop", "v2")
    for _ in range(8):
        m.record(200, 0.003, 0.2)
    m.record(502, 0.009, 0.009)  # Baton's own 502: counted once, in 5xx
    m.upstream_errors += 1
    m.record(404, 0.001, 0.001)
    after = release_snapshot(snapshot(reg), "shop", "v2")
    w = window(before, after, seconds=5.0)
    assert (w.requests, w.errors, w.seconds) == (10, 1, 5.0)
    assert w.observations == 10
    assert w.counts[bisect_left(LATENCY_BOUNDS, 0.003)] == 8
    assert w.counts[bisect_left(LATENCY_BOUNDS, 0.3)] == 0
    total = window(before, after, histogram="total")
    assert total.counts[bisect_left(LATENCY_BOUNDS, 0.2)] == 8


def test_window_without_before_counts_since_the_proxy_started() -> None:
    reg = MetricsRegistry()
    reg.get("shop", "v1").record(200, 0.01, 0.01)
    w = window(None, release_snapshot(snapshot(reg), "shop", "v1"))
    assert (w.requests, w.errors, w.observations) == (1, 0, 1)


def test_window_after_a_proxy_restart_counts_since_the_restart() -> None:
    old, new = MetricsRegistry(), MetricsRegistry()
    for _ in range(50):
        old.get("shop", "v2").record(200, 0.01, 0.01)
    for _ in range(3):
        new.get("shop", "v2").record(503, 0.01, 0.01)
    w = window(
        release_snapshot(snapshot(old), "shop", "v2"),
        release_snapshot(snapshot(new), "shop", "v2"),
    )
    assert (w.requests, w.errors, w.observations) == (3, 3, 3)


# -- a tally of snapshots, across proxy restarts ---------------------------------------------------


def served(reg: MetricsRegistry, ok: int = 0, failed: int = 0) -> dict[str, object]:
    """The release ``shop/v2`` serves ``ok`` 200s and ``failed`` 503s; its snapshot after."""
    m = reg.get("shop", "v2")
    for _ in range(ok):
        m.record(200, 0.01, 0.01)
    for _ in range(failed):
        m.record(503, 0.01, 0.01)
    return dict(release_snapshot(snapshot(reg), "shop", "v2"))


def test_a_tally_without_restart_is_the_window_between_first_and_last() -> None:
    reg = MetricsRegistry()
    tally = Tally.start(served(reg, ok=500))
    for _ in range(3):
        tally = tally.add(served(reg, ok=10, failed=1))
    w = tally.window(seconds=2.0)
    assert (w.requests, w.errors, w.observations, w.seconds) == (33, 3, 33, 2.0)
    assert tally.restarts == 0


def test_a_tally_sums_the_traffic_before_and_after_a_proxy_restart() -> None:
    before, after = MetricsRegistry(), MetricsRegistry()
    tally = Tally.start(served(before, ok=500))
    tally = tally.add(served(before, ok=40, failed=20))
    tally = tally.add(served(after, ok=5))  # the proxy restarted: its counters start at 0
    tally = tally.add(served(after, ok=30, failed=5))
    w = tally.window()
    assert (w.requests, w.errors, w.observations) == (100, 25, 100)
    assert tally.restarts == 1


def test_a_tally_of_a_release_first_seen_after_the_start_counts_all_it_served() -> None:
    reg = MetricsRegistry()
    tally = Tally.start(release_snapshot(snapshot(reg), "shop", "v2"))
    tally = tally.add(served(reg, ok=7, failed=1))
    assert (tally.window().requests, tally.window().errors) == (8, 1)


def test_a_tally_refuses_a_snapshot_of_the_wrong_shape() -> None:
    tally = Tally.start(None)
    with pytest.raises(ValueError, match=r"not a /metrics\.json release snapshot"):
        tally.add({"requests": {"2xx": "many"}})


# -- verification ----------------------------------------------------------------------------------


def test_verification_fails_above_the_error_ceiling_naming_the_rule() -> None:
    verdict = verify(ReleaseWindow(100, 30), 0.05)
    assert verdict.verdict == "fail" and verdict.failing
    assert verdict.failed == ("error_rate",)
    assert (verdict.figures["requests"], verdict.figures["errors"]) == (100, 30)
    assert verdict.figures["error_rate"] == 0.3
    assert "30 of 100 requests failed (30.0%; the limit is 5.0%)" in verdict.reasons
    exactly = verify(ReleaseWindow(100, 5), 0.05)  # exactly at the limit passes
    assert exactly.verdict == "pass" and exactly.failed == ()


def test_verification_does_not_judge_a_handful_of_requests() -> None:
    few = MIN_VERIFY_REQUESTS - 1
    short = verify(ReleaseWindow(few, few), 0.05)
    assert short.verdict == "inconclusive" and not short.failing and short.failed == ()
    assert verify(ReleaseWindow(MIN_VERIFY_REQUESTS, MIN_VERIFY_REQUESTS), 0.05).failing
    assert verify(ReleaseWindow(0, 0), 0.05).figures["error_rate"] == 0.0


def test_verification_is_the_canary_ceiling_rule() -> None:
    # The same window, the same ceiling, the same minimum: the same call on the ceiling.
    for w in (ReleaseWindow(100, 30), ReleaseWindow(100, 5), ReleaseWindow(10, 10)):
        cfg = AnalysisConfig(min_requests=20, max_error_rate=0.05)
        canary = judge(w, w, cfg)
        assert ("error_rate" in canary.failed) == verify(w, 0.05, 20).failing


def test_a_proxy_restart_during_verification_does_not_pass_a_failing_release() -> None:
    # A rolling deploy's second batch: the release already served 500 good requests.
    before, after = MetricsRegistry(), MetricsRegistry()
    start = served(before, ok=500)
    tally = Tally.start(start).add(served(before, ok=40, failed=20))
    tally = tally.add(served(after))  # restarted, nothing served since
    tally = tally.add(served(after, ok=30, failed=10))
    assert verify(tally.window(), 0.05).failed == ("error_rate",)
    # Diffing the last snapshot against the first would have seen only the 40 since the
    # restart, or (counters lower than at the start) nothing at all.
    assert window(start, served(after)).requests < 100


def test_a_proxy_restart_during_verification_does_not_fail_a_good_release() -> None:
    before, after = MetricsRegistry(), MetricsRegistry()
    start = served(before, ok=1000)
    tally = Tally.start(start).add(served(before, ok=200, failed=1))
    tally = tally.add(served(after, ok=10))  # restarted
    last = served(after, ok=1010, failed=24)  # past the start's counters again: 24 of 1044
    tally = tally.add(last)
    assert verify(tally.window(), 0.05).verdict == "pass"
    assert (tally.window().requests, tally.window().errors) == (1245, 25)
    # First against last, blind to the restart: 44 requests, 24 errors, a wrong fail.
    assert verify(window(start, last), 0.05).failing


def test_a_restart_is_seen_when_one_status_class_went_down_and_the_totals_did_not() -> None:
    old, new = MetricsRegistry(), MetricsRegistry()
    before = served(old, ok=100)
    served(new, ok=20)
    after = served(new, failed=90)  # 110 requests, 90 errors: more than before in total
    w = window(before, after)
    assert (w.requests, w.errors) == (110, 90)  # since the restart, never 10 with 90 errors
    assert Tally.start(before).add(after).restarts == 1


def test_window_of_a_release_the_proxy_has_not_seen_is_empty() -> None:
    reg = MetricsRegistry()
    assert release_snapshot(snapshot(reg), "shop", "v9") == {}
    w = window(None, release_snapshot(snapshot(reg), "shop", "v9"))
    assert (w.requests, w.errors, w.observations) == (0, 0, 0)
    assert w.bounds == LATENCY_BOUNDS


def test_window_rejects_a_snapshot_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match="has 1 buckets, expected 25"):
        window(
            None, {"requests": {"2xx": 1}, "ttfb": {"bounds": list(LATENCY_BOUNDS), "counts": [1]}}
        )
    with pytest.raises(ValueError, match=r"not a /metrics\.json release snapshot"):
        window(None, {"requests": {"2xx": "many"}})


def test_release_window_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match="errors must be between 0 and requests"):
        ReleaseWindow(3, 4)
    with pytest.raises(ValueError, match="buckets"):
        ReleaseWindow(1, 0, counts=(1,))
    with pytest.raises(ValueError, match="negative"):
        ReleaseWindow(1, 0, counts=(-1,) + (0,) * (BUCKETS - 1))
    with pytest.raises(ValueError, match="increasing"):
        ReleaseWindow(0, 0, bounds=(0.2, 0.1))


def test_analysis_config_rejects_nonsense() -> None:
    assert AnalysisConfig() == AnalysisConfig(200, 0.01, 0.005, 1.25, 0.95)
    with pytest.raises(ValueError, match="max_error_rate must be between 0 and 1"):
        AnalysisConfig(max_error_rate=1.5)
    with pytest.raises(ValueError, match="confidence"):
        AnalysisConfig(confidence=1.0)
    with pytest.raises(ValueError, match="min_requests"):
        AnalysisConfig(min_requests=-1)
    with pytest.raises(ValueError, match="max_latency_ratio"):
        AnalysisConfig(max_latency_ratio=0)


# -- the statistics against known values -------------------------------------------------------


def test_u_statistic_by_hand() -> None:
    # U = sum_k b_k (A_k + a_k / 2) = 1*1.5 + 2*(3 + 2.5) + 4*(8 + 1) + 3*10 = 78.5
    assert mann_whitney_u([3, 5, 2, 0], [1, 2, 4, 3]).u == 78.5


@pytest.mark.parametrize(
    ("baseline", "canary", "u", "p_value"),
    [
        ([3, 5, 2, 0], [1, 2, 4, 3], 78.5, 0.013711343466284706),
        ([10, 0, 0], [0, 0, 10], 100.0, 7.968955844033122e-06),
        ([50, 30, 15, 5], [45, 35, 15, 5], 5200.0, 0.2990393204721951),
        ([5, 5], [5, 5], 50.0, 0.5173839857427006),
        ([100, 200, 50, 10, 0, 1], [80, 190, 70, 20, 5, 2], 74371.0, 0.0008140402069050525),
    ],
)
def test_u_test_matches_scipy_tie_corrected_asymptotic(
    baseline: list[int], canary: list[int], u: float, p_value: float
) -> None:
    result = mann_whitney_u(baseline, canary)
    assert result.u == u
    assert result.p_value == pytest.approx(p_value, rel=1e-9)


@pytest.mark.parametrize(
    ("e1", "n1", "e2", "n2", "z", "p_value"),
    [
        (1, 1000, 2, 220, 2.193727405418601, 0.014127506204775415),
        (0, 200, 3, 200, 1.7385827633992337, 0.04105409028690367),
        (10, 1000, 30, 1000, 3.1943828249996993, 0.0007006507904801069),
        (5, 500, 5, 500, 0.0, 0.5),
    ],
)
def test_two_proportion_z_matches_known_values(
    e1: int, n1: int, e2: int, n2: int, z: float, p_value: float
) -> None:
    result = two_proportion_z(e1, n1, e2, n2)
    assert result.z == pytest.approx(z, rel=1e-12)
    assert result.p_value == pytest.approx(p_value, rel=1e-9)


def test_two_proportion_z_without_variance_is_no_evidence() -> None:
    assert two_proportion_z(0, 100, 0, 100).p_value == 1.0
    assert two_proportion_z(100, 100, 50, 50).p_value == 1.0
    assert two_proportion_z(0, 0, 5, 10).p_value == 1.0
    with pytest.raises(ValueError):
        two_proportion_z(5, 4, 0, 10)


def test_u_test_with_one_bucket_or_an_empty_side_is_no_evidence() -> None:
    assert mann_whitney_u([0, 7, 0], [0, 9, 0]).p_value == 1.0
    assert mann_whitney_u([0, 0, 0], [1, 2, 3]).p_value == 1.0
    with pytest.raises(ValueError, match="buckets"):
        mann_whitney_u([1, 2], [1, 2, 3])


def test_u_test_agrees_with_scipy_when_it_is_installed() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(3)
    for _ in range(20):
        a = [rng.randrange(0, 40) for _ in range(8)]
        b = [rng.randrange(0, 40) for _ in range(8)]
        xs = [i for i, n in enumerate(b) for _ in range(n)]
        ys = [i for i, n in enumerate(a) for _ in range(n)]
        ref = stats.mannwhitneyu(xs, ys, alternative="greater", method="asymptotic")
        assert mann_whitney_u(a, b).p_value == pytest.approx(float(ref.pvalue), rel=1e-9)


# -- properties --------------------------------------------------------------------------------


def ranked_u_test(baseline: Sequence[int], canary: Sequence[int]) -> tuple[float, float]:
    """The textbook computation, from expanded samples and mid-ranks: (U, p-value)."""
    pooled = sorted(
        [(i, 0) for i, n in enumerate(baseline) for _ in range(n)]
        + [(i, 1) for i, n in enumerate(canary) for _ in range(n)]
    )
    ranks: list[float] = []
    ties = 0
    start = 0
    while start < len(pooled):
        end = start
        while end < len(pooled) and pooled[end][0] == pooled[start][0]:
            end += 1
        ranks += [(start + 1 + end) / 2] * (end - start)
        ties += (end - start) ** 3 - (end - start)
        start = end
    n1, n2 = sum(baseline), sum(canary)
    n = n1 + n2
    r = sum(rank for rank, (_, side) in zip(ranks, pooled, strict=True) if side == 1)
    u = r - n2 * (n2 + 1) / 2
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    z = (u - n1 * n2 / 2 - 0.5) / math.sqrt(var)
    return u, 0.5 * math.erfc(z / math.sqrt(2))


small_histogram = st.lists(st.integers(0, 12), min_size=6, max_size=6)


@given(small_histogram, small_histogram)
def test_binned_u_test_equals_the_rank_computation(a: list[int], b: list[int]) -> None:
    result = mann_whitney_u(a, b)
    if sum(a) == 0 or sum(b) == 0 or sum(1 for x, y in zip(a, b, strict=True) if x + y) < 2:
        assert result.p_value == 1.0
        return
    u, p = ranked_u_test(a, b)
    assert result.u == u
    assert result.p_value == pytest.approx(p, rel=1e-9, abs=1e-15)


@given(small_histogram, small_histogram)
def test_u_of_both_directions_adds_up_to_all_pairs(a: list[int], b: list[int]) -> None:
    assert mann_whitney_u(a, b).u + mann_whitney_u(b, a).u == sum(a) * sum(b)


@st.composite
def windows(draw: st.DrawFn) -> ReleaseWindow:
    counts = draw(st.lists(st.integers(0, 10**7), min_size=BUCKETS, max_size=BUCKETS))
    requests = sum(counts)
    errors = draw(st.integers(0, requests))
    return ReleaseWindow(requests, errors, tuple(counts))


configs = st.builds(
    AnalysisConfig,
    min_requests=st.integers(0, 1000),
    max_error_rate=st.floats(0, 1),
    max_error_rate_increase=st.floats(0, 1),
    max_latency_ratio=st.floats(0.01, 100),
    confidence=st.floats(0.5, 0.999),
)


@settings(max_examples=300)
@given(windows(), windows(), configs)
def test_judge_never_raises_and_its_figures_are_json(
    baseline: ReleaseWindow, canary: ReleaseWindow, cfg: AnalysisConfig
) -> None:
    verdict = judge(baseline, canary, cfg)
    assert verdict.verdict in ("pass", "fail", "inconclusive")
    assert verdict.reasons
    assert bool(verdict.failed) == (verdict.verdict == "fail")
    assert len(set(verdict.failed)) == len(verdict.failed)
    json.dumps(verdict.to_json(), allow_nan=False)
    for key in ("error_p_value", "latency_p_value"):
        p = verdict.figures[key]
        assert isinstance(p, float) and 0.0 <= p <= 1.0


@given(windows(), configs)
def test_a_release_judged_against_itself_fails_only_on_the_ceiling(
    w: ReleaseWindow, cfg: AnalysisConfig
) -> None:
    verdict = judge(w, w, cfg)
    over_ceiling = w.requests >= cfg.min_requests and w.error_rate > cfg.max_error_rate
    assert (verdict.verdict == "fail") == over_ceiling


@given(windows(), windows())
def test_no_comparison_fails_both_ways(a: ReleaseWindow, b: ReleaseWindow) -> None:
    # "b errs more than a" and "a errs more than b" cannot both hold; nor "slower" both ways.
    cfg = AnalysisConfig(max_error_rate=1.0, min_requests=0)  # comparisons only
    forward, backward = judge(a, b, cfg).reasons, judge(b, a, cfg).reasons
    for rule in ("error rate increase is significant", "canary is slower"):
        assert not (
            any(r.startswith(rule) for r in forward) and any(r.startswith(rule) for r in backward)
        )


@given(windows())
def test_swapping_identical_windows_gives_the_same_verdict(a: ReleaseWindow) -> None:
    copy = ReleaseWindow(a.requests, a.errors, a.counts, a.bounds)
    assert judge(a, copy) == judge(copy, a)


@given(windows(), st.lists(st.floats(0, 1), min_size=2, max_size=8))
def test_percentile_grows_with_q_and_stays_within_the_bounds(
    w: ReleaseWindow, qs: list[float]
) -> None:
    values = [percentile(w, q) for q in sorted(qs)]
    assert values == sorted(values)
    assert all(0.0 <= v <= LATENCY_BOUNDS[-1] for v in values)
