"""The desired state of the host's apps, and convergence to it: `baton up` and the app verbs.

The store holds the desired state: each app's live release (the release in state ``live``,
whether or not its instances run: a reboot or ``baton down`` never takes that away) and
whether the user stopped the app (``apps.stopped``). This module makes the host match it:

- ``converge`` runs at every start of the control plane, after recovery and before the API
  answers: for every app that is not stopped, it starts what the live release lacks (after
  a reboot or ``baton down``: every instance), waits until they are ready and routes them.
  Instances that still run (the control plane alone was restarted) were adopted by recovery
  and are kept when they answer their health check, so a restart of the control plane
  changes nothing users see; one that runs but does not answer (hung) is replaced like a
  dead one, and stopped once its replacement is routed.
- ``stop_app`` takes the app out of the route table, drains and stops its instances and marks
  it stopped: it stays stopped across ``baton up`` until ``start_app`` (or a new deploy).
- ``remove_app`` does the same, then forgets the app, its releases and their snapshots.
- ``running_run`` / ``last_outcome``: what ``baton watch`` re-attaches to (a deployment in
  progress) or replays (the last one's outcome, as the events a follower saw at its end).

Instances are started by the engine's own path for a release's instances (``Engine.repair``,
which a deploy's start step shares), so whatever a release carries (its snapshot, image
digest, env) applies. Each verb takes the app's lock and refuses while it deploys.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from typing import Any

from baton.config import HealthConfig, parse_config
from baton.deploy.engine import DeploymentRun, Engine
from baton.deploy.probes import ProbeError, http_get, tcp_connect
from baton.errors import DeploymentFailed, DeploymentLocked, UsageError
from baton.events import Event, Intro, Result
from baton.state.states import (
    ACTIVE_RELEASE_STATES,
    RUNNING_INSTANCE_STATES,
    InstanceState,
    ReleaseState,
)
from baton.state.store import InstanceRow, ReleaseRow

log = logging.getLogger("baton.lifecycle")

ADOPT_PROBES = 3  # health checks an adopted instance gets before it counts as hung


async def _answers(address: str, health: HealthConfig) -> bool:
    """Whether an adopted instance answers its health check (a few tries, not a verdict on
    one slow answer)."""
    for _ in range(ADOPT_PROBES):
        try:
            if health.path:
                status, _ = await http_get(address, health.path, health.timeout)
                if 200 <= status < 300:
                    return True
            else:
                await tcp_connect(address, health.timeout)
                return True
        except ProbeError:
            pass
        await asyncio.sleep(health.interval)
    return False


async def _converge_release(engine: Engine, release: ReleaseRow) -> list[str]:
    cfg = parse_config(release.config)
    routed = engine.store.instances(release.id, (InstanceState.ROUTED,))
    answers = await asyncio.gather(*(_answers(row.address, cfg.health) for row in routed))
    hung = [(release, row) for row, ok in zip(routed, answers, strict=True) if not ok]
    for _, row in hung:
        engine.store.set_instance_state(
            row.id, InstanceState.DRAINING
        )  # replaced below, like a dead one
    notes = await engine.repair(release, now=True)
    if not hung:
        return notes
    if len(engine.store.instances(release.id, (InstanceState.ROUTED,))) < cfg.instances:
        # No replacement: keeping a hung instance routed is no worse than nothing.
        for _, row in hung:
            engine.store.set_instance_state(row.id, InstanceState.ROUTED)
        return notes
    await engine.drain_and_stop(hung, cfg.deploy.drain_timeout, cfg.deploy.stop_timeout)
    what = ", ".join(row.address for _, row in hung)
    return [*notes, f"{release.app} {release.version}: stopped {what}: running, but not healthy"]


async def converge(engine: Engine) -> list[str]:
    """Start every live release's missing instances (apps not stopped), ready and routed.

    Apps converge concurrently; a release that cannot start is left to the instance watcher
    (which tries again with a back-off). Returns notes for the log.
    """

    async def one(app: str) -> list[str]:
        notes: list[str] = []
        async with engine.app_lock(app):
            for release in engine.store.releases(app, (ReleaseState.LIVE,)):
                if engine.store.running_deployment(app) is not None:
                    break
                notes.extend(await _converge_release(engine, release))
        return notes

    apps = [a.name for a in engine.store.apps() if not a.stopped]
    found = await asyncio.gather(*(one(app) for app in apps), return_exceptions=True)
    notes: list[str] = []
    for app, result in zip(apps, found, strict=True):
        if isinstance(result, BaseException):
            notes.append(f"{app}: could not start its live release: {result}")
        else:
            notes.extend(result)
    return notes


def _known(engine: Engine, app: str) -> None:
    if engine.store.app(app) is None:
        known = ", ".join(a.name for a in engine.store.apps()) or "none"
        raise UsageError(f"no app named {app!r} on this host (known: {known})")


def _unlocked(engine: Engine, app: str) -> None:
    running = engine.store.running_deployment(app)
    if running is not None:
        raise DeploymentLocked(
            f"a deployment of {app} is running (deployment #{running.id}, at step"
            f" {running.step!r}); wait for it or `baton watch {app}`"
        )


async def _take_down(engine: Engine, app: str) -> list[str]:
    """Out of the route table, drained, stopped; warm and pending releases end."""
    rows: list[tuple[ReleaseRow, InstanceRow]] = []
    with engine.store.transaction():
        for release in engine.store.releases(app, ACTIVE_RELEASE_STATES):
            for row in engine.store.instances(release.id, RUNNING_INSTANCE_STATES):
                engine.store.set_instance_state(row.id, InstanceState.DRAINING)
                rows.append((release, row))
            if release.state != ReleaseState.LIVE:
                engine.store.update_release(release.id, state=ReleaseState.STOPPED, weight=0)
    await engine.router.push_app(app)
    if rows:
        deploy = parse_config(rows[-1][0].config).deploy
        await engine.drain_and_stop(rows, deploy.drain_timeout, deploy.stop_timeout)
    return [row.address for _, row in rows]


async def stop_app(engine: Engine, app: str) -> dict[str, Any]:
    """``baton app stop``: drain and stop the app; it stays stopped across ``baton up``."""
    _known(engine, app)
    async with engine.app_lock(app):
        _unlocked(engine, app)
        engine.store.set_app_stopped(app, True)
        stopped = await _take_down(engine, app)
    engine.store.add_event(None, app, "app_stopped", {"instances": stopped})
    log.info("%s stopped by the user (%d instance(s))", app, len(stopped))
    return {"app": app, "stopped": stopped}


async def start_app(engine: Engine, app: str) -> dict[str, Any]:
    """``baton app start``: run the app's live release again (ready, then routed)."""
    _known(engine, app)
    async with engine.app_lock(app):
        _unlocked(engine, app)
        live = engine.store.releases(app, (ReleaseState.LIVE,))
        if not live:
            raise UsageError(f"{app} has no live release to start; deploy it with `baton deploy`")
        engine.store.set_app_stopped(app, False)
        release = live[-1]
        notes = await engine.repair(release, now=True)
    wanted = parse_config(release.config).instances
    if len(engine.store.instances(release.id, (InstanceState.ROUTED,))) < wanted:
        # The instance watcher goes on trying; the user hears why it is not up yet.
        why = notes[-1] if notes else "its instances did not start"
        raise DeploymentFailed(f"{app} {release.version} is not serving yet: {why}")
    engine.store.add_event(None, app, "app_started", {"version": live[-1].version})
    return {"app": app, "version": live[-1].version}


