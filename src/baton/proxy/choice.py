"""Where one request goes: the release (pin, stickiness, weight) and the target within it.

Theory of operation. Pure decisions over the live route table and the targets' counters,
with no I/O: a request's pin (``X-Baton-Release``, honoured only with the app's secret or
from its ``pin_from`` networks), then stickiness (cookie, client IP, or a header) while
traffic is split, else a weighted draw; within a release the available target with the
fewest requests in flight, ties broken round-robin. The only state is the round-robin
counter, held by a ``Chooser`` (one per proxy). A release with nothing healthy gives way
to any other weighted one; a canary's failed answer goes to the weightiest release that
is no canary (``stable_choice``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from hmac import compare_digest
from typing import Final

from baton.proxy.forwarded import is_trusted
from baton.proxy.http import RequestInfo
from baton.proxy.metrics import ReleaseMetrics
from baton.proxy.routing import (
    STICKY_CLIENT_IP,
    STICKY_COOKIE,
    App,
    Release,
    RouteTable,
    cookie_release,
    set_cookie,
    sticky_point,
)
from baton.proxy.upstream import Target

LiveTable = RouteTable[Target, ReleaseMetrics]
LiveRelease = Release[Target, ReleaseMetrics]
LiveApp = App[Target, ReleaseMetrics]

# (release, target, the Set-Cookie value that makes a cookie-sticky client stay, if any)
Choice = tuple[LiveRelease | None, Target | None, bytes | None]
NO_CHOICE: Final[Choice] = (None, None, None)


def may_pin(app: LiveApp, info: RequestInfo, client_ip: bytes) -> bool:
    """X-Baton-Release is honoured with the app's secret, or from its ``pin_from`` nets.

    Never for "any loopback peer": behind a local TLS terminator that is everyone.
    """
    spec = app.spec
    if spec.pin_from and is_trusted(spec.pin_from, client_ip):
        return True
    secret = spec.release_secret
    given = info.pin_secret
    return secret is not None and given is not None and compare_digest(given, secret.encode())


class Chooser:
    """The release and target choice, with its one piece of state: the round-robin turn."""

    __slots__ = ("rr",)

    def __init__(self) -> None:
        self.rr = 0

    def choose(
        self,
        app: LiveApp,
        info: RequestInfo,
        client_ip: bytes,
        rand: Callable[[], float] = random.random,
    ) -> Choice:
        """The release (by pin, stickiness or weight) and target for one request."""
        if info.pin is not None and may_pin(app, info, client_ip):
            pinned = app.by_name.get(info.pin.decode("latin-1"))
            target = self.pick_target(pinned) if pinned is not None else None
            return (pinned, target, None) if target is not None else NO_CHOICE
        cookie: bytes | None = None
        if app.sticky and len(app.weighted) > 1:
            release, cookie = self._sticky_release(app, info, client_ip, rand)
        else:
            release = app.pick_release(rand)
        if release is not None:
            target = self.pick_target(release)
            if target is not None:
                return release, target, cookie
        # The chosen release has nothing healthy: any other weighted release will do.
        for other in app.weighted:
            if other is not release:
                target = self.pick_target(other)
                if target is not None:
                    return other, target, cookie
        return NO_CHOICE

    def _sticky_release(
        self, app: LiveApp, info: RequestInfo, client_ip: bytes, rand: Callable[[], float]
    ) -> tuple[LiveRelease | None, bytes | None]:
        if app.sticky == STICKY_COOKIE:
            name = cookie_release(info.cookie)
            kept = app.by_name.get(name) if name is not None else None
            if kept is not None and kept.weight > 0:
                return kept, None
            release = app.pick_release(rand)
            return release, set_cookie(release.name) if release is not None else None
        if app.sticky == STICKY_CLIENT_IP:
            key = client_ip
        else:
            wanted = app.sticky_header
            key = next((v.strip() for n, v in info.kept if n.lower() == wanted), b"")
            if not key:
                return app.pick_release(rand), None  # no key: nothing to stick to
        point = sticky_point(key)
        return app.pick_release(lambda: point), None

    def pick_target(
        self, release: LiveRelease, exclude: list[Target] | None = None
    ) -> Target | None:
        """Least in-flight among available targets; round-robin breaks ties."""
        targets = release.targets
        n = len(targets)
        if n == 1:
            t = targets[0]
            return t if t.available and (not exclude or t not in exclude) else None
        self.rr += 1
        start = self.rr % n if n else 0
        best: Target | None = None
        best_load = 1 << 30
        for i in range(n):
            t = targets[(start + i) % n]
            if t.in_flight < best_load and t.available and (not exclude or t not in exclude):
                best = t
                best_load = t.in_flight
        return best

    def stable_choice(self, app: LiveApp, canary: str) -> tuple[LiveRelease, Target] | None:
        """Where a request the canary failed goes instead: the weightiest other release
        that is no canary, with an available target."""
        others = sorted(
            (r for r in app.releases if r.name != canary and r.metrics.fuse is None),
            key=lambda r: r.weight,
            reverse=True,
        )
        for release in others:
            target = self.pick_target(release)
            if target is not None:
                return release, target
        return None
