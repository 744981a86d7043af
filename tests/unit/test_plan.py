"""The deploy planner: which steps, which weights, finish or undo — no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from baton.deploy.plan import (
    Pool,
    Step,
    app_route,
    live_version,
    parse_step,
    plan_deploy,
    plan_recovery,
    primary_release,
    release_options,
    route_table,
    split_weights,
    unique_label,
)


def kinds(steps: list[Step]) -> list[str]:
    return [s.label for s in steps]


def test_blue_green_starts_everything_before_one_switch_then_drains_the_old_release() -> None:
    steps = plan_deploy(
        "blue-green",
        new_count=2,
        old=[11, 12],
        pre_deploy=True,
        smoke_test=True,
        verify=True,
        post_deploy=True,
    )
    assert kinds(steps) == [
        "pre_deploy",
        "start",
        "ready",
        "smoke_test",
        "switch",
        "verify",
        "drain",
        "stop",
        "post_deploy",
    ]
    switch = steps[4]
    assert switch.new == (0, 1) and switch.old == (11, 12)
    assert steps[6].old == (11, 12) and steps[7].old == (11, 12)


def test_blue_green_keeps_the_previous_release_warm_when_asked() -> None:
    steps = plan_deploy("blue-green", new_count=1, old=[5], keep_warm=True)
    assert kinds(steps) == ["start", "ready", "switch", "drain", "keep_warm"]


def test_first_deploy_has_nothing_to_drain() -> None:
    steps = plan_deploy("blue-green", new_count=3, old=[], verify=True)
    assert kinds(steps) == ["start", "ready", "switch", "verify"]


def test_rolling_replaces_max_surge_instances_at_a_time() -> None:
    steps = plan_deploy("rolling", new_count=3, old=[1, 2, 3], max_surge=1, smoke_test=True)
    assert kinds(steps) == [
        "start#0", "ready#0", "smoke_test#0", "switch#0", "drain#0", "stop#0",
        "start#1", "ready#1", "switch#1", "drain#1", "stop#1",
        "start#2", "ready#2", "switch#2", "drain#2", "stop#2",
    ]  # fmt: skip
    switches = [s for s in steps if s.kind == "switch"]
    assert [(s.new, s.old) for s in switches] == [((0,), (1,)), ((1,), (2,)), ((2,), (3,))]


def test_rolling_with_a_larger_surge_and_fewer_new_instances_removes_every_old_one() -> None:
    steps = plan_deploy("rolling", new_count=2, old=[1, 2, 3, 4, 5], max_surge=2, verify=True)
    switches = [s for s in steps if s.kind == "switch"]
    assert [(s.new, s.old) for s in switches] == [((0, 1), (1, 2, 3, 4, 5))]
    assert kinds(steps) == ["start#0", "ready#0", "switch#0", "verify#0", "drain#0", "stop#0"]


def test_rolling_verifies_each_batch_before_the_next_one_switches() -> None:
    steps = plan_deploy("rolling", new_count=3, old=[1, 2, 3], max_surge=1, verify=True)
    assert kinds(steps) == [
        "start#0", "ready#0", "switch#0", "verify#0", "drain#0", "stop#0",
        "start#1", "ready#1", "switch#1", "verify#1", "drain#1", "stop#1",
        "start#2", "ready#2", "switch#2", "verify#2", "drain#2", "stop#2",
    ]  # fmt: skip
    # The old instances a batch replaced still run while it is verified: switching back
    # needs no restart of them.
    verifies = [s for s in steps if s.kind == "verify"]
    assert [s.new for s in verifies] == [(0,), (1,), (2,)]


def test_rolling_scale_up_adds_instances_without_removing_more_than_exist() -> None:
    steps = plan_deploy("rolling", new_count=3, old=[7], max_surge=1)
    switches = [s for s in steps if s.kind == "switch"]
    assert [(s.new, s.old) for s in switches] == [((0,), (7,)), ((1,), ()), ((2,), ())]
    assert "drain#1" not in kinds(steps)


@given(
    new_count=st.integers(1, 12),
    old_count=st.integers(0, 12),
    surge=st.integers(1, 5),
)
def test_rolling_starts_each_new_instance_once_and_removes_each_old_one_once(
    new_count: int, old_count: int, surge: int
) -> None:
    old = list(range(100, 100 + old_count))
    steps = plan_deploy("rolling", new_count=new_count, old=old, max_surge=surge)
    started = [i for s in steps if s.kind == "start" for i in s.new]
    removed = [i for s in steps if s.kind == "switch" for i in s.old]
    assert started == list(range(new_count))
    assert removed == old
    assert all(len(s.new) <= surge for s in steps if s.kind == "start")
    # Every old instance is drained before it is stopped.
    for instance in old:
        labels = [s.label for s in steps if instance in s.old]
        assert [label.split("#")[0] for label in labels] == ["switch", "drain", "stop"]


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="canary"):
        plan_deploy("canary", new_count=1, old=[])


def test_step_labels_round_trip() -> None:
    assert parse_step("switch#3") == ("switch", 3)
    assert parse_step("verify") == ("verify", None)


@pytest.mark.parametrize(
    ("counts", "weights"),
    [
        ([1, 1], [50, 50]),
        ([3, 1], [75, 25]),
        ([0, 2], [0, 100]),
        ([1, 1, 1], [34, 33, 33]),
        ([0, 0], [0, 0]),
        ([1, 200], [1, 99]),
    ],
)
def test_weights_follow_instance_counts(counts: list[int], weights: list[int]) -> None:
    assert split_weights(counts) == weights


@given(st.lists(st.integers(0, 500), min_size=1, max_size=6))
def test_weights_sum_to_100_and_never_starve_a_pool(counts: list[int]) -> None:
    weights = split_weights(counts)
    if sum(counts) == 0:
        assert weights == [0] * len(counts)
        return
    assert sum(weights) == 100
    for count, weight in zip(counts, weights, strict=True):
        assert (weight > 0) == (count > 0)


CONFIG = {
    "proxy": {"listen": "127.0.0.1:9000", "hosts": ["shop.test"], "path_prefix": "/"},
    "health": {"path": "/up", "interval": 0.05, "timeout": 2.0},
}


def test_app_route_lists_only_pools_with_targets() -> None:
    route = app_route(
        CONFIG,
        [Pool("v1", 0, ("127.0.0.1:1",)), Pool("v2", 100, ("127.0.0.1:2",)), Pool("v0", 0, ())],
    )
    assert route is not None
    assert route["listen"] == "127.0.0.1:9000"
    assert route["hosts"] == ["shop.test"]
    assert [r["name"] for r in route["releases"]] == ["v1", "v2"]
    assert route["health"]["kind"] == "http" and route["health"]["path"] == "/up"
    assert route["health"]["interval"] >= 0.5  # the proxy's checks need not be as fast


def test_an_app_with_nothing_routed_leaves_the_table() -> None:
    assert app_route(CONFIG, [Pool("v1", 100, ())]) is None
    table = route_table({"shop": None, "blog": app_route(CONFIG, [Pool("v1", 100, ("a:1",))])})
    assert list(table["apps"]) == ["blog"]


def test_tcp_health_without_a_path() -> None:
    route = app_route({"proxy": {}}, [Pool("v1", 100, ("127.0.0.1:1",))])
    assert route is not None and route["health"]["kind"] == "tcp"
    assert route["listen"] == "127.0.0.1:8080" and route["hosts"] == []


def test_live_version_is_null_while_traffic_is_split() -> None:
    assert live_version([Pool("v1", 0, ("a:1",)), Pool("v2", 100, ("a:2",))]) == "v2"
    assert live_version([Pool("v1", 50, ("a:1",)), Pool("v2", 50, ("a:2",))]) is None
    assert live_version([]) is None


def test_primary_release_is_the_heaviest_newest_pool() -> None:
    assert primary_release([Pool("v1", 50, ("a",)), Pool("v2", 50, ("b",))]) == "v2"
    assert primary_release([Pool("v1", 100, ("a",)), Pool("v2", 0, ("b",))]) == "v1"


@pytest.mark.parametrize(
    ("step", "previous_alive", "new_alive", "decision"),
    [
        ("lock", 2, 0, "undo"),
        ("pre_deploy", 2, 0, "undo"),
        ("start", 2, 1, "undo"),
        ("ready", 2, 2, "undo"),
        ("smoke_test", 2, 2, "undo"),
        ("switch", 2, 2, "undo"),  # blue-green, mid-switch: the previous release still runs
        ("verify", 2, 2, "undo"),
        ("drain", 2, 2, "finish"),  # verification passed
        ("stop", 1, 2, "finish"),
        ("keep_warm", 2, 2, "finish"),
        ("post_deploy", 0, 2, "finish"),
        ("ready#0", 3, 1, "undo"),  # rolling, first batch: nothing moved
        ("ready#2", 1, 2, "finish"),  # rolling, later batch: more of the new release runs
        ("switch#1", 2, 1, "undo"),
        ("stop#2", 0, 3, "finish"),
        ("verify", 0, 3, "finish"),  # rolling verify: the previous release is gone
        ("rollback", 1, 2, "undo"),
        ("switch", 0, 0, "undo"),
    ],
)
def test_recovery_routes_to_exactly_one_running_release(
    step: str, previous_alive: int, new_alive: int, decision: str
) -> None:
    got, why = plan_recovery(
        step, has_previous=True, previous_alive=previous_alive, new_alive=new_alive
    )
    assert got == decision, why


def test_recovery_of_a_first_deploy_finishes_when_the_new_release_runs() -> None:
    assert plan_recovery("verify", has_previous=False, previous_alive=0, new_alive=2)[0] == "finish"
    assert plan_recovery("ready", has_previous=False, previous_alive=0, new_alive=2)[0] == "undo"


def test_unique_labels() -> None:
    assert unique_label("abc123", []) == "abc123"
    assert unique_label("abc123", ["abc123"]) == "abc123-2"
    assert unique_label("abc123", ["abc123", "abc123-2"]) == "abc123-3"


def test_app_route_carries_max_connection_age_only_when_set() -> None:
    from baton.deploy.plan import Pool, app_route

    pools = [Pool(release="v1", weight=100, targets=("127.0.0.1:9001",))]
    bounded = app_route({"proxy": {"max_connection_age": 3600.0}}, pools)
    assert bounded is not None and bounded["max_connection_age"] == 3600.0
    unbounded = app_route({"proxy": {}}, pools)
    assert unbounded is not None and "max_connection_age" not in unbounded


def test_release_options_carry_the_pinning_secret_and_trusted_networks() -> None:
    assert release_options({"deploy": {"canary": {}}}) == {}
    options = release_options(
        {"deploy": {"canary": {"release_secret": "s" * 16, "pin_from": ["10.0.0.0/8"]}}}
    )
    assert options == {"release_secret": "s" * 16, "pin_from": ["10.0.0.0/8"]}
