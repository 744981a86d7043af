"""Failed exchanges in the proxy's log: one WARNING line each, rate-limited.

Theory of operation. Every exchange Baton could not complete (502, 504, a response cut off
mid-body) is logged once, at WARNING (the level the proxy logs at), with its request id,
method, target and reason, so an operator can match a user's report to its cause. A burst
(an app down under load) must not flood the log: at most ``per_second`` lines are written
per second; the rest are counted and summed up in one "suppressed K" line when logging
resumes. The limiter is pure (``allow`` takes the clock) so it is tested without a network.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from baton.proxy.exchange import Exchange


class RateLimit:
    """At most ``per_second`` events per one-second window; counts the ones refused."""

    __slots__ = ("count", "per_second", "suppressed", "window")

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self.window = -1.0
        self.count = 0
        self.suppressed = 0

    def allow(self, now: float) -> tuple[bool, int]:
        """(may this event be logged, how many were suppressed before it and not reported)."""
        window = float(int(now))
        if window != self.window:
            self.window = window
            self.count = 0
        if self.count >= self.per_second:
            self.suppressed += 1
            return False, 0
        self.count += 1
        reported, self.suppressed = self.suppressed, 0
        return True, reported


class FailureLog:
    """Writes failed exchanges to ``log`` at WARNING, rate-limited."""

    def __init__(self, log: logging.Logger, per_second: int = 20) -> None:
        self.log = log
        self.limit = RateLimit(per_second)

    def record(self, ex: Exchange, status: int, reason: str) -> None:
        ok, suppressed = self.limit.allow(time.monotonic())
        if not ok:
            return
        if suppressed:
            self.log.warning("suppressed %d more failed exchanges", suppressed)
        target = ex.target.address if ex.target is not None else "-"
        if ex.target is None and ex.tried:
            target = ex.tried[-1].address
        self.log.warning(
            "request %s %s %s -> %d via %s: %s",
            ex.request_id.decode("latin-1"),
            ex.method.decode("latin-1"),
            ex.url[:200].decode("latin-1"),
            status,
            target,
            reason,
        )
