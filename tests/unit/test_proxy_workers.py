"""The sums that make several proxy workers look like one proxy (``proxy/workers.py``)."""

from __future__ import annotations

import os

import pytest

from baton.proxy.workers import (
    counters_only,
    parse_workers,
    prometheus_counters,
    routed_only,
    share,
    share_of,
    sum_metrics,
    sum_prometheus,
    sum_targets,
    wanted_workers,
    zero_tripped,
)


def release(n2xx: int, in_flight: int, counts: list[int]) -> dict[str, object]:
    return {
        "requests": {"2xx": n2xx, "5xx": 1},
        "in_flight": in_flight,
        "tunnels": 0,
        "fuse": {"tripped": False, "errors": 0, "requests": 3},
        "ttfb": {"bounds": [0.1, 1.0], "counts": counts, "sum": 0.5, "count": sum(counts)},
    }


def snapshot(n2xx: int, in_flight: int, counts: list[int]) -> dict[str, object]:
    return {
        "apps": {
            "web": {
                "releases": {"v1": release(n2xx, in_flight, counts)},
                "queue": {"queued": in_flight, "queue_timeouts": 2},
            }
        }
    }


def test_worker_counts_and_auto() -> None:
    assert parse_workers("3") == 3 and parse_workers(2) == 2
    assert parse_workers("auto") == len(os.sched_getaffinity(0))
    for bad in ("0", "-1", "x", "1.5", 0, True, 1000):
        with pytest.raises(ValueError, match="--workers: expected an integer from 1 to 256"):
            parse_workers(bad, "--workers")


def test_idle_pools_are_divided_among_workers() -> None:
    assert share(256, 2) == 128 and share(1, 4) == 1 and share(0, 4) == 0


def test_live_workers_and_dead_ones_counters_add_up_but_dead_gauges_do_not() -> None:
    dead = counters_only(snapshot(10, 5, [1, 2, 3]))
    total = sum_metrics([snapshot(7, 1, [1, 0, 0]), snapshot(3, 2, [0, 1, 0])], dead)
    v1 = total["apps"]["web"]["releases"]["v1"]
    assert v1["requests"] == {"2xx": 20, "5xx": 3}
    assert v1["in_flight"] == 3  # live workers only
    assert v1["ttfb"]["counts"] == [2, 3, 3] and v1["ttfb"]["bounds"] == [0.1, 1.0]
    assert v1["ttfb"]["count"] == 8
    assert v1["fuse"]["requests"] == 6  # a window: live workers only
    assert total["apps"]["web"]["queue"] == {"queued": 3, "queue_timeouts": 6}


def test_a_release_that_left_the_table_leaves_the_retired_counters() -> None:
    dead = counters_only(snapshot(10, 5, [1, 2, 3]))
    assert routed_only(dead, {("web", "v1")}) == dead
    assert routed_only(dead, {("web", "v2")}) == {
        "apps": {"web": {**dead["apps"]["web"], "releases": {}}}
    }


TEXT = """# HELP baton_requests_total Requests.
# TYPE baton_requests_total counter
baton_requests_total{app="web",release="v1",class="2xx"} 4
# TYPE baton_in_flight gauge
baton_in_flight{app="web",release="v1"} 2
# TYPE baton_upstream_ttfb_seconds histogram
baton_upstream_ttfb_seconds_bucket{app="web",release="v1",le="+Inf"} 4
baton_upstream_ttfb_seconds_sum{app="web",release="v1"} 0.250000
baton_upstream_ttfb_seconds_count{app="web",release="v1"} 4
"""


def test_prometheus_text_is_summed_and_dead_workers_keep_only_counters() -> None:
    dead = prometheus_counters(TEXT)
    assert 'baton_in_flight{app="web",release="v1"}' not in dead
    out = sum_prometheus([TEXT, TEXT], dead)
    assert out.count("# TYPE baton_requests_total counter") == 1
    assert 'baton_requests_total{app="web",release="v1",class="2xx"} 12' in out
    assert 'baton_in_flight{app="web",release="v1"} 4' in out
    assert 'baton_upstream_ttfb_seconds_count{app="web",release="v1"} 12' in out
    assert 'baton_upstream_ttfb_seconds_sum{app="web",release="v1"} 0.75' in out
    # Each sample sits under its own family's TYPE line.
    lines = out.splitlines()
    assert lines.index("# TYPE baton_in_flight gauge") < lines.index(
        'baton_in_flight{app="web",release="v1"} 4'
    )


def test_targets_sum_work_and_are_healthy_only_where_every_worker_agrees() -> None:
    a = {"t:1": {"in_flight": 2, "tunnels": 1, "healthy": True, "draining": False}}
    b = {"t:1": {"in_flight": 1, "tunnels": 0, "healthy": False, "draining": True}}
    assert sum_targets([a, b]) == {
        "t:1": {"in_flight": 3, "tunnels": 1, "healthy": False, "draining": True}
    }


def test_the_host_runs_the_largest_worker_count_among_its_apps() -> None:
    assert wanted_workers([]) == 1
    assert wanted_workers([None, {"proxy": {}}, {"proxy": {"workers": 3}}, {}]) == 3
    assert wanted_workers([{"proxy": {"workers": "auto"}}]) == len(os.sched_getaffinity(0))
    assert wanted_workers([{"proxy": {"workers": "bogus"}}]) == 1  # an old or odd record


def canary_apps(weight: int, deployment: str = "41") -> dict[str, object]:
    return {
        "web": {
            "releases": [
                {"name": "v1", "weight": 100 - weight, "targets": ["a:1"]},
                {
                    "name": "v2",
                    "weight": weight,
                    "targets": ["a:2"],
                    "fuse": {"max_error_rate": 0.01, "deployment": deployment},
                },
            ]
        }
    }


def test_a_trip_seen_by_any_worker_keeps_that_canary_at_weight_zero() -> None:
    tripped = {("web", "v2", "41")}
    out = zero_tripped(canary_apps(75), tripped)
    assert out is not None
    assert [r["weight"] for r in out["web"]["releases"]] == [100, 0]
    assert zero_tripped(canary_apps(0), tripped) is None  # already out
    assert zero_tripped(canary_apps(75, deployment="42"), tripped) is None  # a new deployment


@pytest.mark.parametrize(("sockets", "workers"), [(3, 2), (2, 1), (4, 2), (2, 2), (5, 3), (1, 1)])
def test_every_socket_of_a_group_is_served_by_exactly_one_worker(
    sockets: int, workers: int
) -> None:
    served = [i for w in range(workers) for i in share_of(sockets, workers, w)]
    assert sorted(served) == list(range(sockets))
    # Round-robin: no worker has more than one socket more than another.
    sizes = [len(share_of(sockets, workers, w)) for w in range(workers)]
    assert max(sizes) - min(sizes) <= 1


def test_one_socket_that_cannot_have_siblings_is_shared_by_every_worker() -> None:
    assert [share_of(1, 3, w) for w in range(3)] == [[0], [0], [0]]
    assert share_of(0, 2, 1) == []
