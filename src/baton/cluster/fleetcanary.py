"""A canary across the fleet: the weight moves on every proxy from one etcd revision, and the
judge sums every publisher's figures.

``canary`` is the controller's side of a canary at the edges: green (the first half of the
app's hosts) gets the release out of rotation, then each weight is one edge-route revision
that every edge applies, judged on the new release's requests summed over every edge
(``fleet_figures``). ``edge_canary`` runs it for the controller (``baton deploy`` of an app
with ``edge.listen`` whose strategy is canary) and records the outcome in
``/baton/deployments/APP``; ``judge`` (pure) is the verdict of one step.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import replace

from baton.cluster import keys
from baton.cluster.cutover import APPLY_TIMEOUT, CutoverResult, blue_green, edge_blue_green, split
from baton.cluster.edge import EdgeRoute, fleet_figures, publish, published, wait_applied
from baton.cluster.etcd import Etcd
from baton.cluster.rollout import DEPLOYMENTS, HOST_TIMEOUT, RolloutResult, roll_out


async def canary(
    etcd: Etcd,
    release: keys.DesiredRelease,
    hosts: Sequence[str],
    *,
    listen: str,
    previous: str,
    steps: Sequence[tuple[int, float]] = ((10, 30.0), (50, 30.0)),
    max_error_rate: float = 0.05,
    min_requests: int = 20,
    configs: dict[str, str] | None = None,
    health_path: str = "/up",
    holder: str = "baton",
    host_timeout: float = HOST_TIMEOUT,
    apply_timeout: float = APPLY_TIMEOUT,
) -> CutoverResult:
    """A canary across the fleet at the edges: green gets the release out of rotation, then
    each ``(weight, hold)`` of ``steps`` is one edge-route revision (the same split on every
    edge) held ``hold`` seconds, judged on the new release's requests summed over every edge
    (``fleet_figures``). Over ``max_error_rate`` (with at least ``min_requests``): the edges
    go back to blue, green is rolled back, and every host serves ``previous`` again.
    Otherwise the cutover and blue follow as in ``blue_green``."""
    if len(hosts) < 2:
        raise ValueError("a canary through the edges needs at least 2 app hosts")
    green, blue = split(hosts)
    result = CutoverResult(False, "", green=green, blue=blue)

    def route(names: Sequence[str], version: str) -> EdgeRoute:
        return EdgeRoute(release.app, listen, tuple(names), version, health_path)

    await wait_applied(etcd, await publish(etcd, route(blue, previous)), apply_timeout)
    first = await roll_out(
        etcd, replace(release, deployment=f"{release.deployment}-green"), green,
        hosts_at_once=len(green), configs=configs, holder=holder, host_timeout=host_timeout,
    )  # fmt: skip
    if not first.ok:
        await wait_applied(etcd, await publish(etcd, route(hosts, previous)), apply_timeout)
        result.message = f"green hosts: {first.message}; the fleet stays on {previous}"
        return result
    loop = asyncio.get_running_loop()
    for weight, hold in steps:
        split_route = replace(
            route(blue, previous),
            canary_hosts=tuple(green),
            canary_version=release.version,
            canary_weight=weight,
        )
        await wait_applied(etcd, await publish(etcd, split_route), apply_timeout)
        before = (await fleet_figures(etcd, release.app)).get(release.version, {})
        deadline = loop.time() + hold
        verdict: str | None = None
        while verdict is None and loop.time() < deadline:
            await asyncio.sleep(min(0.5, hold))
            now = (await fleet_figures(etcd, release.app)).get(release.version, {})
            verdict = judge(before, now, max_error_rate, min_requests)
        if verdict is not None:  # the canary failed: back to previous everywhere
            await wait_applied(etcd, await publish(etcd, route(blue, previous)), apply_timeout)
            undo = replace(
                release, version=previous, deployment=f"{release.deployment}-undo", rollback=True
            )
            await roll_out(
                etcd, undo, green, hosts_at_once=len(green), configs=configs, holder=holder,
                host_timeout=host_timeout,
            )  # fmt: skip
            await wait_applied(etcd, await publish(etcd, route(hosts, previous)), apply_timeout)
            result.message = f"canary at {weight}%: {verdict}; the fleet stays on {previous}"
            return result
    result.cutover_revision = await publish(etcd, route(green, release.version))
    await wait_applied(etcd, result.cutover_revision, apply_timeout)
    rest = await blue_green(
        etcd, release, hosts, listen=listen, previous=previous, configs=configs,
        health_path=health_path, holder=holder, host_timeout=host_timeout,
        apply_timeout=apply_timeout, switched=True,
    )  # fmt: skip
    rest.cutover_revision = result.cutover_revision
    return rest


def judge(
    before: dict[str, int], now: dict[str, int], max_error_rate: float, min_requests: int
) -> str | None:
    """Why the canary fails on the counts between ``before`` and ``now``, or None (pure)."""
    requests = max(0, now.get("requests", 0) - before.get("requests", 0))
    errors = max(0, now.get("errors", 0) - before.get("errors", 0))
    if requests < min_requests or errors / requests <= max_error_rate:
        return None
    return (
        f"error rate {errors / requests:.0%} over {requests} requests"
        f" (at most {max_error_rate:.0%})"
    )


async def edge_canary(etcd: Etcd, request: keys.DeployRequest, holder: str) -> RolloutResult:
    """The controller's side of ``baton deploy`` of a canary through the edges: ``canary``
    from the release the edges route to now (with no edge route yet, or a single host,
    ``edge_blue_green``'s plain rollout). The outcome is recorded under the request's
    deployment id in ``/baton/deployments/APP``."""
    release, hosts = request.release, list(request.hosts)
    assert request.edge is not None
    route = await published(etcd, release.app)
    if route is None or len(hosts) < 2:
        return await edge_blue_green(etcd, request, holder)
    cutover: int | None = None
    try:
        result = await canary(
            etcd, release, hosts, listen=request.edge, previous=route.version,
            steps=request.canary, max_error_rate=request.canary_max_error_rate,
            min_requests=request.canary_min_requests, configs=request.configs,
            health_path=request.edge_health, holder=holder,
        )  # fmt: skip
        ok, message, cutover = result.ok, result.message, result.cutover_revision
    except TimeoutError as exc:
        ok, message = False, f"{exc}; the edges that did serve its route"
    record = {
        "deployment": release.deployment,
        "version": release.version,
        "hosts": hosts,
        "hosts_at_once": request.hosts_at_once,
        "strategy": "edge-canary",
        "state": "succeeded" if ok else "failed",
        "message": message,
        "cutover_revision": cutover,
    }
    await etcd.put(DEPLOYMENTS + release.app, json.dumps(record))
    return RolloutResult(ok, release.deployment, message, done=hosts if ok else [])
