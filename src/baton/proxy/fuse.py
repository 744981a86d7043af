"""The canary fuse: each canary release judged on its own last outcomes, in the data plane.

Theory of operation. The control plane marks a canary release in the route table with a
``fuse`` (the guard's error ceiling ``max_error_rate``, its minimum sample ``min_requests``,
the ``window`` of outcomes judged, and the ``deployment`` it belongs to). The proxy records
every answer of that release in a ``Fuse``: a ring of its last ``window`` outcomes (failed
means a 5xx, Baton's own 502/504 included). The damage a bad canary does is then bounded by a
*count* of requests, not by how long the control plane takes to notice, whatever the rate.

The trip rule (``should_trip``), checked when a failure is recorded (the only moment the
evidence can grow): at least ``min_requests`` outcomes in the window, an error rate above
the ceiling, and more errors than a release *at* the ceiling would show by bad luck (one-sided
binomial test, ``P(X >= errors | n, ceiling) < TRIP_ALPHA``). The test is what keeps a good
release's noise (a stray 5xx among twenty requests is 5 %, far above a 1 % ceiling) from
tripping it, while a release failing 30 % of its requests trips at the minimum sample.

A trip is remembered by ``fuses.Fuses`` per (app, release) for the deployment that armed it:
while the control plane keeps sending that release with the same ``deployment``, ``enforce``
gives it weight 0 in every table built (the other releases' weights renormalised to 100), so
a later table push cannot silently send users back to it. A fuse with another ``deployment``
starts afresh; a release sent without a fuse is no canary any more and its fuse is dropped.
Every trip is also an event (``Fuses.events``, numbered) that the control plane can wait for.

This module is pure: no sockets, no clock of its own (the caller passes ``now``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from baton.errors import RouteTableError

TRIP_ALPHA = 1e-3  # how unlikely the errors must be for a release at the ceiling
MAX_WINDOW = 100_000
MAX_EVENTS = 1000
_FUSE_KEYS = {"max_error_rate", "min_requests", "window", "deployment"}
# Methods that may be sent again to the stable release after the canary answered 5xx: the
# idempotent ones (RFC 9110, 9.2.2). POST and PATCH are never replayed.
IDEMPOTENT_METHODS = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE")
DEFAULT_RETRY_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class FuseSpec:
    max_error_rate: float
    min_requests: int
    window: int
    deployment: str

    def to_json(self) -> dict[str, Any]:
        return {
            "max_error_rate": self.max_error_rate,
            "min_requests": self.min_requests,
            "window": self.window,
            "deployment": self.deployment,
        }


# -- validation: route-table JSON -> specs -----------------------------------------------------


def parse_fuse(value: object, where: str) -> FuseSpec | None:
    """A release's ``fuse`` field (None: not a canary); RouteTableError names the field."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RouteTableError(f"{where}: expected an object, got {value!r}")
    unknown = sorted(set(value) - _FUSE_KEYS)
    if unknown:
        raise RouteTableError(
            f"{where}: unknown field {unknown[0]!r} (expected one of: {', '.join(sorted(_FUSE_KEYS))})"
        )
    rate = value.get("max_error_rate")
    if (
        isinstance(rate, bool)
        or not isinstance(rate, int | float)
        or math.isnan(rate)
        or not 0 <= rate < 1
    ):
        raise RouteTableError(
            f"{where}.max_error_rate: expected a fraction from 0 up to (not including) 1,"
            f" got {rate!r}"
        )
    minimum = value.get("min_requests", 20)
    if isinstance(minimum, bool) or not isinstance(minimum, int) or not 1 <= minimum <= MAX_WINDOW:
        raise RouteTableError(
            f"{where}.min_requests: expected an integer between 1 and {MAX_WINDOW}, got {minimum!r}"
        )
    window = value.get("window", max(200, minimum))
    if (
        isinstance(window, bool)
        or not isinstance(window, int)
        or not minimum <= window <= MAX_WINDOW
    ):
        raise RouteTableError(
            f"{where}.window: expected an integer between min_requests ({minimum}) and"
            f" {MAX_WINDOW}, got {window!r}"
        )
    deployment = value.get("deployment")
    if not isinstance(deployment, str) or not deployment or len(deployment) > 64:
        raise RouteTableError(
            f"{where}.deployment: expected a non-empty string naming the deployment,"
            f" got {deployment!r}"
        )
    return FuseSpec(float(rate), minimum, window, deployment)


