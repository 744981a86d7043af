"""Readiness retry spacing: soon after a failure, backing off to the configured interval."""

from __future__ import annotations

import itertools

from baton.deploy.probes import FIRST_RETRY, backoff


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
