"""Feature flags without a network: validation, evaluation, percentages and stickiness."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baton.flags.model import (
    DISABLED,
    SPLIT,
    STATIC,
    TARGETING_MATCH,
    Evaluation,
    EvaluationError,
    FlagError,
    FlagSet,
    evaluate,
    parse_flag,
    parse_flags,
    roll_out,
    serve_everyone,
    set_killed,
)

CHECKOUT: dict[str, Any] = {
    "variants": {"on": True, "off": False},
    "default": "off",
    "rules": [
        {"when": {"email": {"ends_with": "@example.com"}}, "serve": "on"},
        {"when": {"country": {"in": ["FR", "DE"]}, "plan": "pro"}, "rollout": {"on": "50%"}},
    ],
    "rollout": {"on": "10%"},
}


def _value(result: Evaluation | EvaluationError) -> Any:
    assert isinstance(result, Evaluation), result
    return result.value


def test_a_rule_that_matches_decides_before_the_rollout() -> None:
    flag = parse_flag("checkout", CHECKOUT)
    staff = evaluate(flag, {"targetingKey": "u1", "email": "ann@example.com"})
    assert isinstance(staff, Evaluation)
    assert (staff.value, staff.variant, staff.reason) == (True, "on", TARGETING_MATCH)


def test_a_static_flag_serves_its_default_with_reason_static() -> None:
    flags = parse_flags({"flags": {"dark-mode": True, "beta": False}})
    assert _value(evaluate(flags.flags["dark-mode"], {})) is True
    result = evaluate(flags.flags["beta"], {})
    assert isinstance(result, Evaluation)
    assert (result.value, result.reason) == (False, STATIC)


def test_a_killed_flag_serves_its_default_to_everyone() -> None:
    flag = set_killed(parse_flag("checkout", CHECKOUT), True)
    for context in ({"targetingKey": "u1", "email": "ann@example.com"}, {"targetingKey": "x"}):
        result = evaluate(flag, context)
        assert isinstance(result, Evaluation)
        assert (result.value, result.reason) == (False, DISABLED)


def test_a_percentage_without_the_sticky_key_is_targeting_key_missing() -> None:
    result = evaluate(parse_flag("checkout", CHECKOUT), {"country": "FR"})
    assert isinstance(result, EvaluationError)
    assert result.error_code == "TARGETING_KEY_MISSING"


@pytest.mark.parametrize("share", [0.01, 0.10, 0.5, 0.9])
def test_percentages_hold_within_statistical_bounds_over_10000_contexts(share: float) -> None:
    flag = roll_out(parse_flag("f", {"variants": {"on": True, "off": False}}), "on", share)
    n = 10_000
    on = sum(_value(evaluate(flag, {"targetingKey": f"user-{i}"})) is True for i in range(n))
    sigma = math.sqrt(n * share * (1 - share))
    assert abs(on - n * share) <= 4 * sigma, (on, n * share)


def test_string_variants_split_in_their_listed_shares() -> None:
    flag = parse_flag(
        "colour",
        {
            "variants": {"red": "#f00", "green": "#0f0", "blue": "#00f"},
            "default": "blue",
            "rollout": {"red": "20%", "green": "30%"},
        },
    )
    counts: dict[str, int] = {"red": 0, "green": 0, "blue": 0}
    for i in range(10_000):
        result = evaluate(flag, {"targetingKey": f"k{i}"})
        assert isinstance(result, Evaluation) and result.reason == SPLIT
        counts[result.variant] += 1
    for variant, share in (("red", 0.2), ("green", 0.3), ("blue", 0.5)):
        sigma = math.sqrt(10_000 * share * (1 - share))
        assert abs(counts[variant] - 10_000 * share) <= 4 * sigma, counts


def test_a_context_keeps_its_variant_and_a_growing_rollout_only_adds_users() -> None:
    base = parse_flag("f", {"variants": {"on": True, "off": False}})
    previous: set[str] = set()
    for share in (0.01, 0.05, 0.2, 0.5, 1.0):
        flag = roll_out(base, "on", share)
        on = {
            key
            for key in (f"user-{i}" for i in range(3000))
            if _value(evaluate(flag, {"targetingKey": key})) is True
        }
        assert previous <= on  # nobody who had it loses it as it grows
        again = {k for k in on if _value(evaluate(flag, {"targetingKey": k})) is True}
        assert again == on  # the same context gets the same answer
        previous = on
    assert len(previous) == 3000


def test_flags_split_users_independently() -> None:
    a = roll_out(parse_flag("a", {}), "on", 0.5)
    b = roll_out(parse_flag("b", {}), "on", 0.5)
    both = sum(
        _value(evaluate(a, {"targetingKey": f"u{i}"})) is True
        and _value(evaluate(b, {"targetingKey": f"u{i}"})) is True
        for i in range(10_000)
    )
    assert abs(both - 2500) <= 4 * math.sqrt(10_000 * 0.25 * 0.75)


def test_a_boolean_attribute_never_equals_a_number() -> None:
    flag = parse_flag("f", {"rules": [{"when": {"admin": True}, "serve": "on"}], "default": "off"})
    assert _value(evaluate(flag, {"admin": 1})) is False
    assert _value(evaluate(flag, {"admin": True})) is True


@pytest.mark.parametrize(
    ("condition", "context", "expected"),
    [
        ({"age": {"gte": 18}}, {"age": 18}, True),
        ({"age": {"gt": 18}}, {"age": 18}, False),
        ({"age": {"lt": 18}}, {"age": "17"}, False),  # a string is not a number
        ({"plan": {"not_in": ["free"]}}, {"plan": "pro"}, True),
        ({"plan": {"not_in": ["free"]}}, {}, False),  # a missing attribute never matches
        ({"email": {"contains": "@corp"}}, {"email": "a@corp.io"}, True),
        ({"beta": {"exists": True}}, {"beta": "yes"}, True),
        ({"beta": {"exists": False}}, {}, True),
        ({"plan": {"neq": "free"}}, {"plan": "free"}, False),
    ],
)
def test_operators(condition: dict[str, Any], context: dict[str, Any], expected: bool) -> None:
    flag = parse_flag("f", {"rules": [{"when": condition, "serve": "on"}]})
    assert _value(evaluate(flag, context)) is expected


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        ({"flags": {"bad name": True}}, "flags.bad name", "a flag name"),
        ({"flags": {"f": {"variants": {"a": 1, "b": "x"}}}}, "flags.f", "one type"),
        ({"flags": {"f": {"default": "maybe"}}}, "flags.f", "unknown variant 'maybe'"),
        ({"flags": {"f": {"rollout": {"on": "120%"}}}}, "flags.f.rollout.on", "between 0%"),
        ({"flags": {"f": {"rollout": {"on": 0.7, "off": 0.6}}}}, "flags.f.rollout", "100%"),
        (
            {"flags": {"f": {"rules": [{"when": {"a": {"like": "x"}}, "serve": "on"}]}}},
            "flags.f.rules[0].when.a",
            "unknown operator 'like'",
        ),
        ({"flags": {"f": {"rules": [{"when": {"a": 1}}]}}}, "flags.f.rules[0]", "exactly one"),
        (
            {"flags": {"f": {"rules": [{"when": {"a": 1}, "serve": "nope"}]}}},
            "flags.f.rules[0]",
            "unknown variant 'nope'",
        ),
        ({"flags": {"f": {"colour": "red"}}}, "flags.f", "unknown key 'colour'"),
        ({"flags": {"f": {"killed": "yes"}}}, "flags.f", "killed"),
        (
            {"flags": {"f": {"rules": [{"when": {"n": {"gt": "3"}}, "serve": "on"}]}}},
            "flags.f.rules[0].when.n",
            "expected a number",
        ),
        ({"flagz": {}}, None, "unknown key 'flagz'"),
    ],
)
def test_bad_definitions_name_the_file_and_the_key(
    raw: dict[str, Any], key: str | None, words: str
) -> None:
    with pytest.raises(FlagError) as caught:
        parse_flags(raw, file="flags.yml")
    message = str(caught.value)
    assert message.startswith("flags.yml: ")
    if key is not None:
        assert f"{key}: " in message
    assert words in message


def test_set_and_rollout_refuse_unknown_variants() -> None:
    flag = parse_flag("f", {})
    with pytest.raises(FlagError, match="unknown variant 'maybe'"):
        serve_everyone(flag, "maybe")
    with pytest.raises(FlagError, match="default variant"):
        roll_out(flag, "off", 0.5)


def test_the_stored_form_loads_back_to_the_same_set() -> None:
    flags = parse_flags(
        {
            "flags": {
                "checkout": CHECKOUT,
                "limits": {"variants": {"small": {"n": 1}, "big": {"n": 9}}, "default": "small"},
                "ratio": {"variants": {"low": 0.1, "high": 0.9}, "default": "low"},
            }
        }
    )
    assert FlagSet.from_json(flags.to_json()) == flags


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
        max_size=5,
    )
)
def test_any_context_gets_an_answer_or_an_error_never_a_crash(context: dict[str, Any]) -> None:
    flag = parse_flag("checkout", CHECKOUT)
    result = evaluate(flag, context)
    assert isinstance(result, Evaluation | EvaluationError)


def test_a_flag_following_a_canary_is_on_for_the_canarys_own_evaluations_only() -> None:
    flag = parse_flag("new-checkout", {"follow_canary": "on", "default": "off"})
    canary_ctx = {"targetingKey": "u1", "baton_version": "v2"}
    stable_ctx = {"targetingKey": "u1", "baton_version": "v1"}
    on = evaluate(flag, canary_ctx, canary="v2")
    assert isinstance(on, Evaluation) and (on.value, on.reason) == (True, TARGETING_MATCH)
    assert _value(evaluate(flag, stable_ctx, canary="v2")) is False
    assert _value(evaluate(flag, canary_ctx, canary=None)) is False  # no canary: as usual
    assert _value(evaluate(set_killed(flag, True), canary_ctx, canary="v2")) is False
    with pytest.raises(FlagError, match="follow_canary"):
        parse_flag("f", {"follow_canary": "maybe"})


def _metrics(cohorts: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """A /metrics.json answer with each cohort's (requests, 5xx), all fast."""
    from baton.proxy.metrics import LATENCY_BOUNDS

    releases = {}
    for name, (requests, errors) in cohorts.items():
        counts = [0] * (len(LATENCY_BOUNDS) + 1)
        counts[2] = requests
        releases[name] = {
            "requests": {"2xx": requests - errors, "5xx": errors},
            "ttfb": {"bounds": list(LATENCY_BOUNDS), "counts": counts},
        }
    return {"apps": {"shop": {"releases": releases}}}


