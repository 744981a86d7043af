"""The status read model: what runs, what the proxy routes, and what happened, for readers.

Pure reads of the store, the runtimes and the proxy, shaped for ``baton status``,
``baton history`` and ``baton logs`` (and the dashboard, which builds on them). Nothing
here changes anything.
"""

from __future__ import annotations

from typing import Any

from baton.deploy import releases as artifacts
from baton.deploy.deployment import instance_of, runtime_name
from baton.deploy.operations import Operations
from baton.deploy.plan import live_version
from baton.errors import BatonError, UsageError
from baton.runtime.base import Instance, Runtime
from baton.state.states import ACTIVE_RELEASE_STATES, InstanceState, ReleaseState
from baton.state.store import InstanceRow, ReleaseRow, Store


def live_release(store: Store, app: str) -> ReleaseRow | None:
    """The app's live release (its desired state), if it has one."""
    live = store.releases(app, (ReleaseState.LIVE,))
    return live[-1] if live else None


async def status(
    ops: Operations,
    reconciled: dict[str, Any] | None,
    replaced: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    """``baton status``: each app's releases, their instances' health, the running
    deployment, what reconcile cleaned and which dead instances were replaced."""
    store = ops.store
    try:
        targets = await ops.proxy.targets()
        proxy_ok = True
    except BatonError:
        targets, proxy_ok = {}, False
    apps: dict[str, Any] = {}
    for app in store.apps():
        pools = ops.router.pools(app.name)
        releases = []
        for release in store.releases(app.name, ACTIVE_RELEASE_STATES):
            instances = []
            for row in store.instances(
                release.id,
                (
                    InstanceState.STARTING,
                    InstanceState.READY,
                    InstanceState.ROUTED,
                    InstanceState.DRAINING,
                ),
            ):
                seen = targets.get(row.address)
                try:
                    alive: bool | None = await ops.runtime_for(release).alive(
                        instance_of(release, row)
                    )
                except BatonError:
                    alive = None  # the runtime's engine does not answer
                if alive is None:
                    health = "unknown"
                elif not alive:
                    health = "down"
                elif seen is None:
                    health = "up"
                else:
                    health = "healthy" if seen.get("healthy", True) else "unhealthy"
                seen = seen or {}
                instances.append(
                    {
                        "index": row.index,
                        "address": row.address,
                        "state": row.state,
                        "health": health,
                        "in_flight": seen.get("in_flight", 0),
                        "tunnels": seen.get("tunnels", 0),
                    }
                )
            releases.append(
                {
                    "version": release.version,
                    "state": release.state,
                    "weight": release.weight,
                    "warm_until": release.warm_until,
                    "artifact": artifacts.describe(release.artifact),
                    "instances": instances,
                }
            )
        running = store.running_deployment(app.name)
        route = app.config.get("proxy", {})
        cleaned = (reconciled or {}).get("cleaned", [])
        desired = live_release(store, app.name)
        apps[app.name] = {
            "stopped": app.stopped,
            "desired": desired.version if desired else None,
            "runtime": runtime_name(app.config),
            "live": live_version([p for _, p in pools]),
            "listen": route.get("listen"),
            "hosts": route.get("hosts", []),
            "releases": releases,
            "deployment": running.as_json() if running else None,
            "cleaned": [c for c in cleaned if c["app"] == app.name],
            "replaced": list(replaced.get(app.name, [])),
        }
    return {"proxy": {"ok": proxy_ok}, "apps": apps, "reconcile": reconciled}


def history(store: Store, app: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """``baton history``: the deployments, newest first, with versions and migrations."""
    out = []
    for dep in store.deployments(app, limit):
        release = store.release(dep.release_id) if dep.release_id else None
        previous = store.release(dep.previous_release_id) if dep.previous_release_id else None
        entry = {
            **dep.as_json(),
            "version": release.version if release else None,
            "previous": previous.version if previous else None,
            "artifact": artifacts.describe(release.artifact) if release else None,
        }
        migrations = [e.data for e in store.events(dep.id) if e.kind == "migration"]
        if migrations:
            entry["migrations"] = migrations
        out.append(entry)
    return out


def log_sources(
    ops: Operations, app: str, version: str | None
) -> list[tuple[str, Runtime, Instance]]:
    """(label, runtime, instance) of each instance of ``version`` (default: the live
    release); the latest instance per index. The runtime reads the logs: the process
    runtime its log files, the docker runtime the containers (or, once a container is
    removed, the file its logs were saved to)."""
    store = ops.store
    if store.app(app) is None:
        raise UsageError(f"no app named {app!r} was ever deployed on this host")
    releases = store.releases(app)
    if version is None:
        chosen = [r for r in releases if r.state == ReleaseState.LIVE] or releases[-1:]
    else:
        chosen = [r for r in releases if r.version == version]
        if not chosen:
            raise UsageError(f"{app} has no release {version!r}")
        chosen = chosen[-1:]
    sources: list[tuple[str, Runtime, Instance]] = []
    for release in chosen:
        rows = store.instances(release.id)
        latest: dict[int, InstanceRow] = {row.index: row for row in rows}
        runtime = ops.runtime_for(release)
        for index, row in sorted(latest.items()):
            label = f"{release.version}#{index}"
            sources.append((label, runtime, instance_of(release, row)))
    return sources
