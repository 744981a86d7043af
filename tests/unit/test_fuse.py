"""The canary fuse's trip rule and its route-table fields: pure, no sockets."""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest

from baton.errors import RouteTableError
from baton.proxy.fuse import Fuse, FuseSpec, binomial_tail, renormalise, should_trip
from baton.proxy.fuses import Fuses
from baton.proxy.routing import AppSpec, parse_app

GUARD = FuseSpec(max_error_rate=0.01, min_requests=20, window=200, deployment="7")


def feed(fuse: Fuse, outcomes: list[bool]) -> int | None:
    """Record ``outcomes`` in order; the 1-based index of the one that tripped, if any."""
    for i, failed in enumerate(outcomes, start=1):
        if fuse.record(failed):
            return i
    return None


def bad_release(n: int, rate: float, seed: int) -> list[bool]:
    rng = random.Random(seed)
    return [rng.random() < rate for _ in range(n)]


# -- the trip rule -------------------------------------------------------------------------------


def test_a_release_failing_every_request_trips_at_the_minimum_sample_not_before() -> None:
    fuse = Fuse(GUARD)
    assert feed(fuse, [True] * 19) is None  # 19 failures of 19: not enough sample yet
    assert not fuse.tripped
    assert fuse.record(True)  # the 20th
    assert fuse.tripped and fuse.trip is not None
    assert fuse.trip["errors"] == 20 and fuse.trip["requests"] == 20
    assert not fuse.record(True)  # trips once; the trip's figures stay


def test_a_release_failing_30_percent_trips_within_a_few_dozen_requests() -> None:
    for seed in range(200):
        at = feed(Fuse(GUARD), bad_release(1000, 0.3, seed))
        assert at is not None and 20 <= at <= 60, (seed, at)


def test_a_release_just_above_the_ceiling_with_enough_evidence_trips() -> None:
    # 10 % failures against a 1 % ceiling: far above it, caught inside one window.
    trips = [feed(Fuse(GUARD), bad_release(2000, 0.10, seed)) for seed in range(100)]
    assert all(t is not None and t <= 200 for t in trips), trips


def test_a_rate_above_the_ceiling_over_a_small_sample_is_not_enough_alone() -> None:
    # One failure in 20 is 5 %, above a 1 % ceiling, but a release at the ceiling does that
    # one time in six: noise, not evidence.
    assert not should_trip(1, 20, GUARD)
    assert not should_trip(2, 20, GUARD)
    assert should_trip(5, 20, GUARD)
    assert not should_trip(5, 19, GUARD)  # the minimum sample holds whatever the errors


def test_good_releases_noise_never_trips_the_fuse() -> None:
    # 300k answers each from releases at a tenth, a fifth and a third of the ceiling, with a
    # burst of 3 errors in a row now and then.
    for rate in (0.001, 0.002, 0.0033):
        fuse = Fuse(GUARD)
        outcomes = bad_release(300_000, rate, seed=int(rate * 10_000))
        for i in range(5_000, 300_000, 50_000):
            outcomes[i : i + 3] = [True, True, True]
        assert feed(fuse, outcomes) is None, rate
        assert fuse.errors <= fuse.count


def test_the_window_forgets_old_failures() -> None:
    fuse = Fuse(FuseSpec(0.01, 20, 50, "1"))
    feed(fuse, [True] * 3 + [False] * 47)
    assert fuse.errors == 3
    feed(fuse, [False] * 3)
    assert fuse.errors == 0 and fuse.count == 50


def test_a_zero_ceiling_trips_on_the_first_failure_after_the_minimum_sample() -> None:
    fuse = Fuse(FuseSpec(0.0, 20, 200, "1"))
    assert feed(fuse, [False] * 19 + [True]) == 20


def test_binomial_tail_matches_the_exact_sum() -> None:
    from math import comb

    for n, k, p in ((20, 3, 0.01), (200, 9, 0.01), (50, 10, 0.3), (20, 20, 0.01)):
        exact = sum(comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))
        assert binomial_tail(k, n, p) == pytest.approx(exact, rel=1e-9)
    assert binomial_tail(0, 10, 0.5) == 1.0 and binomial_tail(11, 10, 0.5) == 0.0


# -- the registry: trips survive table pushes of the same deployment -----------------------------


