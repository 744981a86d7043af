"""Blue-green across the fleet behind edge proxies: one cutover from one etcd revision.

``blue_green`` is the controller's side of it. The app's hosts are split in two: *green*
(the first half, rounded up) and *blue* (the rest). Then:

1. the edges stop routing to green (one edge-route revision; the blue hosts carry every
   request, the old release), and the function waits until every edge applied it;
2. green gets the new release (``roll_out``, all green hosts at once: none is in rotation);
   if it fails, green is unwound by ``roll_out`` and the edges route to every host again,
   so the fleet stays on the old release;
3. **the cutover**: one edge-route revision sends every edge's traffic to green, on the new
   release; every request an edge takes after applying it is answered by the new release;
4. blue gets the new release, out of rotation; then the edges route to every host again.

When the edges route straight to instances (the app hosts run with ``--instance-ip``),
``edge_blue_green`` runs ``baton.cluster.instancecut.staged_blue_green`` instead: every
host stages the release, one revision cuts every edge over, no host leaves the rotation.

``edge_blue_green`` runs it for the controller and keeps the release the fleet served before
in ``/baton/cutovers/APP``: a new leader resuming the deployment after the cutover (the edge
route already names the new release) goes on with blue only. An edge that does not apply
a route within ``APPLY_TIMEOUT`` fails the deployment with its name.

Every write here (edge routes, the cutover record, the deployment record; ``roll_out`` its
own) is fenced on the controller's term (``Fence.current``): a leader deposed mid-cutover
changes nothing after it, and its next write raises ``Fenced``.

The data plane never waits on this: each step is a change of the edges' tables that their
proxies apply atomically, and in-flight requests finish where they started.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from baton.cluster import keys
from baton.cluster.edge import EdgeRoute, publish, published, wait_applied
from baton.cluster.edgeroll import edge_rolling
from baton.cluster.etcd import Etcd
from baton.cluster.fence import Fence
from baton.cluster.instancecut import instances_ready, staged_blue_green
from baton.cluster.rollout import DEPLOYMENTS, HOST_TIMEOUT, RolloutResult, roll_out

APPLY_TIMEOUT = 30.0  # for every edge to apply an edge-route revision
CUTOVERS = keys.ROOT + "cutovers/"  # APP → the deployment in progress and the release before


@dataclass
class CutoverResult:
    ok: bool
    message: str
    cutover_revision: int | None = None  # the edge-route revision that switched the fleet
    green: list[str] = field(default_factory=list)
    blue: list[str] = field(default_factory=list)


def split(hosts: Sequence[str]) -> tuple[list[str], list[str]]:
    """Green (deployed first, then given every request) and blue (kept serving meanwhile)."""
    half = (len(hosts) + 1) // 2
    return list(hosts[:half]), list(hosts[half:])


async def blue_green(
    etcd: Etcd,
    release: keys.DesiredRelease,
    hosts: Sequence[str],
    *,
    listen: str,
    previous: str,
    configs: dict[str, str] | None = None,
    health_path: str = "/up",
    holder: str = "baton",
    host_timeout: float = HOST_TIMEOUT,
    apply_timeout: float = APPLY_TIMEOUT,
    switched: bool = False,
) -> CutoverResult:
    """Move ``hosts`` (serving ``previous`` through the edges on ``listen``) to ``release``.
    ``switched``: the cutover already happened (a new leader resuming): only blue is left."""
    if len(hosts) < 2:
        raise ValueError("blue-green through the edges needs at least 2 app hosts")
    green, blue = split(hosts)
    result = CutoverResult(False, "", green=green, blue=blue)

    def route(names: Sequence[str], version: str) -> EdgeRoute:
        return EdgeRoute(release.app, listen, tuple(names), version, health_path)

    if not switched:
        failed = await _green(
            etcd, release, hosts, green, result, route, previous, configs=configs,
            holder=holder, host_timeout=host_timeout, apply_timeout=apply_timeout,
        )  # fmt: skip
        if failed:
            return result
    second = await roll_out(
        etcd,
        replace(release, deployment=f"{release.deployment}-blue"),
        blue,
        hosts_at_once=len(blue),
        configs=configs,
        holder=holder,
        host_timeout=host_timeout,
    )
    if not second.ok:  # the edges keep serving the new release from green
        result.message = f"blue hosts: {second.message}; {release.version} is served by green"
        return result
    await wait_applied(etcd, await publish(etcd, route(hosts, release.version)), apply_timeout)
    result.ok = True
    result.message = f"{release.app} {release.version} is live on {len(hosts)} host(s)"
    return result


async def _green(
    etcd: Etcd,
    release: keys.DesiredRelease,
    hosts: Sequence[str],
    green: list[str],
    result: CutoverResult,
    route: Callable[[Sequence[str], str], EdgeRoute],
    previous: str,
    *,
    configs: dict[str, str] | None,
    holder: str,
    host_timeout: float,
    apply_timeout: float,
) -> bool:
    """Steps 1-3: green out of rotation, deployed, then the cutover. True when it failed."""
    blue = [h for h in hosts if h not in green]
    await wait_applied(etcd, await publish(etcd, route(blue, previous)), apply_timeout)
    first = await roll_out(
        etcd,
        replace(release, deployment=f"{release.deployment}-green"),
        green,
        hosts_at_once=len(green),
        configs=configs,
        holder=holder,
        host_timeout=host_timeout,
    )
    if not first.ok:
        await wait_applied(etcd, await publish(etcd, route(hosts, previous)), apply_timeout)
        result.message = f"green hosts: {first.message}; the fleet stays on {previous}"
        return True
    result.cutover_revision = await publish(etcd, route(green, release.version))
    await wait_applied(etcd, result.cutover_revision, apply_timeout)
    return False


async def edge_blue_green(etcd: Etcd, request: keys.DeployRequest, holder: str) -> RolloutResult:
    """The controller's side of a ``baton deploy`` through the edges (``edge:`` in baton.yml):
    ``blue_green`` from the release the edges route to now; with no edge route yet (the first
    deploy) ``edgeroll.edge_rolling``: a rollout, then the edges' first route. The outcome is recorded under the
    request's deployment id in ``/baton/deployments/APP``, as ``roll_out`` records its own."""
    release, hosts = request.release, list(request.hosts)
    assert request.edge is not None
    route = await published(etcd, release.app)
    if (
        route is not None
        and not request.canary
        and (route.instances or await instances_ready(etcd, release.app, route.version, hosts))
    ):  # the edges route to instances: every host stays in rotation (baton.cluster.instancecut)
        return await staged_blue_green(etcd, request, holder)
    if route is None or len(hosts) < 2:
        # No route yet (the first deploy) or one host: the hosts roll out under a sub-id of
        # their own, then the edges get the route, and only then is the request's outcome
        # recorded (a leader dying between the two resumes the rollout and still publishes).
        return await edge_rolling(etcd, request, holder)
    cutover: int | None = None
    # What the fleet served before, kept apart: after the cutover the edge route names
    # the new release, and a leader resuming this deployment must not take that for it.
    kv = await etcd.get(CUTOVERS + release.app)
    mine = json.loads(kv.value) if kv is not None else {}
    if mine.get("deployment") == release.deployment:
        previous = str(mine["previous"])
    else:
        previous = route.version
        body = {"deployment": release.deployment, "previous": previous}
        await Fence.current(etcd).put(CUTOVERS + release.app, json.dumps(body))
    try:
        result = await blue_green(
            etcd, release, hosts, listen=request.edge, previous=previous,
            configs=request.configs, health_path=request.edge_health, holder=holder,
            switched=route.version == release.version != previous,
        )  # fmt: skip
        ok, message, cutover = result.ok, result.message, result.cutover_revision
    except TimeoutError as exc:  # an edge did not apply a route in time
        ok, message = False, f"{exc}; the edges that did serve its route"
    record = {
        "deployment": release.deployment,
        "version": release.version,
        "hosts": hosts,
        "hosts_at_once": request.hosts_at_once,
        "strategy": "edge-blue-green",
        "state": "succeeded" if ok else "failed",
        "message": message,
        "cutover_revision": cutover,
    }
    await Fence.current(etcd).put(DEPLOYMENTS + release.app, json.dumps(record))
    return RolloutResult(ok, release.deployment, message, done=hosts if ok else [])
