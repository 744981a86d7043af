"""The traffic memory's windows since a start: summed across proxy restarts, the same as two
snapshots when the proxy did not restart. Real proxy metrics registries, no sockets."""

from __future__ import annotations

import json

from baton.deploy.analysis import verify
from baton.deploy.traffic import Traffic, between
from baton.proxy.metrics import MetricsRegistry


def serve(reg: MetricsRegistry, ok: int = 0, failed: int = 0) -> dict[str, object]:
    """``shop/v2`` serves ``ok`` 200s and ``failed`` 503s; the proxy's whole answer after."""
    m = reg.get("shop", "v2")
    for _ in range(ok):
        m.record(200, 0.01, 0.01)
    for _ in range(failed):
        m.record(503, 0.01, 0.01)
    return json.loads(json.dumps(reg.to_json()))  # type: ignore[no-any-return]


def test_since_without_a_restart_is_the_difference_of_the_two_ends() -> None:
    reg, traffic = MetricsRegistry(), Traffic()
    start = traffic.add(serve(reg, ok=100), t=0.0)
    traffic.add(serve(reg, ok=10, failed=2), t=1.0)
    end = traffic.add(serve(reg, ok=20), t=2.5)
    w = traffic.since(start, "shop", "v2")
    assert (w.requests, w.errors, w.seconds) == (32, 2, 2.5)
    assert w == between(start, end, "shop", "v2")


def test_since_sums_the_traffic_before_and_after_a_proxy_restart() -> None:
    old, new, traffic = MetricsRegistry(), MetricsRegistry(), Traffic()
    start = traffic.add(serve(old, ok=500), t=0.0)
    traffic.add(serve(old, ok=40, failed=20), t=1.0)
    traffic.add(serve(new), t=2.0)  # a new proxy: its counters start at zero
    end = traffic.add(serve(new, ok=530, failed=10), t=3.0)  # past the start's counters again
    w = traffic.since(start, "shop", "v2")
    assert (w.requests, w.errors) == (600, 30)
    assert not verify(w, 0.05).failing  # 5.0 %: at the limit
    # Two snapshots alone cannot see that restart: 40 requests, 10 errors, a wrong fail.
    assert verify(between(start, end, "shop", "v2"), 0.05).failing


def test_since_a_snapshot_that_is_the_latest_is_empty() -> None:
    traffic = Traffic()
    start = traffic.add(serve(MetricsRegistry(), ok=5), t=0.0)
    w = traffic.since(start, "shop", "v2")
    assert (w.requests, w.errors) == (0, 0)