def app_with(
    canary_weight: int, deployment: str | None = "7", **extra: object
) -> dict[str, object]:
    canary: dict[str, object] = {"name": "v2", "weight": canary_weight, "targets": ["127.0.0.1:2"]}
    if deployment is not None:
        canary["fuse"] = {"max_error_rate": 0.01, "min_requests": 20, "deployment": deployment}
    return {
        "releases": [
            {"name": "v1", "weight": 100 - canary_weight, "targets": ["127.0.0.1:1"]},
            canary,
        ],
        **extra,
    }


def weights(specs: Mapping[str, AppSpec]) -> dict[str, int]:
    return {r.name: r.weight for r in specs["web"].releases}


def test_a_tripped_canary_stays_at_weight_0_until_a_new_deployment() -> None:
    fuses = Fuses()
    specs = {"web": parse_app("web", app_with(25))}
    fuses.arm(specs)
    fuse = fuses.get("web", "v2")
    assert fuse is not None and feed(fuse, [True] * 20) == 20
    event = fuses.record_trip("web", "v2", now=1.0)
    assert event["id"] == 1 and event["errors"] == 20 and event["deployment"] == "7"
    assert weights(fuses.enforce(specs)) == {"v1": 100, "v2": 0}
    # The control plane, not knowing yet, pushes the next step (50 %): the trip holds.
    later = {"web": parse_app("web", app_with(50))}
    fuses.arm(later)
    assert weights(fuses.enforce(later)) == {"v1": 100, "v2": 0}
    # A new deployment of the same version starts afresh.
    fresh = {"web": parse_app("web", app_with(50, deployment="8"))}
    fuses.arm(fresh)
    assert weights(fuses.enforce(fresh)) == {"v1": 50, "v2": 50}
    assert not fuses.tripped("web", "v2")
    # No fuse on the route: no canary any more, nothing kept.
    fuses.arm({"web": parse_app("web", app_with(50, deployment=None))})
    assert fuses.get("web", "v2") is None
    assert [e["id"] for e in fuses.since(0)] == [1] and fuses.since(1) == []


def test_renormalised_weights_sum_to_100_and_a_lone_canary_gives_way_to_the_others() -> None:
    assert renormalise([70, 5], [True, True]) == [94, 6]
    assert sum(renormalise([1, 100, 100], [True] * 3)) == 100
    assert renormalise([0], [True]) == [100]  # a 100 % canary step: stable takes it all back
    assert renormalise([0, 0], [True, False]) == [100, 0]


# -- route-table fields ----------------------------------------------------------------------------


def test_the_route_table_carries_the_fuse_and_the_retry_methods() -> None:
    spec = parse_app("web", app_with(10, retry_on_stable=["GET", "HEAD"]))
    assert spec.retry_on_stable == ("GET", "HEAD")
    assert spec.releases[1].fuse == FuseSpec(0.01, 20, 200, "7")
    assert spec.releases[0].fuse is None
    assert parse_app("web", spec.to_json()) == spec  # GET /routes gives back what was put


@pytest.mark.parametrize(
    ("fuse", "where"),
    [
        ({"max_error_rate": 1.5, "deployment": "1"}, "fuse.max_error_rate"),
        ({"max_error_rate": "1%", "deployment": "1"}, "fuse.max_error_rate"),
        ({"max_error_rate": 0.01, "min_requests": 0, "deployment": "1"}, "fuse.min_requests"),
        ({"max_error_rate": 0.01, "window": 5, "deployment": "1"}, "fuse.window"),
        ({"max_error_rate": 0.01}, "fuse.deployment"),
        ({"max_error_rate": 0.01, "deployment": "1", "ceiling": 1}, "unknown field 'ceiling'"),
        ("on", "fuse: expected an object"),
    ],
)
def test_a_bad_fuse_is_refused_naming_the_field(fuse: object, where: str) -> None:
    app = app_with(10)
    app["releases"][1]["fuse"] = fuse  # type: ignore[index]
    with pytest.raises(RouteTableError, match=where.replace("(", r"\(")):
        parse_app("web", app)


@pytest.mark.parametrize("methods", [["POST"], "GET", [1], ["get"]])
def test_retry_on_stable_takes_idempotent_methods_only(methods: object) -> None:
    with pytest.raises(RouteTableError, match="retry_on_stable"):
        parse_app("web", app_with(10, retry_on_stable=methods))
