"""Readiness retry spacing: soon after a failure, backing off to the configured interval."""

from __future__ import annotations

import itertools

from baton.deploy.probes import FAST_TCP_WINDOW, FIRST_RETRY, backoff, tcp_retry


def test_retries_start_soon_and_double_up_to_the_interval() -> None:
    delays = [backoff(n, 0.1) for n in range(1, 8)]
    assert delays[0] == FIRST_RETRY
    assert delays == sorted(delays)
    assert all(b == min(0.1, 2 * a) for a, b in itertools.pairwise(delays))
    assert delays[-1] == 0.1


def test_no_failure_or_a_short_interval_waits_the_interval() -> None:
    assert backoff(0, 0.5) == 0.5
    assert backoff(3, 0.005) == 0.005
    assert backoff(10_000, 2.0) == 2.0


def test_a_refused_port_is_retried_every_10ms_for_the_first_second_then_backs_off() -> None:
    assert [tcp_retry(n, n * FIRST_RETRY, 0.1) for n in range(1, 50)] == [FIRST_RETRY] * 49
    assert tcp_retry(1, 0.0, 0.005) == 0.005  # never more than the interval
    later = [tcp_retry(n, FAST_TCP_WINDOW + n, 0.1) for n in range(1, 10)]
    assert later == [backoff(n, 0.05) for n in range(1, 10)]  # as before: up to 50 ms
    assert later[-1] == 0.05


def test_a_port_that_accepts_before_the_app_listens_is_not_polled_fast() -> None:
    # Docker's published port (docker-proxy accepts at once): each check is an HTTP request.
    assert tcp_retry(5, 0.1, 0.1, fast=False) == backoff(5, 0.05)