def test_the_judge_kills_a_flag_whose_on_cohort_fails_more_than_its_off_cohort(
    tmp_path: Any,
) -> None:
    from baton.deploy.traffic import Traffic
    from baton.flags.judge import check, cohort
    from baton.flags.service import FlagService
    from baton.state.store import Store

    store = Store.open(tmp_path / "baton.db")
    flags = FlagService(store, dict)
    judged = {"rollout": {"on": "50%"}, "judge": {"window": "10s", "min_requests": 100}}
    flags.apply(
        "shop",
        {"flags": {"f": judged, "quiet": {"rollout": {"on": "50%"}}}},
        file=None,
        source="api",
    )
    traffic = Traffic(min_interval=0.0)
    on, off = cohort("f", "on"), cohort("f", "off")
    traffic.add(_metrics({on: (0, 0), off: (0, 0)}), t=100.0)
    traffic.add(_metrics({on: (300, 3), off: (300, 2)}), t=105.0)
    assert check(flags, traffic) == []  # the same error rate: nothing happens
    assert flags.last_verdicts[("shop", "f", "on")].verdict == "pass"
    traffic.add(_metrics({on: (600, 93), off: (600, 4)}), t=110.0)
    notes = check(flags, traffic)
    assert len(notes) == 1 and "flag f killed: on judged worse than off" in notes[0]
    served = flags.served("shop")
    assert served is not None and served.flags["f"].killed and not served.flags["quiet"].killed
    assert "killed (on judged worse" in flags.history("shop")[0]["note"]
    store.close()
