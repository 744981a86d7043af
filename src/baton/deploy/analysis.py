"""The one judge of a release's traffic: canary analysis and post-switch verification. Pure.

Theory of operation. This module owns every judgement of a release from its traffic: the
engine takes ``/metrics.json`` snapshots of each release from the proxy (the counters are
cumulative since the proxy started), turns them into a ``ReleaseWindow`` with ``window`` (two
snapshots) or a ``Tally`` (every snapshot in order, so a proxy restart in between starts a
new segment instead of a negative difference), and asks for a ``Verdict``: ``judge(baseline,
canary, cfg)`` for a canary step, ``verify(window, max_error_rate)`` after a switch (the
error-ceiling rule alone). A verdict names the rules that failed (``failed``), says why in
words and carries every figure. The always-on abort check is ``guard``, and ``summary``
gives ``baton status`` its figures. No clock, no sockets, no randomness: the same windows
always give the same verdict.

What a window holds, from the proxy's counters for one release:
- ``requests``: every answered request (the sum of the status classes).
- ``errors``: the 5xx answers. Baton's own 502/504 (upstream unreachable or too slow) are
  already counted in ``5xx`` as well as in ``upstream_errors``, so adding ``upstream_errors``
  would count them twice; a 4xx is the client's doing and is not an error of the release.
- the latency histogram: counts per bucket (upper bounds ``bounds`` plus a final +Inf bucket,
  a value ``v`` lands in the first bucket with ``v <= bound``). By default the ``ttfb``
  histogram (upstream time to the first response byte): it measures the release itself,
  whereas ``total`` also holds the client's download time and the life of WebSocket tunnels.
- ``seconds``, the window's length, when a rate is wanted.

The rules of ``judge`` (``alpha = 1 - confidence``):
- Enough traffic: a comparison needs ``min_requests`` requests from *each* release in the
  window; below that the verdict is ``inconclusive`` (the engine holds the step longer).
  The absolute ceiling needs only the canary's traffic, so it can fail a step on its own.
- Error ceiling: fail when the canary's error rate is above ``max_error_rate``.
- Error increase: fail when the canary's error rate exceeds the baseline's by more than
  ``max_error_rate_increase`` *and* a one-sided two-proportion z-test (pooled variance, H1:
  the canary errs more) gives ``p < alpha``. No division by zero: with no request on a side,
  or no variance at all (no errors anywhere, or errors only), the p-value is 1.
- Latency: fail when a one-sided Mann-Whitney U test (H1: the canary is slower, as Kayenta
  does) gives ``p < alpha`` *and* canary p95 / baseline p95 is above ``max_latency_ratio``.
  Both are needed: with thousands of requests a 2 % slowdown is significant but harmless,
  and a large ratio over a few noisy requests is not evidence. The price: the U test
  compares whole distributions, so a canary faster for most requests but with a slow tail
  passes; a slow tenth of all requests is caught.
- Verdict: ``fail`` if any rule failed, else ``inconclusive`` if traffic was short, else
  ``pass``. ``reasons`` says why in words with the figures; ``figures`` holds every number
  (JSON-safe: no NaN or infinity, ``None`` where a figure is undefined) for the history.

The U test on histograms. Only bucket counts are known, so every observation in a bucket is
tied with the others in that bucket: each bucket is one tie group and its observations share
the mid-rank. With baseline counts ``a_k``, canary counts ``b_k`` (``n1``, ``n2`` in all,
``N = n1 + n2``, ``t_k = a_k + b_k``, ``A_k`` the baseline count below bucket ``k``), the
canary's rank sum is ``R = sum_k b_k (A_k + B_k + (t_k + 1) / 2)`` and subtracting its
smallest value ``n2 (n2 + 1) / 2 = sum_k b_k (B_k + (b_k + 1) / 2)`` leaves
``U = sum_k b_k (A_k + a_k / 2)``: the (baseline, canary) pairs where the canary is slower,
ties counting one half. Under H0, ``E[U] = n1 n2 / 2`` and the tie-corrected variance is
``n1 n2 / 12 * ((N + 1) - sum_k (t_k^3 - t_k) / (N (N - 1)))``; the p-value is the normal
upper tail of ``z = (U - E[U] - 1/2) / sd`` (with continuity correction, as SciPy's
``mannwhitneyu(canary, baseline, alternative="greater", method="asymptotic")``). Binning
only merges close values into ties: it costs power, never false alarms.

Percentiles from a histogram are estimated by linear interpolation inside the bucket that
holds the rank ``q * n`` (as Prometheus' ``histogram_quantile``): the first bucket spans
``[0, bounds[0]]``; a rank in the +Inf bucket gives the last finite bound, a lower bound of
the truth. The estimate is within one bucket of the true value, and the buckets are narrow
where fast apps live (see ``baton.proxy.metrics.LATENCY_BOUNDS``).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from baton.proxy.metrics import LATENCY_BOUNDS

Outcome = Literal["pass", "fail", "inconclusive"]
# The judge's rules, as a verdict names the ones that failed: the error ceiling, the error
# increase over the baseline, the latency comparison.
Rule = Literal["error_rate", "error_increase", "latency"]
HistogramName = Literal["ttfb", "total"]
Figure = float | int | None

_SQRT2 = math.sqrt(2.0)


# -- windows -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseWindow:
    """What one release served during a window: requests, 5xx errors, a latency histogram.

    ``counts`` has one entry per bound plus the +Inf bucket; left empty it means no latency
    observation. ``seconds`` is the window's length (only ``summary``'s rate needs it).
    """

    requests: int
    errors: int
    counts: tuple[int, ...] = ()
    bounds: tuple[float, ...] = LATENCY_BOUNDS
    seconds: float | None = None

    def __post_init__(self) -> None:
        if not self.bounds or self.bounds[0] <= 0:
            raise ValueError("bounds must be positive latencies in seconds, at least one")
        if any(b >= c for b, c in zip(self.bounds, self.bounds[1:], strict=False)):
            raise ValueError(f"bounds must be strictly increasing, got {list(self.bounds)}")
        if not self.counts:
            object.__setattr__(self, "counts", (0,) * (len(self.bounds) + 1))
        if len(self.counts) != len(self.bounds) + 1:
            raise ValueError(
                f"counts has {len(self.counts)} buckets, expected {len(self.bounds) + 1}"
                " (one per bound plus +Inf)"
            )
        if any(c < 0 for c in self.counts):
            raise ValueError(f"counts must not be negative, got {list(self.counts)}")
        if not 0 <= self.errors <= self.requests:
            raise ValueError(
                f"errors must be between 0 and requests ({self.requests}), got {self.errors}"
            )
        if self.seconds is not None and not self.seconds > 0:
            raise ValueError(f"seconds must be positive, got {self.seconds}")

    @classmethod
    def from_samples(
        cls,
        latencies: Iterable[float],
        errors: int = 0,
        *,
        seconds: float | None = None,
        bounds: Sequence[float] = LATENCY_BOUNDS,
    ) -> ReleaseWindow:
        """A window of one request per latency (seconds), ``errors`` of them 5xx.

        Bucketed exactly as the proxy does, so tests can build windows from samples.
        """
        edges = tuple(bounds)
        counts = [0] * (len(edges) + 1)
        for latency in latencies:
            counts[bisect_left(edges, latency)] += 1
        return cls(sum(counts), errors, tuple(counts), edges, seconds)

    @property
    def observations(self) -> int:
        """Latency observations (normally equal to ``requests``)."""
        return sum(self.counts)

    @property
    def error_rate(self) -> float:
        """5xx answers per request; 0 when there was no request."""
        return self.errors / self.requests if self.requests else 0.0


def release_snapshot(metrics: Mapping[str, Any], app: str, release: str) -> Mapping[str, Any]:
    """One release's part of a whole ``/metrics.json`` answer; empty if it has none yet."""
    try:
        found = metrics["apps"][app]["releases"][release]
    except (KeyError, TypeError):
        return {}
    return found if isinstance(found, Mapping) else {}


