"""Requests waiting for a healthy target: FIFO per app, bounded, timed out, woken whole."""

from __future__ import annotations

from baton.proxy.queue import WaitQueues, retry_after


def test_waiters_come_back_in_arrival_order_per_app() -> None:
    q: WaitQueues[str] = WaitQueues()
    for name in ("a1", "a2", "a3"):
        assert q.push("a", name, 10.0, limit=10)
    assert q.push("b", "b1", 10.0, limit=10)
    assert q.waiting("a") == 3 and q.waiting("b") == 1 and len(q) == 4
    taken = q.take()
    assert [w.waiter for w in taken if w.app == "a"] == ["a1", "a2", "a3"]
    assert not q and q.waiting("a") == 0


def test_put_back_keeps_deadline_and_ignores_the_limit() -> None:
    q: WaitQueues[str] = WaitQueues()
    assert q.push("a", "x", 5.0, limit=1)
    assert not q.push("a", "y", 5.0, limit=1)  # full: refused, nothing queued
    assert q.overflows == {"a": 1}
    (w,) = q.take()
    assert q.push("a", "z", 6.0, limit=1)  # the place freed while x was out
    q.put_back(w)  # x had its place already
    assert q.waiting("a") == 2
    assert [e.waiter for e in q.expired(5.0)] == ["x"]
    assert q.timeouts == {"a": 1}


def test_a_zero_limit_queues_nothing() -> None:
    q: WaitQueues[str] = WaitQueues()
    assert not q.push("a", "x", 1.0, limit=0)
    assert not q


def test_expired_takes_only_waiters_past_their_deadline() -> None:
    q: WaitQueues[str] = WaitQueues()
    q.push("a", "early", 1.0, limit=5)
    q.push("a", "late", 3.0, limit=5)
    q.push("b", "b", 2.0, limit=5)
    assert q.expired(0.5) == []
    assert sorted(w.waiter for w in q.expired(2.0)) == ["b", "early"]
    assert q.waiting("a") == 1 and q.waiting("b") == 0
    assert q.apps() == ["a"]
    assert q.timeouts == {"a": 1, "b": 1}


def test_prune_drops_waiters_whose_client_left() -> None:
    q: WaitQueues[str] = WaitQueues()
    for name in ("keep", "gone1", "gone2"):
        q.push("a", name, 9.0, limit=5)
    assert q.prune(lambda w: w.startswith("gone")) == 2
    assert [w.waiter for w in q.take()] == ["keep"]
    assert q.prune(lambda w: True) == 0


def test_retry_after_is_a_whole_number_of_seconds_within_bounds() -> None:
    assert retry_after(0) == 1
    assert retry_after(0.3) == 1
    assert retry_after(10) == 10
    assert retry_after(3600) == 30
