"""A rolling deploy behind edge proxies: the hosts move in batches, the edges keep routing.

``edge_rolling`` is the controller's side of ``baton deploy`` of an app with ``edge.listen``
and ``deploy.strategy: rolling``, when the edges route to the app hosts' proxies (hosts
without ``--instance-ip``): the hosts get the release in batches of ``hosts_at_once``
(``roll_out``: ``max_unavailable_hosts``, each batch verified before the next, every host
moved switched back on a failure) while every edge keeps routing to every host's proxy.
Each host's own switch is atomic in its proxy, so an edge never sees a failure; the fleet
serves both releases while it rolls, as rolling means. Once every host is on the release,
the edge route is published again with the same hosts, naming the new release (the release
the fleet serves, which the next blue-green starts from); the first deploy publishes it
after the rollout, as blue-green does.

``plan`` (pure) decides the path: when the edges route straight to instances (the route's
``instances``, or every host publishing instances of the live release) a host switching its
own proxy would pull its instances out from under the edges, so the deploy **stays the
staged cutover** (``baton.cluster.instancecut``: every host stages, one revision cuts every
edge over, no host leaves the rotation).

The rollout runs under the deployment id ``DEPLOYMENT-rolling`` (its own record, which
``roll_out`` resumes); the outcome is then recorded under the request's deployment id, as
for other fleet deploys, so ``baton deploy`` ends only when the edges route to the release.
Every write (desired releases, edge route, records) goes through the controller's fenced
client (``Fence.current``): a leader deposed mid-way writes nothing more.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Literal

from baton.cluster import keys
from baton.cluster.edge import EdgeRoute, publish, published, wait_applied
from baton.cluster.etcd import Etcd
from baton.cluster.fence import Fence
from baton.cluster.instancecut import instances_ready, staged_blue_green
from baton.cluster.rollout import DEPLOYMENTS, RolloutResult, deployment_record, roll_out

log = logging.getLogger("baton.cluster")

APPLY_TIMEOUT = 30.0  # for every edge to apply the route naming the new release
SUFFIX = "-rolling"  # the rollout's own deployment id: DEPLOYMENT-rolling

Way = Literal["rolling", "staged"]


def plan(route: EdgeRoute | None, to_instances: bool, *, resuming: bool = False) -> Way:
    """How a rolling deploy through the edges runs: ``rolling`` (hosts in batches, the edges
    routing to every host's proxy) or ``staged`` (the staged cutover): staged when the edges
    route straight to instances (``route.instances``, or ``to_instances``: every host
    publishes instances of the live release), unless a rollout of this deployment is already
    under way (``resuming``: a new leader finishes what the last one began). With no edge
    route yet (the first deploy) the hosts roll, then the edges get their first route."""
    if resuming or route is None:
        return "rolling"
    return "staged" if route.instances or to_instances else "rolling"


async def resolve(etcd: Etcd, request: keys.DeployRequest) -> tuple[EdgeRoute | None, Way]:
    """The edge route published now and ``plan``'s path for ``request``."""
    app, hosts = request.release.app, list(request.hosts)
    route = await published(etcd, app)
    to_instances = (
        route is not None
        and not route.instances
        and await instances_ready(etcd, app, route.version, hosts)
    )
    resuming = await deployment_record(etcd, app, request.release.deployment + SUFFIX) is not None
    return route, plan(route, to_instances, resuming=resuming)


async def edge_rolling(etcd: Etcd, request: keys.DeployRequest, holder: str) -> RolloutResult:
    """Carry out ``request`` (``edge`` and ``edge_rolling`` set) as the module docstring says;
    called again with the same deployment id (a new leader), resume it."""
    release, hosts = request.release, list(request.hosts)
    assert request.edge is not None
    app = release.app
    _, path = await resolve(etcd, request)
    if path == "staged":
        log.info(
            "%s %s: the edges route straight to instances; rolling runs as the staged cutover",
            app, release.deployment,
        )  # fmt: skip
        return await staged_blue_green(etcd, request, holder)
    rolled = await roll_out(
        etcd,
        replace(release, deployment=release.deployment + SUFFIX),
        hosts,
        hosts_at_once=request.hosts_at_once,
        skip_unreachable=request.skip_unreachable,
        configs=request.configs,
        holder=holder,
        max_unavailable=request.max_unavailable_hosts or None,
    )
    message, revision = rolled.message, None
    if rolled.ok:  # every host serves it: the edge route names it (same hosts)
        route = EdgeRoute(
            app, request.edge, tuple(hosts), release.version, request.edge_health,
            instances=await instances_ready(etcd, app, release.version, hosts),
        )  # fmt: skip
        revision = await publish(etcd, route)
        try:
            await wait_applied(etcd, revision, APPLY_TIMEOUT)
        except TimeoutError as exc:  # they route to the hosts, which serve it: not a failure
            message += f"; {exc} yet"
    record = {
        "deployment": release.deployment,
        "version": release.version,
        "hosts": hosts,
        "hosts_at_once": request.hosts_at_once,
        "max_unavailable_hosts": request.max_unavailable_hosts or request.hosts_at_once,
        "strategy": "edge-rolling",
        "state": "succeeded" if rolled.ok else "failed",
        "message": message,
        "done": rolled.done,
        "reverted": rolled.reverted,
        "skipped": rolled.skipped,
        "route_revision": revision,
    }
    await Fence.current(etcd).put(DEPLOYMENTS + app, json.dumps(record))
    return RolloutResult(
        rolled.ok, release.deployment, message, done=rolled.done, reverted=rolled.reverted,
        skipped=rolled.skipped,
    )  # fmt: skip