async def remove_app(engine: Engine, app: str) -> dict[str, Any]:
    """``baton app remove``: drain and stop the app, then forget it and its releases."""
    _known(engine, app)
    async with engine.app_lock(app):
        _unlocked(engine, app)
        engine.store.set_app_stopped(app, True)  # a crash half-way leaves it stopped
        stopped = await _take_down(engine, app)
        engine.store.remove_app(app)
        engine.secrets.forget(app)
        engine.replaced.pop(app, None)
    snapshots = engine.state_dir / "releases" / app
    if snapshots.is_dir():
        await asyncio.to_thread(shutil.rmtree, snapshots, True)
    log.info("%s removed (%d instance(s) stopped)", app, len(stopped))
    return {"app": app, "stopped": stopped, "removed": True}


# -- re-attaching to a deployment (`baton watch`) ---------------------------------------------------


def running_run(engine: Engine, app: str | None) -> DeploymentRun | None:
    """The deployment in progress of ``app`` (or the only one in progress), if any."""
    runs = [r for r in engine.runs.values() if not r.finished and (app is None or r.app == app)]
    return runs[-1] if len(runs) == 1 or (runs and app is not None) else None


def last_outcome(engine: Engine, app: str) -> list[Event]:
    """The last deployment of ``app`` as the events a follower would have seen at its end."""
    found = engine.history(app, 1)
    if not found:
        raise UsageError(f"{app} has no deployment yet")
    dep = found[0]
    ok = dep["status"] == "succeeded"
    if ok:
        message = f"{app} {dep['version']} is live"
    elif dep["status"] == "running":
        message = f"deployment #{dep['id']} is recorded as running, but no control plane runs it"
    else:
        message = dep["error"] or dep["status"]
    result = Result(
        deployment=dep["id"],
        ok=ok,
        exit_code=0 if ok else 1,
        status=dep["status"],
        message=message,
        version=dep["version"],
        previous=dep["previous"],
        finished=True,
    )
    if dep["ended"] is not None:
        result.seconds = round(dep["ended"] - dep["started"], 3)
    intro = Intro(
        id=dep["id"],
        app=app,
        kind=dep["kind"],
        version=dep["version"],
        previous=dep["previous"],
        strategy=dep["strategy"],
        finished=True,
    )
    return [intro, result]
