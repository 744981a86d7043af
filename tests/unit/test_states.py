"""The transition tables of releases, instances and deployments, pure: what each state may
become, what nothing may become, and the errors that name what was refused."""

from __future__ import annotations

import pytest

from baton.errors import IllegalTransition
from baton.state.states import (
    DEPLOYMENT_BORN,
    DEPLOYMENT_TRANSITIONS,
    INSTANCE_BORN,
    INSTANCE_TRANSITIONS,
    RELEASE_BORN,
    RELEASE_TRANSITIONS,
    DeploymentStatus,
    InstanceState,
    ReleaseState,
    check_deployment,
    check_instance,
    check_release,
    instance_state,
    release_state,
)


def test_every_state_has_a_row_in_its_table() -> None:
    assert set(RELEASE_TRANSITIONS) == set(ReleaseState)
    assert set(INSTANCE_TRANSITIONS) == set(InstanceState)
    assert set(DEPLOYMENT_TRANSITIONS) == set(DeploymentStatus)


def test_states_are_the_words_the_database_and_the_api_use() -> None:
    assert [s.value for s in ReleaseState] == ["pending", "live", "warm", "stopped", "failed"]
    assert [s.value for s in InstanceState] == [
        "starting",
        "ready",
        "routed",
        "draining",
        "stopped",
        "failed",
    ]
    assert InstanceState("routed") is InstanceState.ROUTED and f"{ReleaseState.LIVE}" == "live"


def test_nothing_goes_back_to_the_state_an_object_is_born_in() -> None:
    for born, table in (
        (RELEASE_BORN, RELEASE_TRANSITIONS),
        (INSTANCE_BORN, INSTANCE_TRANSITIONS),
        (DEPLOYMENT_BORN, DEPLOYMENT_TRANSITIONS),
    ):
        assert all(born not in targets for targets in table.values())


def test_every_state_is_reachable_from_birth() -> None:
    for born, table in (
        (RELEASE_BORN, RELEASE_TRANSITIONS),
        (INSTANCE_BORN, INSTANCE_TRANSITIONS),
        (DEPLOYMENT_BORN, DEPLOYMENT_TRANSITIONS),
    ):
        seen, todo = {born}, [born]
        while todo:
            for nxt in table[todo.pop()]:  # type: ignore[index]
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert seen == set(table)


def test_a_stopped_instance_and_an_ended_deployment_are_final() -> None:
    assert INSTANCE_TRANSITIONS[InstanceState.STOPPED] == frozenset()
    for status in DeploymentStatus:
        if status != DeploymentStatus.RUNNING:
            assert DEPLOYMENT_TRANSITIONS[status] == frozenset()


@pytest.mark.parametrize(
    ("old", "new"),
    [(old, new) for old, targets in RELEASE_TRANSITIONS.items() for new in sorted(targets)]
    + [(s, s) for s in ReleaseState],
)
def test_every_allowed_release_change_passes(old: ReleaseState, new: ReleaseState) -> None:
    assert check_release("shop", "release v2 (#7)", old, new) is new


@pytest.mark.parametrize(
    ("old", "new"),
    [(old, new) for old, targets in INSTANCE_TRANSITIONS.items() for new in sorted(targets)]
    + [(s, s) for s in InstanceState],
)
def test_every_allowed_instance_change_passes(old: InstanceState, new: InstanceState) -> None:
    assert check_instance("shop", "instance v2#0 (#3)", old, new) is new


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("live", "pending"),
        ("stopped", "warm"),
        ("failed", "stopped"),
        ("failed", "warm"),
        ("pending", "warm"),
    ],
)
def test_forbidden_release_changes_raise_naming_app_object_from_and_to(old: str, new: str) -> None:
    with pytest.raises(IllegalTransition) as info:
        check_release("shop", "release v2 (#7)", old, new)
    message = str(info.value)
    assert message.startswith("shop: release v2 (#7) cannot go from")
    assert f"from {old!r} to {new!r}" in message
    assert (info.value.app, info.value.old, info.value.new) == ("shop", old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("stopped", "routed"),
        ("stopped", "starting"),
        ("failed", "routed"),
        ("failed", "ready"),
        ("routed", "ready"),
        ("draining", "ready"),
        ("ready", "starting"),
    ],
)
def test_forbidden_instance_changes_raise(old: str, new: str) -> None:
    with pytest.raises(IllegalTransition, match=f"from {old!r} to {new!r}"):
        check_instance("shop", "instance v2#0 (#3)", old, new)


def test_an_ended_deployment_cannot_end_again_nor_run_again() -> None:
    assert check_deployment("shop", "deployment #4", "running", "succeeded") == "succeeded"
    with pytest.raises(IllegalTransition, match="it is final"):
        check_deployment("shop", "deployment #4", "succeeded", "aborted")
    with pytest.raises(IllegalTransition):
        check_deployment("shop", "deployment #4", "failed", "running")


def test_a_word_that_is_no_state_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"not a release state: 'sleeping' \(one of pending,"):
        release_state("sleeping")
    with pytest.raises(ValueError, match="not an instance state: 'Routed'"):
        instance_state("Routed")
    with pytest.raises(ValueError, match="not a release state"):
        check_release("shop", "release v2", "live", "sleeping")