def window(
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    *,
    seconds: float | None = None,
    histogram: HistogramName = "ttfb",
) -> ReleaseWindow:
    """The traffic of one release between two of its ``/metrics.json`` snapshots.

    ``before`` None (or empty) means since the proxy started; ``after`` None or empty means
    the release has served nothing. If a counter went down, or the bounds changed, the proxy
    restarted in between: ``after`` alone then counts the traffic since that restart.
    Raises ``ValueError`` on a snapshot that is not shaped like the proxy's.
    """
    now = _read(after, histogram)
    start = _read(before, histogram) if before else None
    return _delta(start, now, seconds)


class _Reading(NamedTuple):
    """One release snapshot's counters, as read once."""

    requests: int
    errors: int
    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    classes: Mapping[str, int]  # requests per status class ("2xx", "5xx"...)


def _went_back(before: _Reading, after: _Reading) -> bool:
    """A counter went down, or the bounds changed: the proxy restarted in between. Every
    counter is compared (each status class too), so a difference is never negative."""
    return (
        before.bounds != after.bounds
        or before.requests > after.requests
        or before.errors > after.errors
        or any(n > after.classes.get(k, 0) for k, n in before.classes.items())
        or any(old > new for old, new in zip(before.counts, after.counts, strict=True))
    )