def parse_retry_methods(value: object, where: str) -> tuple[str, ...]:
    """An app's ``retry_on_stable``: a list of idempotent methods (empty: off)."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise RouteTableError(f'{where}: expected a list of methods like ["GET"], got {value!r}')
    methods: list[str] = []
    for i, method in enumerate(value):
        if method not in IDEMPOTENT_METHODS:
            raise RouteTableError(
                f"{where}[{i}]: expected an idempotent method ({', '.join(IDEMPOTENT_METHODS)}),"
                f" got {method!r}"
            )
        if method not in methods:
            methods.append(method)
    return tuple(methods)


# -- the rule ------------------------------------------------------------------------------------


def binomial_tail(errors: int, n: int, p: float) -> float:
    """P(X >= errors) for X ~ Binomial(n, p)."""
    if errors <= 0:
        return 1.0
    if errors > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    k = errors
    term = math.exp(
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * log_p
        + (n - k) * log_q
    )
    total = 0.0
    ratio = p / (1.0 - p)
    while k <= n and term > 0.0:
        total += term
        if term < total * 1e-15:
            break
        term *= (n - k) / (k + 1) * ratio
        k += 1
    return min(1.0, total)


def should_trip(errors: int, n: int, spec: FuseSpec) -> bool:
    """The trip rule (module docstring): enough sample, above the ceiling, not bad luck."""
    if n < spec.min_requests or errors <= spec.max_error_rate * n:
        return False
    return binomial_tail(errors, n, spec.max_error_rate) < TRIP_ALPHA


class Fuse:
    """The last ``window`` outcomes of one canary release, and whether it tripped."""

    __slots__ = ("count", "errors", "pos", "ring", "spec", "trip")

    def __init__(self, spec: FuseSpec) -> None:
        self.spec = spec
        self.ring = bytearray(spec.window)
        self.pos = 0
        self.count = 0
        self.errors = 0
        self.trip: dict[str, Any] | None = None  # the figures at the trip, once tripped

    @property
    def tripped(self) -> bool:
        return self.trip is not None

    def record(self, failed: bool) -> bool:
        """Add one outcome; True when this one trips the fuse (once per fuse)."""
        if self.trip is not None:
            return False
        ring, pos = self.ring, self.pos
        if self.count == len(ring):
            self.errors -= ring[pos]
        else:
            self.count += 1
        ring[pos] = failed
        pos += 1
        self.pos = 0 if pos == len(ring) else pos
        if not failed:
            return False
        self.errors += 1
        if not should_trip(self.errors, self.count, self.spec):
            return False
        self.trip = {
            "errors": self.errors,
            "requests": self.count,
            "error_rate": round(self.errors / self.count, 4),
            "max_error_rate": self.spec.max_error_rate,
            "min_requests": self.spec.min_requests,
        }
        return True

    def to_json(self) -> dict[str, Any]:
        return {
            **self.spec.to_json(),
            "tripped": self.trip is not None,
            "trip": self.trip,
            "errors": self.errors,
            "requests": self.count,
        }


def renormalise(weights: list[int], eligible: list[bool]) -> list[int]:
    """Weights scaled to sum to 100; when all are 0, equal shares for the eligible ones."""
    if sum(weights) == 0:
        weights = [1 if ok else 0 for ok in eligible]
    total = sum(weights)
    if total == 0:
        return [0 for _ in weights]
    scaled = [max(1, w * 100 // total) if w else 0 for w in weights]
    if scaled:
        biggest = max(range(len(weights)), key=lambda i: weights[i])
        scaled[biggest] += 100 - sum(scaled)
    return scaled
