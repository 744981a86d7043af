"""The SQLite store: schema, the per-app lock, releases, instances, history."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import pytest

from baton.errors import DeploymentLocked, IllegalTransition
from baton.state.states import (
    INSTANCE_BORN,
    INSTANCE_TRANSITIONS,
    RELEASE_BORN,
    RELEASE_TRANSITIONS,
    DeploymentStatus,
    InstanceState,
    ReleaseState,
)
from baton.state.store import MIGRATIONS, Store

RELEASE = {
    "version": "v1",
    "command": ["python3", "app.py"],
    "env": {"GREETING": "hello"},
    "cwd": "/srv/shop",
    "config": {"app": "shop", "instances": 2},
    "config_hash": "abc",
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "baton.db")
    yield s
    s.close()


def begin(store: Store, app: str = "shop", **release: object) -> tuple[int, int]:
    return store.begin_deployment(
        app=app,
        app_config={"app": app},
        config_path=f"/srv/{app}/baton.yml",
        kind="deploy",
        strategy="blue-green",
        release={**RELEASE, **release},
        previous_release_id=None,
        holder_pid=4242,
    )


def test_a_new_store_is_in_wal_mode_at_the_latest_schema(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state" / "baton.db")
    assert store.schema_version == len(MIGRATIONS)
    mode = sqlite3.connect(tmp_path / "state" / "baton.db").execute("PRAGMA journal_mode")
    assert mode.fetchone()[0] == "wal"
    store.close()
    # Opening it again migrates nothing and keeps the data.
    again = Store.open(tmp_path / "state" / "baton.db")
    assert again.schema_version == len(MIGRATIONS)
    again.close()


def test_recording_a_deployment_registers_the_app_and_the_release(store: Store) -> None:
    deployment_id, release_id = begin(store)
    app = store.app("shop")
    assert app is not None and app.config_path == "/srv/shop/baton.yml"
    release = store.release(release_id)
    assert release is not None
    assert (release.version, release.state, release.weight) == ("v1", "pending", 0)
    assert release.command == ["python3", "app.py"] and release.env == {"GREETING": "hello"}
    dep = store.deployment(deployment_id)
    assert dep is not None
    assert (dep.status, dep.step, dep.holder_pid, dep.release_id) == (
        "running",
        "lock",
        4242,
        release_id,
    )


def test_a_second_deployment_of_the_same_app_is_locked_out_and_names_the_holder(
    store: Store,
) -> None:
    first, _ = begin(store)
    store.set_step(first, "ready")
    with pytest.raises(DeploymentLocked) as info:
        begin(store, version="v2")
    message = str(info.value)
    assert f"#{first}" in message and "v1" in message and "4242" in message
    assert "'ready'" in message
    # Nothing of the refused deployment was written.
    assert [r.version for r in store.releases("shop")] == ["v1"]
    # Another app is not affected; once the first finishes, the app is free again.
    begin(store, app="blog")
    store.finish_deployment(first, "succeeded")
    begin(store, version="v2")


def test_the_lock_holds_across_connections(tmp_path: Path) -> None:
    a = Store.open(tmp_path / "baton.db")
    b = Store.open(tmp_path / "baton.db")
    begin(a)
    with pytest.raises(DeploymentLocked):
        begin(b, version="v2")
    a.close()
    b.close()


def test_instances_and_release_updates(store: Store) -> None:
    _, release_id = begin(store)
    one = store.add_instance(release_id, 0, "127.0.0.1:4001", "101:5", "/logs/0.log")
    two = store.add_instance(release_id, 1, "127.0.0.1:4002", "102:5", None)
    store.set_instances_state([one, two], "routed")
    store.update_release(release_id, state="live", weight=100, live_since=12.5)
    assert [i.state for i in store.instances(release_id)] == ["routed", "routed"]
    store.set_instance_state(two, "stopped")
    assert [i.address for i in store.instances(release_id, ("routed",))] == ["127.0.0.1:4001"]
    assert [(r.version, i.index) for r, i in store.active_instances()] == [("v1", 0)]
    release = store.release(release_id)
    assert release is not None and (release.state, release.weight, release.live_since) == (
        "live",
        100,
        12.5,
    )
    store.update_release(release_id, warm_until=99.0)
    store.update_release(release_id, clear_warm_until=True)
    release = store.release(release_id)
    assert release is not None and release.warm_until is None


def test_bad_states_are_refused(store: Store) -> None:
    deployment_id, release_id = begin(store)
    with pytest.raises(ValueError):
        store.update_release(release_id, state="sleeping")
    with pytest.raises(ValueError):
        store.finish_deployment(deployment_id, "running")


# -- the transition tables, enforced --------------------------------------------------------------


S = TypeVar("S", ReleaseState, InstanceState)


def path_to(table: Mapping[S, frozenset[S]], born: S, goal: S) -> list[S]:
    """The states after ``born`` on a shortest allowed way to ``goal`` (breadth first)."""
    ways: dict[S, list[S]] = {born: []}
    todo: list[S] = [born]
    while todo:
        here: S = todo.pop(0)
        for nxt in sorted(table[here]):
            if nxt not in ways:
                ways[nxt] = ways[here] + [nxt]
                todo.append(nxt)
    return ways[goal]


def test_a_transaction_is_all_or_nothing(store: Store) -> None:
    _, release_id = begin(store)
    one = store.add_instance(release_id, 0, "127.0.0.1:4001", "101:5", None)
    with pytest.raises(RuntimeError), store.transaction():
        store.set_instance_state(one, "routed")
        raise RuntimeError("crash between two updates")
    instance = store.instance(one)
    assert instance is not None and instance.state == "starting"


def test_history_and_events(store: Store) -> None:
    first, _ = begin(store)
    store.add_event(first, "shop", "step", {"step": "start"})
    store.finish_deployment(first, "failed", "v1#0 never became ready")
    second, _ = begin(store, version="v2")
    assert [d.id for d in store.deployments("shop")] == [second, first]
    assert [d.id for d in store.running_deployments()] == [second]
    done = store.deployment(first)
    assert done is not None and done.status == "failed" and done.ended is not None
    assert [e.data for e in store.events(first)] == [{"step": "start"}]


def test_an_app_stopped_by_the_user_stays_stopped_until_started(tmp_path: Path) -> None:
    path = tmp_path / "baton.db"
    store = Store.open(path)
    begin(store)
    store.set_app_stopped("shop", True)
    store.close()
    again = Store.open(path)
    app = again.app("shop")
    assert app is not None and app.stopped
    again.set_app_stopped("shop", False)
    app = again.app("shop")
    assert app is not None and not app.stopped
    again.close()


def test_removing_an_app_forgets_it_and_everything_it_had(store: Store) -> None:
    deployment_id, release_id = begin(store)
    store.add_instance(release_id, 0, "127.0.0.1:9000", "pid:1", None)
    store.add_event(deployment_id, "shop", "step", {"step": "start"})
    store.finish_deployment(deployment_id, "succeeded")
    other, _ = begin(store, app="blog")
    store.remove_app("shop")
    assert store.app("shop") is None
    assert store.releases("shop") == []
    assert store.deployments("shop") == []
    assert store.events(deployment_id) == []
    assert store.app("blog") is not None and store.deployment(other) is not None


def release_in(store: Store, state: ReleaseState) -> int:
    """A release of ``shop`` brought to ``state`` through the store, by allowed changes."""
    _, release_id = begin(store, version=f"v-{state}")
    for step in path_to(RELEASE_TRANSITIONS, RELEASE_BORN, state):
        store.update_release(release_id, state=step)
    return release_id


def instance_in(store: Store, release_id: int, state: InstanceState) -> int:
    index = len(store.instances(release_id))
    instance_id = store.add_instance(release_id, index, f"127.0.0.1:{4001 + index}", "1:1", None)
    for step in path_to(INSTANCE_TRANSITIONS, INSTANCE_BORN, state):
        store.set_instance_state(instance_id, step)
    return instance_id


@pytest.mark.parametrize(
    ("old", "new"),
    [(old, new) for old, targets in RELEASE_TRANSITIONS.items() for new in sorted(targets)],
)
def test_the_store_writes_every_allowed_release_change(
    tmp_path: Path, old: ReleaseState, new: ReleaseState
) -> None:
    store = Store.open(tmp_path / "baton.db")
    release_id = release_in(store, old)
    store.update_release(release_id, state=new, weight=50)
    release = store.release(release_id)
    assert release is not None and (release.state, release.weight) == (new, 50)
    assert isinstance(release.state, ReleaseState)
    store.close()


@pytest.mark.parametrize(
    ("old", "new"),
    [(old, new) for old, targets in INSTANCE_TRANSITIONS.items() for new in sorted(targets)],
)
def test_the_store_writes_every_allowed_instance_change(
    tmp_path: Path, old: InstanceState, new: InstanceState
) -> None:
    store = Store.open(tmp_path / "baton.db")
    _, release_id = begin(store)
    instance_id = instance_in(store, release_id, old)
    store.set_instance_state(instance_id, new)
    instance = store.instance(instance_id)
    assert instance is not None and instance.state == new
    assert isinstance(instance.state, InstanceState)
    store.close()


def test_the_store_refuses_an_illegal_release_change_and_changes_nothing(store: Store) -> None:
    release_id = release_in(store, ReleaseState.FAILED)
    before = store.release(release_id)
    with pytest.raises(IllegalTransition) as info:
        store.update_release(release_id, state="warm", weight=100, warm_until=99.0)
    assert str(info.value).startswith(
        "shop: release v-failed (#1) cannot go from 'failed' to 'warm'"
    )
    assert store.release(release_id) == before  # neither the state nor the weight moved


def test_the_store_refuses_to_route_a_stopped_instance_and_changes_nothing(store: Store) -> None:
    _, release_id = begin(store)
    stopped = instance_in(store, release_id, InstanceState.STOPPED)
    before = store.instance(stopped)
    with pytest.raises(IllegalTransition, match=r"shop: instance v1#0 \(#1\) cannot go from"):
        store.set_instance_state(stopped, "routed")
    assert store.instance(stopped) == before


def test_one_illegal_change_in_a_batch_writes_none_of_it(store: Store) -> None:
    _, release_id = begin(store)
    ready = instance_in(store, release_id, InstanceState.READY)
    failed = instance_in(store, release_id, InstanceState.FAILED)
    with pytest.raises(IllegalTransition, match="'failed' to 'routed'"):
        store.set_instances_state([ready, failed], "routed")
    assert [i.state for i in store.instances(release_id)] == ["ready", "failed"]


def test_writing_the_state_an_object_has_is_allowed(store: Store) -> None:
    release_id = release_in(store, ReleaseState.LIVE)
    store.update_release(release_id, state="live", weight=100)
    routed = instance_in(store, release_id, InstanceState.ROUTED)
    store.set_instance_state(routed, "routed")
    assert [i.state for i in store.instances(release_id)] == ["routed"]


def test_a_deployment_ends_once(store: Store) -> None:
    deployment_id, _ = begin(store)
    store.finish_deployment(deployment_id, "succeeded")
    with pytest.raises(IllegalTransition, match="deployment #1 cannot go from 'succeeded'"):
        store.finish_deployment(deployment_id, "aborted", "baton down")
    done = store.deployment(deployment_id)
    assert done is not None and done.status == DeploymentStatus.SUCCEEDED and done.error is None