def _delta(before: _Reading | None, after: _Reading, seconds: float | None) -> ReleaseWindow:
    """``after`` minus ``before``; ``after`` alone when there is no ``before`` or the proxy
    restarted in between."""
    if before is None or _went_back(before, after):
        return ReleaseWindow(after.requests, after.errors, after.counts, after.bounds, seconds)
    counts = tuple(new - old for old, new in zip(before.counts, after.counts, strict=True))
    return ReleaseWindow(
        after.requests - before.requests,
        after.errors - before.errors,
        counts,
        after.bounds,
        seconds,
    )


@dataclass(frozen=True)
class Tally:
    """One release's traffic from a first snapshot on, across proxy restarts.

    Fed every later snapshot of the release in order (``add``), it compares each with the
    one before: a counter that went backwards means the proxy restarted, so the traffic up
    to the last snapshot before the restart is kept (``closed``) and a new segment starts
    at zero. ``window`` is the closed segments plus the current one. Only what the proxy
    served between the last snapshot before a restart and the restart itself is unseen;
    a restart never produces a negative difference nor counts traffic twice. Each snapshot
    is read once.
    """

    first: _Reading | None  # where the current segment starts; None: at zero
    last: _Reading
    closed: tuple[ReleaseWindow, ...] = ()
    histogram: HistogramName = "ttfb"

    @classmethod
    def start(cls, snapshot: Mapping[str, Any] | None, histogram: HistogramName = "ttfb") -> Tally:
        """A tally from ``snapshot`` on (None or empty: the release has served nothing).

        Raises ``ValueError`` on a snapshot that is not shaped like the proxy's (so does
        ``add``)."""
        reading = _read(snapshot, histogram)
        return cls(reading, reading, (), histogram)

    def add(self, snapshot: Mapping[str, Any] | None) -> Tally:
        """The tally with a newer snapshot of the same release."""
        reading = _read(snapshot, self.histogram)
        if _went_back(self.last, reading):
            segment = _delta(self.first, self.last, None)
            return Tally(None, reading, (*self.closed, segment), self.histogram)
        return Tally(self.first, reading, self.closed, self.histogram)

    @property
    def restarts(self) -> int:
        """How many proxy restarts the tally has seen."""
        return len(self.closed)

    def window(self, seconds: float | None = None) -> ReleaseWindow:
        """Everything the release served since the first snapshot (restarts summed)."""
        current = _delta(self.first, self.last, seconds)
        return merge((*self.closed, current), seconds=seconds) if self.closed else current


def merge(windows: Sequence[ReleaseWindow], *, seconds: float | None = None) -> ReleaseWindow:
    """The traffic of several windows of one release, added up (the same bounds)."""
    if not windows:
        return ReleaseWindow(0, 0, seconds=seconds)
    bounds = windows[0].bounds
    counts = [0] * (len(bounds) + 1)
    requests = errors = 0
    for w in windows:
        if w.bounds != bounds:
            # The bounds changed with a restart: the old segments' latencies cannot be
            # merged, their request and error counts can.
            counts = [0] * (len(w.bounds) + 1)
            bounds = w.bounds
        requests, errors = requests + w.requests, errors + w.errors
        counts = [a + b for a, b in zip(counts, w.counts, strict=True)]
    return ReleaseWindow(requests, errors, tuple(counts), bounds, seconds)


