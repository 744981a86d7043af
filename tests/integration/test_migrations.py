"""Expand/contract schema migrations end to end, against real SQLite and real PostgreSQL.

The example app's release v1 reads ``items(title, legacy_flag)``; v2 reads
``items(title, price)``. v2's baton.yml brings the migrations: the expand adds ``price``
(v1 still works on the expanded schema), the contract drops ``legacy_flag`` (after it, v1
would fail). Everything runs under continuous load on ``/items``: not one request fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.host import APP_DIR, Host
from tests.support.load import Load
from tests.support.postgres import pg_bin, postgres_cluster

pytestmark = pytest.mark.timeout(300)
PY = sys.executable


def _migrate(url: str, step: str) -> str:
    done = subprocess.run(
        [PY, "migrate.py", step],
        cwd=APP_DIR,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'shop.db'}"
        _migrate(url, "init")
        yield url
        return
    if pg_bin() is None:
        if os.environ.get("BATON_REQUIRE_POSTGRES") == "1":
            pytest.fail("BATON_REQUIRE_POSTGRES=1 but PostgreSQL is not installed")
        pytest.skip("PostgreSQL is not installed (set BATON_REQUIRE_POSTGRES=1 to fail)")
    with postgres_cluster() as url:
        _migrate(url, "init")
        yield url


def _configs(host: Host, url: str, contract_after: str = "3s") -> tuple[Path, Path]:
    v1 = host.config(
        {
            "instances": 1,
            "run": {"env": {"APP_VERSION": "v1", "SCHEMA": "v1", "DATABASE_URL": url}},
        },
        name="baton-v1.yml",
    )
    v2 = host.config(
        {
            "instances": 1,
            "run": {"env": {"APP_VERSION": "v2", "SCHEMA": "v2", "DATABASE_URL": url}},
            "migrations": {
                "expand": f"{PY} migrate.py expand",
                "contract": f"{PY} migrate.py contract",
                "contract_after": contract_after,
                "status": f"{PY} migrate.py status",
            },
        },
        name="baton-v2.yml",
    )
    return v1, v2


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[Host]:
    h = Host(tmp_path)
    try:
        up = await h.baton("up", "--detach", timeout=60)
        assert up.rc == 0, up
        yield h
    finally:
        await h.teardown()


async def _phase(host: Host) -> dict[str, Any]:
    result = await host.baton("migrate", "status", "--json")
    assert result.rc == 0, result
    state: dict[str, Any] = json.loads(result.out)["apps"][0]
    return state


async def test_expand_then_contract_under_load_and_rollback_refused_after_it(
    host: Host, database: str
) -> None:
    v1, v2 = _configs(host, database)
    first = await host.deploy("--version", "v1", config=v1)
    assert first.rc == 0, first
    load = await Load().start(
        host.url, path="/items", concurrency=4, max_requests=500_000, max_seconds=200, delay=0.005
    )

    deployed = await host.deploy("--version", "v2", config=v2)
    assert deployed.rc == 0, deployed
    assert "expand: added items.price" in deployed.out
    assert (await _phase(host))["phase"] == "expanded"

    early = await host.baton("migrate", "contract")
    assert early.rc == 2, early
    assert "not allowed yet" in early.err and "in " in early.err

    # Before the contract, v1 runs on the expanded schema: rollback and forth again.
    back = await host.baton("rollback", "v1")
    assert back.rc == 0, back
    assert (await host.get("/items"))[1].startswith("v1 v1 3 items")
    again = await host.baton("rollback", "v2")
    assert again.rc == 0, again

    deadline = time.monotonic() + 60
    while (state := await _phase(host))["phase"] != "pending":
        assert state["phase"] == "expanded", state
        assert time.monotonic() < deadline, state
        await asyncio.sleep(0.3)
    contracted = await host.baton("migrate", "contract")
    assert contracted.rc == 0, contracted
    assert "contract: dropped items.legacy_flag" in contracted.out
    state = await _phase(host)
    assert state["phase"] == "contracted"
    assert state["status_output"] == ["items(id, title, price)"]

    refused = await host.baton("rollback", "v1")
    assert refused.rc == 2, refused
    assert "refusing to roll shop back to v1: the contract migration of v2 ran" in refused.err
    assert "--force" in refused.err
    assert (await host.get("/items"))[1].startswith("v2 v2 3 items")

    outcome = await load.stop()
    assert outcome.failures == [], outcome.summary()
    served = {s.value.split()[0] for s in outcome.timeline}
    assert served == {"v1", "v2"}, served

    history = await host.baton("history", "--json")
    deployments = json.loads(history.out)["deployments"]
    phases = [(m["phase"], m["ok"]) for d in deployments for m in d.get("migrations", [])]
    assert ("expand", True) in phases and ("contract", True) in phases
    contract = next(d for d in deployments if d["kind"] == "contract")
    assert contract["status"] == "succeeded"
    assert "contract: dropped items.legacy_flag" in contract["migrations"][0]["output"]


async def test_a_failed_expand_fails_the_deploy_with_nothing_switched(
    host: Host, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    _migrate(url, "init")
    v1, _ = _configs(host, url)
    first = await host.deploy("--version", "v1", config=v1)
    assert first.rc == 0, first
    broken = host.config(
        {
            "instances": 1,
            "run": {"env": {"APP_VERSION": "v2", "SCHEMA": "v2", "DATABASE_URL": url}},
            "migrations": {"expand": "echo 'column price: permission denied'; exit 3"},
        },
        name="baton-broken.yml",
    )
    load = await Load().start(
        host.url, path="/items", concurrency=4, max_requests=200_000, max_seconds=100, delay=0.005
    )
    failed = await host.deploy("--version", "v2", config=broken)
    assert failed.rc == 1, failed
    assert "expand hook" in failed.err and "exited 3" in failed.err
    assert "permission denied" in failed.err
    outcome = await load.stop()
    assert outcome.failures == [], outcome.summary()
    assert {s.value.split()[0] for s in outcome.timeline} == {"v1"}
    assert (await host.status())["apps"]["shop"]["live"] == "v1"
    assert "price" not in _migrate(url, "status")
