"""Expand/contract rules without a database: when a contract may run, what it forbids."""

from __future__ import annotations

from typing import Any

import pytest

from baton.config import parse_config
from baton.deploy.migrations import (
    CONTRACTED,
    EXPANDED,
    NONE,
    PENDING,
    contract_window,
    rollback_blocker,
    schema_phase,
)
from baton.deploy.plan import plan_deploy
from baton.errors import ConfigError
from baton.state.states import ReleaseState
from baton.state.store import MigrationRow, ReleaseRow

DAY = 86400.0


def release(rid: int, version: str, live_since: float | None = None) -> ReleaseRow:
    return ReleaseRow(
        id=rid,
        app="shop",
        version=version,
        command="true",
        env={},
        cwd="/",
        config={},
        config_hash="",
        state=ReleaseState.LIVE,
        weight=100,
        live_since=live_since,
        warm_until=None,
        created=0.0,
    )


def test_a_contract_waits_for_the_window_and_says_how_long() -> None:
    live = release(2, "v2", live_since=1000.0)
    expanded = MigrationRow(2, "shop", 900.0, None)
    early = contract_window(live, expanded, contract_after=DAY, now=1000.0 + 3600)
    assert not early.allowed
    assert early.seconds_left == pytest.approx(DAY - 3600)
    assert "in 23h" in early.why
    assert schema_phase(live, expanded, early) == EXPANDED
    later = contract_window(live, expanded, contract_after=DAY, now=1000.0 + DAY)
    assert later.allowed and schema_phase(live, expanded, later) == PENDING


def test_no_expand_or_an_old_contract_means_nothing_to_contract() -> None:
    live = release(2, "v2", live_since=0.0)
    none = contract_window(live, None, contract_after=0, now=10.0)
    assert not none.allowed and "ran no expand" in none.why
    assert schema_phase(live, None, none) == NONE
    done = MigrationRow(2, "shop", 1.0, 5.0)
    window = contract_window(live, done, contract_after=0, now=10.0)
    assert not window.allowed and "already ran" in window.why
    assert schema_phase(live, done, window) == CONTRACTED


def test_only_releases_older_than_a_contracted_one_are_blocked() -> None:
    migrations = [MigrationRow(2, "shop", 1.0, 5.0), MigrationRow(4, "shop", 6.0, None)]
    assert rollback_blocker(release(1, "v1"), migrations) == migrations[0]
    assert rollback_blocker(release(2, "v2"), migrations) is None  # the expanded one itself
    assert rollback_blocker(release(3, "v3"), migrations) is None
    assert rollback_blocker(release(1, "v1"), [MigrationRow(2, "shop", 1.0, None)]) is None


def test_the_expand_runs_before_any_new_instance_starts() -> None:
    for strategy in ("blue-green", "rolling"):
        kinds = [
            s.kind
            for s in plan_deploy(strategy, new_count=2, old=[7], pre_deploy=True, expand=True)
        ]
        assert kinds.index("pre_deploy") < kinds.index("expand") < kinds.index("start")
    assert "expand" not in [s.kind for s in plan_deploy("blue-green", new_count=1, old=[])]


def _cfg(migrations: Any) -> Any:
    return parse_config({"app": "shop", "run": {"command": "x"}, "migrations": migrations})


def test_migration_keys_and_their_errors() -> None:
    cfg = _cfg({"expand": "./m expand", "contract": "./m contract"})
    assert cfg.migrations.contract_after == DAY and cfg.migrations.auto_contract is False
    assert _cfg({"contract_after": "90m"}).migrations.contract_after == 5400
    with pytest.raises(ConfigError, match=r"migrations\.auto_contract: expected true or false"):
        _cfg({"auto_contract": "yes please"})
    with pytest.raises(ConfigError, match=r"migrations\.contract_after"):
        _cfg({"contract_after": "soon"})
    with pytest.raises(ConfigError, match=r"migrations\.expnad"):
        _cfg({"expnad": "x"})
