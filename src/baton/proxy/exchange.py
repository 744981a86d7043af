"""One exchange (a request and its response) and the counters it holds while it lives.

Theory of operation. An ``Exchange`` is made when a request's head is complete (HTTP/1.1 in
``server.py``, a stream in ``h2.py``) and lives until its response's last byte, a local
answer, or the client going away. It owns what it counts: ``begin`` counts it in flight on
its release's metrics, ``enter`` on the target of each attempt, ``leave_target`` ends an
attempt and ``end`` ends both, once, whatever way the exchange ended (so drain, verify and
the canary judge never see a count leak). The connection code decides when; this class
keeps the counts paired.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Final

from baton.proxy.choice import LiveRelease
from baton.proxy.http import RequestInfo
from baton.proxy.metrics import ReleaseMetrics
from baton.proxy.upstream import Target, UpstreamConnection

NO_BODY: Final[list[bytes]] = []  # shared empty list: most requests never allocate their own


class Exchange:
    """One request and its response, from headers-complete to the response's last byte."""

    __slots__ = (
        "attempts",
        "body",
        "body_size",
        "cohorts",
        "complete",
        "extra_head",
        "head",
        "http11",
        "info",
        "keep_alive",
        "method",
        "metrics",
        "queued_until",
        "release",
        "request_id",
        "same_retry",
        "set_cookie",
        "stable_retry",
        "status",
        "t0",
        "t_head",
        "t_sent",
        "target",
        "tried",
        "ttfb",
        "unsent",
        "unsent_size",
        "upgrade",
        "upstream",
        "url",
        "written",
    )

    def __init__(
        self,
        method: bytes,
        url: bytes,
        info: RequestInfo,
        http11: bool,
        keep_alive: bool,
        now: float = 0.0,
    ):
        self.method = method
        self.url = url
        self.info = info
        self.http11 = http11
        self.keep_alive = keep_alive
        self.upgrade = info.upgrade is not None
        self.complete = False
        self.head = b""
        self.extra_head = b""  # header lines Baton adds to the response (HSTS)
        self.request_id = b""
        # Body pieces (already framed for the upstream) kept for a replay; None once the
        # body outgrew REPLAY_LIMIT.
        self.body: list[bytes] | None = [] if info.chunked or info.content_length else None
        self.body_size = 0
        self.unsent: list[bytes] = NO_BODY
        self.unsent_size = 0
        self.written = False
        self.release: LiveRelease | None = None
        self.metrics: ReleaseMetrics | None = None
        self.target: Target | None = None
        self.upstream: UpstreamConnection | None = None
        self.tried: list[Target] = []
        self.attempts = 0
        self.same_retry = False
        self.stable_retry = False  # a canary 5xx may be retried on the stable release
        self.set_cookie: bytes | None = None
        self.queued_until = 0.0  # the deadline of its wait for a healthy target, if it waited
        # Feature-flag cohorts the app said it served (``Baton-Flags``); most answers: none.
        self.cohorts: Sequence[ReleaseMetrics] = ()
        self.status = 0
        self.t0 = now or time.monotonic()  # (``now``: the caller's clock read, shared)
        self.t_sent = self.t0
        self.t_head = 0.0  # when the response head came (``response_started``)
        self.ttfb = 0.0

    @property
    def replayable(self) -> bool:
        return not self.written or self.body is not None or self.body_size == 0

    # -- the counters it holds: one begin/end pair for its release, one per attempt --------

    def begin(self, release: LiveRelease) -> ReleaseMetrics:
        """Count the exchange on ``release`` (in flight until ``end``)."""
        self.release = release
        m = self.metrics = release.metrics
        m.in_flight += 1
        return m

    def enter(self, target: Target) -> None:
        """An attempt on ``target``: counted there until ``leave_target`` or ``end``."""
        self.target = target
        self.attempts += 1
        self.tried.append(target)
        target.in_flight += 1

    def leave_target(self) -> Target | None:
        """The attempt is over (answered, failed or abandoned); returns its target."""
        target = self.target
        if target is not None:
            self.target = None
            target.in_flight -= 1
        return target

    def end(self) -> None:
        """No longer in flight anywhere (safe to call more than once)."""
        target = self.target
        if target is not None:
            self.target = None
            target.in_flight -= 1
        m = self.metrics
        if m is not None:
            self.metrics = None
            m.in_flight -= 1

    def start_over(self) -> None:
        """Back to before routing (it waits for a healthy target): nothing counted, no tries."""
        self.end()
        self.release = None
        self.tried = []
        self.attempts = 0
        self.same_retry = False

    def response_started(self, status: int) -> None:
        self.status = status
        now = self.t_head = time.monotonic()
        self.ttfb = now - self.t_sent
