"""The deploy executor in-process: undo from every step, recovery after a crash at every step.

Each test builds the engine in this process on a temp state dir and SQLite store, with the
real process runtime (the example app as child processes) and a real ``baton proxy``
child process (``tests/support/proxy.py``) serving the app's public port. A deployment is
driven step by step with ``Executor.run_steps(d, stop_after=k)``:

- undo: after the first k steps (every step up to the commit point: past it the executor
  never undoes), ``undo`` must leave the old release serving every request and stop every
  instance the deployment started;
- crash: after the first k steps (every step), the engine is dropped as a killed control
  plane would be, and a fresh engine on the same state dir (a new store connection, a new
  proxy client and runtimes) recovers: exactly one release is live, the proxy serves only
  it, and no instance is left running that the live release does not route.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from baton.deploy.deployment import Deployment
from baton.deploy.engine import Engine
from baton.deploy.proxyclient import ProxyClient
from baton.deploy.strategies.base import commit_point
from baton.deploy.strategies.choice import strategy_for
from baton.deploy.undo import undo
from baton.runtime.base import Runtimes
from baton.state.store import Store
from tests.support.host import Host
from tests.support.proxy import ProxyProcess


@dataclass
class Site:
    """One host's parts for an in-process engine: its config, state dir and proxy."""

    host: Host
    config: Path
    proxy: ProxyProcess

    def engine(self) -> Engine:
        store = Store.open(self.host.state_dir / "baton.db")
        return Engine(
            store, Runtimes(self.host.state_dir), ProxyClient(self.proxy.admin), self.host.state_dir
        )

    async def served(self, n: int = 6) -> set[str]:
        """The versions that answer ``n`` requests through the proxy."""
        seen = set()
        for _ in range(n):
            status, body = await self.host.get()
            assert status == 200, (status, body)
            seen.add(body.strip())
        return seen


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    host = Host(tmp_path)
    config = host.config({"deploy": {"max_surge": 1, "drain_timeout": "2s"}})
    proxy = ProxyProcess(port=host.port)
    proxy.start()
    try:
        yield Site(host, config, proxy)
    finally:
        proxy.close()


async def _deploy(engine: Engine, site: Site, label: str, strategy: str) -> None:
    run = await engine.prepare_deploy(
        str(site.config), version=label, env={"APP_VERSION": label}, strategy=strategy
    )
    engine.start(run)
    assert run.task is not None
    await run.task
    result = run.events[-1].to_dict()
    assert result["ok"], result


async def _prepare(engine: Engine, site: Site, label: str, strategy: str) -> Deployment:
    run = await engine.prepare_deploy(
        str(site.config), version=label, env={"APP_VERSION": label}, strategy=strategy
    )
    return engine.claim(run)


def _live(engine: Engine, app: str = "shop") -> list[str]:
    return [r.version for r in engine.store.releases(app, ("live",))]


async def _top_up(engine: Engine) -> None:
    """The live release back to its configured instances (what healing does)."""
    for release in engine.store.releases("shop", ("live",)):
        await engine.repair(release, now=True)
    await engine.routes().push_app("shop")


async def _assert_one_release_and_no_orphans(engine: Engine, site: Site) -> str:
    store = engine.store
    assert store.running_deployments() == []
    live = store.releases("shop", ("live",))
    assert len(live) == 1, [(r.version, r.state) for r in store.releases("shop")]
    assert store.releases("shop", ("pending", "warm")) == []
    routed = store.instances(live[0].id, ("routed",))
    assert routed, "the live release routes no instance"
    owned = await engine.runtime_for(live[0]).owned()
    assert {i.ref for i in owned} == {r.ref for r in routed}, "an instance is orphaned"
    assert await site.served() == {live[0].version}
    return live[0].version


@pytest.mark.parametrize("strategy", ["blue-green", "rolling"])
async def test_undo_from_every_step_leaves_the_old_release_serving(
    site: Site, strategy: str
) -> None:
    engine = site.engine()
    try:
        await _deploy(engine, site, "v1", strategy)
        assert await site.served() == {"v1"}
        k = 1
        while True:
            await _top_up(engine)
            d = await _prepare(engine, site, f"v2-{k}", strategy)
            moves = strategy_for(engine.ops, d).plan(engine.ops, d)
            last = commit_point(moves) + 1  # past the commit point there is no undo
            await engine.executor.run_steps(d, stop_after=k)
            assert await undo(engine.ops, d), f"undo after step {k} did not restore v1"
            engine.store.finish_deployment(d.run.id, "failed", f"undone after step {k}")
            assert _live(engine) == ["v1"], k
            assert await site.served() == {"v1"}, f"after undo from step {k} ({moves[k - 1]})"
            started = {row_id for row_id, _ in d.started.values()}
            left = [
                row
                for row in engine.store.instances(d.release.id)
                if row.id in started and row.state not in ("failed", "stopped")
            ]
            assert left == [], f"undo after step {k} left {left}"
            owned = await engine.runtime_for(d.release).owned()
            assert not [i for i in owned if i.version == d.release.version], k
            if k >= last:
                break
            k += 1
    finally:
        await engine.stop_all()


@pytest.mark.parametrize("strategy", ["blue-green", "rolling"])
async def test_a_crash_between_any_two_steps_recovers_to_exactly_one_release(
    site: Site, strategy: str
) -> None:
    engine = site.engine()
    try:
        await _deploy(engine, site, "v1", strategy)
        k = 1
        while True:
            await _top_up(engine)
            before = _live(engine)
            d = await _prepare(engine, site, f"v2-{k}", strategy)
            steps = len(strategy_for(engine.ops, d).plan(engine.ops, d))
            await engine.executor.run_steps(d, stop_after=k)
            await engine.proxy.close()
            engine.store.close()
            # The control plane died here; a new one starts on the same state dir.
            engine = site.engine()
            await engine.recover()
            live = await _assert_one_release_and_no_orphans(engine, site)
            assert [live] == before or live == d.release.version, (k, before, live)
            if k >= steps:
                break
            k += 1
    finally:
        await engine.stop_all()
        await engine.proxy.close()
