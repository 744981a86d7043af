"""Per-release metrics: counting, histograms, and both renderings."""

from __future__ import annotations

from bisect import bisect_left

from baton.proxy.metrics import LATENCY_BOUNDS, MetricsRegistry, bucket


def test_record_counts_status_classes_and_latency_buckets() -> None:
    reg = MetricsRegistry()
    m = reg.get("shop", "v2")
    m.record(200, 0.0004, 0.0009)
    m.record(201, 0.003, 0.004)
    m.record(503, 2.0, 2.0)
    m.record(404, 100.0, 100.0)  # beyond the last bound: +Inf bucket
    data = reg.to_json()["apps"]["shop"]["releases"]["v2"]
    assert data["requests"] == {"1xx": 0, "2xx": 2, "3xx": 0, "4xx": 1, "5xx": 1}
    ttfb = data["ttfb"]
    assert ttfb["count"] == 4 and sum(ttfb["counts"]) == 4
    assert ttfb["counts"][0] == 1  # 0.4 ms <= 0.5 ms
    assert ttfb["counts"][-1] == 1
    assert len(ttfb["counts"]) == len(LATENCY_BOUNDS) + 1


def test_registry_keeps_one_object_per_release_across_lookups() -> None:
    reg = MetricsRegistry()
    assert reg.get("a", "v1") is reg.get("a", "v1")
    reg.get("a", "v1").in_flight = 1
    reg.get("a", "v0")
    reg.forget(keep=set())
    assert "v1" in reg.to_json()["apps"]["a"]["releases"]  # busy: kept
    assert "v0" not in reg.to_json()["apps"]["a"]["releases"]


def test_prometheus_text_has_cumulative_buckets() -> None:
    reg = MetricsRegistry()
    m = reg.get("shop", 'v"1')
    for seconds in (0.001, 0.001, 0.2):
        m.record(200, seconds, seconds)
    text = reg.to_prometheus()
    assert "# TYPE baton_requests_total counter" in text
    assert 'baton_requests_total{app="shop",release="v\\"1",class="2xx"} 3' in text
    assert 'baton_upstream_ttfb_seconds_bucket{app="shop",release="v\\"1",le="0.001"} 2' in text
    assert 'baton_upstream_ttfb_seconds_bucket{app="shop",release="v\\"1",le="+Inf"} 3' in text
    assert 'baton_request_duration_seconds_count{app="shop",release="v\\"1"} 3' in text


def test_latency_bucket_is_the_first_bound_at_or_above() -> None:
    samples = [0.0, -1.0, 1e9, *LATENCY_BOUNDS, *(b * 1.0001 for b in LATENCY_BOUNDS)]
    for seconds in samples:
        assert bucket(seconds) == bisect_left(LATENCY_BOUNDS, seconds), seconds