def _read(snapshot: Mapping[str, Any] | None, histogram: HistogramName) -> _Reading:
    if not snapshot:
        return _Reading(0, 0, LATENCY_BOUNDS, (0,) * (len(LATENCY_BOUNDS) + 1), {})
    try:
        classes = {str(k): int(n) for k, n in (snapshot.get("requests") or {}).items()}
        requests = sum(classes.values())
        errors = classes.get("5xx", 0)
        hist = snapshot.get(histogram) or {}
        bounds = tuple(float(b) for b in hist.get("bounds", LATENCY_BOUNDS))
        counts = tuple(int(n) for n in hist.get("counts", ())) or (0,) * (len(bounds) + 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ValueError(f"not a /metrics.json release snapshot: {exc}") from exc
    if len(counts) != len(bounds) + 1:
        raise ValueError(
            f"{histogram}.counts has {len(counts)} buckets, expected {len(bounds) + 1}"
            " (one per bound plus +Inf)"
        )
    return _Reading(requests, errors, bounds, counts, classes)


# -- figures -----------------------------------------------------------------------------------


def percentile(window: ReleaseWindow, q: float) -> float:
    """The ``q`` quantile (0..1) of the window's latency in seconds; 0.0 with no observation.

    Linear interpolation inside the bucket that holds rank ``q * n``, the first bucket
    starting at 0; in the +Inf bucket, the last finite bound.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be between 0 and 1, got {q}")
    rank = q * window.observations
    below = 0
    for i, n in enumerate(window.counts):
        if n and below + n >= rank:
            if i == len(window.bounds):
                break
            lower = window.bounds[i - 1] if i else 0.0
            upper = window.bounds[i]
            return lower + (upper - lower) * (rank - below) / n
        below += n
    return window.bounds[-1] if window.observations else 0.0


def summary(window: ReleaseWindow) -> dict[str, Figure]:
    """A release's figures for ``baton status``: rate (req/s), error rate, p50/p95/p99 (s).

    A figure that needs something the window lacks (seconds, requests) is None.
    """
    measured = window.observations > 0
    return {
        "requests": window.requests,
        "errors": window.errors,
        "rate": window.requests / window.seconds if window.seconds else None,
        "error_rate": window.error_rate if window.requests else None,
        "p50": percentile(window, 0.50) if measured else None,
        "p95": percentile(window, 0.95) if measured else None,
        "p99": percentile(window, 0.99) if measured else None,
    }


# -- tests -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZTest:
    """A one-sided two-proportion z-test: ``p_value`` of "the canary errs more"."""

    z: float
    p_value: float


def two_proportion_z(
    baseline_errors: int, baseline_requests: int, canary_errors: int, canary_requests: int
) -> ZTest:
    """Pooled two-proportion z-test, H1: canary error rate > baseline error rate.

    With no request on a side, or no variance (no errors at all, or nothing but errors on
    both sides, so the rates are equal), there is no evidence: z = 0, p = 1.
    """
    n1, n2 = baseline_requests, canary_requests
    if not (0 <= baseline_errors <= n1 and 0 <= canary_errors <= n2):
        raise ValueError("errors must be between 0 and the number of requests")
    if n1 == 0 or n2 == 0:
        return ZTest(0.0, 1.0)
    pooled = (baseline_errors + canary_errors) / (n1 + n2)
    variance = pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)
    if variance <= 0.0:
        return ZTest(0.0, 1.0)
    z = (canary_errors / n2 - baseline_errors / n1) / math.sqrt(variance)
    return ZTest(z, _upper_tail(z))


@dataclass(frozen=True)
class UTest:
    """A one-sided Mann-Whitney U test on histograms: ``p_value`` of "the canary is slower".

    ``u`` counts the (baseline, canary) pairs where the canary is slower, ties one half.
    """

    u: float
    z: float
    p_value: float


def mann_whitney_u(baseline: Sequence[int], canary: Sequence[int]) -> UTest:
    """Mann-Whitney U on two histograms with the same buckets, each bucket a tie group.

    Normal approximation with the tie correction and a continuity correction (the module
    docstring derives it). Exact integer arithmetic up to the square root. With an empty
    side, or every observation in one bucket, there is no evidence: z = 0, p = 1.
    """
    if len(baseline) != len(canary):
        raise ValueError(f"histograms differ in buckets: {len(baseline)} and {len(canary)}")
    n1, n2 = sum(baseline), sum(canary)
    twice_u = 0
    below = 0
    ties = 0
    for a, b in zip(baseline, canary, strict=True):
        twice_u += b * (2 * below + a)
        below += a
        t = a + b
        ties += t * t * t - t
    u = twice_u / 2
    n = n1 + n2
    if n1 == 0 or n2 == 0:
        return UTest(u, 0.0, 1.0)
    # variance * 12 N (N - 1), an integer: zero exactly when everything is one tie group.
    scaled = n1 * n2 * ((n + 1) * n * (n - 1) - ties)
    if scaled <= 0:
        return UTest(u, 0.0, 1.0)
    sd = math.sqrt(scaled / (12 * n * (n - 1)))
    z = (twice_u - n1 * n2 - 1) / (2 * sd)
    return UTest(u, z, _upper_tail(z))


def _upper_tail(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / _SQRT2)


# -- the judge ---------------------------------------------------------------------------------


class AnalysisSettings(Protocol):
    """What a judge needs, wherever it is configured (a canary's analysis, a flag's judge)."""

    @property
    def min_requests(self) -> int: ...
    @property
    def max_error_rate(self) -> float: ...
    @property
    def max_error_rate_increase(self) -> float: ...
    @property
    def max_latency_ratio(self) -> float: ...
    @property
    def confidence(self) -> float: ...


@dataclass(frozen=True)
class AnalysisConfig:
    """The ``deploy.canary.analysis`` settings, as fractions (1 % is 0.01)."""

    @classmethod
    def of(cls, settings: AnalysisSettings) -> AnalysisConfig:
        return cls(
            min_requests=settings.min_requests,
            max_error_rate=settings.max_error_rate,
            max_error_rate_increase=settings.max_error_rate_increase,
            max_latency_ratio=settings.max_latency_ratio,
            confidence=settings.confidence,
        )

    min_requests: int = 200
    max_error_rate: float = 0.01
    max_error_rate_increase: float = 0.005
    max_latency_ratio: float = 1.25
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if self.min_requests < 0:
            raise ValueError(f"min_requests must be 0 or more, got {self.min_requests}")
        for key in ("max_error_rate", "max_error_rate_increase"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{key} must be between 0 and 1 (0% to 100%), got {value}")
        if not self.max_latency_ratio > 0:
            raise ValueError(f"max_latency_ratio must be positive, got {self.max_latency_ratio}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be between 0 and 1, got {self.confidence}")


@dataclass(frozen=True)
class Verdict:
    """A judgement (of a canary step, or of a verification), with the rules that failed,
    its reasons in words and every figure behind it.

    ``failed`` names the broken rules in the order of the module docstring (empty unless
    ``verdict`` is ``fail``), so a caller decides on rule names, never on the figures.
    """

    verdict: Outcome
    reasons: list[str] = field(default_factory=list)
    figures: dict[str, Figure] = field(default_factory=dict)
    failed: tuple[Rule, ...] = ()

    @property
    def failing(self) -> bool:
        return self.verdict == "fail"

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "figures": self.figures,
            "failed": list(self.failed),
        }


def ceiling_broken(w: ReleaseWindow, max_error_rate: float, min_requests: int) -> bool | None:
    """The error-ceiling rule: True when the window's error rate is above ``max_error_rate``,
    False when within it, None (not judged) under ``min_requests`` requests."""
    if w.requests < min_requests:
        return None
    return w.error_rate > max_error_rate


def judge(
    baseline: ReleaseWindow, canary: ReleaseWindow, cfg: AnalysisConfig | None = None
) -> Verdict:
    """Compare the canary with the baseline over the same window (rules: module docstring)."""
    cfg = cfg or AnalysisConfig()
    if baseline.bounds != canary.bounds:
        raise ValueError("baseline and canary histograms have different bounds")
    alpha = round(1.0 - cfg.confidence, 12)  # 0.05, not 0.050000000000000044
    errors = two_proportion_z(baseline.errors, baseline.requests, canary.errors, canary.requests)
    latency = mann_whitney_u(baseline.counts, canary.counts)
    base, can = summary(baseline), summary(canary)
    increase = canary.error_rate - baseline.error_rate
    base_p95, can_p95 = base["p95"], can["p95"]
    ratio = can_p95 / base_p95 if can_p95 is not None and base_p95 else None

    figures: dict[str, Figure] = {f"baseline_{k}": v for k, v in base.items() if k != "rate"}
    figures.update({f"canary_{k}": v for k, v in can.items() if k != "rate"})
    figures.update(
        {
            "error_rate_increase": increase,
            "error_z": errors.z,
            "error_p_value": errors.p_value,
            "latency_ratio_p95": ratio,
            "latency_u": latency.u,
            "latency_z": latency.z,
            "latency_p_value": latency.p_value,
            "alpha": alpha,
        }
    )

    failed: list[str] = []
    short: list[str] = []
    held: list[str] = []
    for name, w in (("baseline", baseline), ("canary", canary)):
        if w.requests < cfg.min_requests:
            short.append(
                f"{name} served {w.requests} requests in the window;"
                f" {cfg.min_requests} are needed before judging"
            )

    rules: list[Rule] = []
    broken = ceiling_broken(canary, cfg.max_error_rate, cfg.min_requests)
    if broken is not None:
        rate = f"canary error rate {_pct(canary.error_rate)} ({canary.errors} of {canary.requests})"
        if broken:
            rules.append("error_rate")
            failed.append(f"{rate} is above the {_pct(cfg.max_error_rate)} ceiling")
        else:
            held.append(f"{rate} is within the {_pct(cfg.max_error_rate)} ceiling")

    if not short:
        detail = (
            f"canary {_pct(canary.error_rate)} vs baseline {_pct(baseline.error_rate)}:"
            f" {_signed_pct(increase)} (limit +{_pct(cfg.max_error_rate_increase)},"
            f" one-sided p={errors.p_value:.3g}, alpha {alpha:.3g})"
        )
        if increase > cfg.max_error_rate_increase and errors.p_value < alpha:
            rules.append("error_increase")
            failed.append(f"error rate increase is significant: {detail}")
        elif increase > cfg.max_error_rate_increase:
            held.append(f"error rate increase is not significant: {detail}")
        else:
            held.append(f"error rate increase is within the limit: {detail}")

        if ratio is None or base_p95 is None or can_p95 is None:
            held.append("latency not compared: a release has no latency observation")
        else:
            detail = (
                f"p95 {_ms(can_p95)} vs {_ms(base_p95)} (ratio {ratio:.2f},"
                f" limit {cfg.max_latency_ratio:.2f}; Mann-Whitney U={latency.u:.10g},"
                f" one-sided p={latency.p_value:.3g}, alpha {alpha:.3g})"
            )
            significant = latency.p_value < alpha
            if significant and ratio > cfg.max_latency_ratio:
                rules.append("latency")
                failed.append(f"canary is slower: {detail}")
            elif significant:
                held.append(f"canary latency shift is significant but small: {detail}")
            elif ratio > cfg.max_latency_ratio:
                held.append(f"canary latency ratio is not significant: {detail}")
            else:
                held.append(f"canary latency is comparable: {detail}")

    if failed:
        return Verdict("fail", failed, figures, tuple(rules))
    if short:
        return Verdict("inconclusive", short + held, figures)
    return Verdict("pass", held, figures)


# -- verification ------------------------------------------------------------------------------

# Below this many requests to the new release during ``verify``, its error rate is not judged.
MIN_VERIFY_REQUESTS = 20


def verify(
    new_release: ReleaseWindow, max_error_rate: float, min_requests: int = MIN_VERIFY_REQUESTS
) -> Verdict:
    """The post-switch verification: the error-ceiling rule alone, over what the new
    release served since the switch (a ``Tally``'s window, so a proxy restart is survived).

    ``fail`` (rule ``error_rate``) when at least ``min_requests`` requests were served and
    the 5xx rate is above ``max_error_rate``; ``inconclusive`` under ``min_requests``
    (the deploy goes on: verification only stops a release that plainly fails); else
    ``pass``. Figures: ``requests``, ``errors``, ``error_rate`` (0.0 without requests).
    """
    w = new_release
    figures: dict[str, Figure] = {
        "requests": w.requests,
        "errors": w.errors,
        "error_rate": w.error_rate,
        "max_error_rate": max_error_rate,
    }
    broken = ceiling_broken(w, max_error_rate, min_requests)
    said = (
        f"{w.errors} of {w.requests} requests failed ({w.error_rate:.1%};"
        f" the limit is {max_error_rate:.1%})"
    )
    if broken:
        return Verdict("fail", [said], figures, ("error_rate",))
    if broken is None:
        short = f"{w.requests} requests served; {min_requests} are needed before judging"
        return Verdict("inconclusive", [short], figures)
    return Verdict("pass", [said], figures)


def guard(canary_last_10s: ReleaseWindow, max_error_rate: float, min_requests: int = 20) -> bool:
    """The always-on abort check: True when the canary must be aborted now.

    True when the window (the engine passes the last 10 s) holds at least ``min_requests``
    requests and its error rate is above ``max_error_rate``. No statistics: this is the
    circuit breaker for a release that is plainly broken, not a judgement of a close call.
    """
    w = canary_last_10s
    return w.requests >= max(min_requests, 1) and w.error_rate > max_error_rate


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.2f}%"


def _signed_pct(fraction: float) -> str:
    return f"{fraction * 100:+.2f}%"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"
