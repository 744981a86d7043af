"""Blue-green at the edges with every host in rotation: the edges route straight to instances.

When every app host runs its instances on its private address (``--instance-ip``) and
publishes them in its host record, a blue-green through the edges needs no host out of
rotation. ``staged_blue_green`` is the controller's side of it, in steps recorded in
``/baton/deployments/APP`` (``step``), so a new leader resumes at the step it finds:

1. ``staging``: one desired-release revision asks every host to *stage* the release
   (``phase: stage``: start it beside the old one, ready and smoke-tested, the host's proxy
   unchanged); wait for every host's ``staged`` progress;
2. ``cutover``: one edge-route revision names the new release's instances on every host
   (``EdgeRoute.instances``); wait until every reachable edge applied it;
3. ``draining``: wait until no edge has a request in flight to the old release (the edges'
   figures, measured after they applied the cutover), at most ``drain_timeout``;
4. ``switching``: one desired-release revision asks every host to switch its own proxy to
   the staged release (``phase: switch``); the host drains and stops the old instances.

A failure before the cutover (a host fails its staging, becomes unreachable or times out)
discards the staged release on every host (``phase: discard``) and gives each host its
desired release back: the edges never left the old release, nothing users see changed.
An edge that does not apply the cutover in time: the edges go back to the old release (its
instances still run) and the staged release is discarded.

Every write (desired releases, the record and its steps, edge routes) is fenced on the
controller's term and the deploy lock (``baton.cluster.fence``): a leader deposed mid-way
changes nothing after it; its next write raises ``Fenced``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from baton.cluster import keys
from baton.cluster.edge import EdgeRoute, in_flight, publish, published, wait_applied
from baton.cluster.election import DeployLock
from baton.cluster.etcd import Etcd, put_op
from baton.cluster.fence import Fence
from baton.cluster.registry import hosts as fleet_hosts
from baton.cluster.rollout import DEPLOYMENTS, HOST_TIMEOUT, RolloutResult, deployment_record
from baton.errors import EtcdError, EtcdUnavailable

APPLY_TIMEOUT = 30.0  # for every edge to apply an edge-route revision
DRAIN_TIMEOUT = 30.0  # for the edges' requests to the old release to finish
POLL_INTERVAL = 0.1
STEPS = ("staging", "cutover", "draining", "switching")


async def instances_ready(etcd: Etcd, app: str, version: str, names: Sequence[str]) -> bool:
    """Whether every host of ``names`` publishes reachable instances of ``app`` ``version``:
    the edges can route straight to instances (else they route to the hosts' proxies)."""
    records = {v.record.name: v.record for v in await fleet_hosts(etcd)}
    return all(
        name in records and records[name].endpoints.get(app, {}).get(version) for name in names
    )


async def _write(fence: Fence, releases: dict[str, keys.DesiredRelease]) -> None:
    """Every host's desired release in one transaction: one revision for all (fenced)."""
    ops = [put_op(keys.desired_key(h, r.app), r.to_json()) for h, r in releases.items()]
    if ops:
        await fence.txn(ops)


async def _wait(
    etcd: Etcd, names: Sequence[str], app: str, deployment: str, ok: set[str], timeout: float
) -> list[str]:
    """Wait for every host's progress on ``deployment`` to end; why each that did not end in
    a state of ``ok`` failed (empty: all did)."""
    failures: dict[str, str] = {}
    finished: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(finished) < len(names):
        with contextlib.suppress(EtcdUnavailable, EtcdError):  # the deadline bounds it
            alive, _ = await etcd.get_prefix(keys.ALIVE)
            reachable = {keys.name_after(keys.ALIVE, kv.key) for kv in alive}
            for name in names:
                if name in finished:
                    continue
                kv = await etcd.get(keys.progress_key(name, app))
                progress = None
                if kv is not None:
                    with contextlib.suppress(ValueError):
                        progress = keys.Progress.from_json(kv.value)
                if progress is not None and progress.deployment == deployment and progress.finished:
                    finished.add(name)
                    if progress.state not in ok:
                        failures[name] = f"{name}: {progress.message or progress.state}"
                    continue
                if name not in reachable:
                    finished.add(name)
                    failures[name] = f"{name} became unreachable (its lease lapsed)"
        if len(finished) < len(names):
            if time.monotonic() > deadline:
                for name in names:
                    if name not in finished:
                        failures[name] = f"{name} did not finish within {timeout:g}s"
                break
            await asyncio.sleep(POLL_INTERVAL)
    return [failures[n] for n in names if n in failures]


async def staged_blue_green(
    etcd: Etcd,
    request: keys.DeployRequest,
    holder: str,
    *,
    host_timeout: float = HOST_TIMEOUT,
    apply_timeout: float = APPLY_TIMEOUT,
    drain_timeout: float = DRAIN_TIMEOUT,
) -> RolloutResult:
    """Carry out ``request`` (an app with ``edge:``, its edge route already published) as in
    the module docstring; called again with the same deployment id, resume at its step."""
    release, names = request.release, list(request.hosts)
    app, deployment = release.app, release.deployment
    assert request.edge is not None
    lock = await DeployLock.acquire(etcd, app, f"{holder} ({deployment})")
    fence = Fence.current(etcd).with_lock(lock.key, lock.revision, f"the deploy lock of {app}")
    try:
        known = await deployment_record(etcd, app, deployment)
        if known is not None:
            if known.get("state") != "running":
                ok = known.get("state") == "succeeded"
                return RolloutResult(ok, deployment, str(known.get("message", "")))
            record = known
        else:
            route = await published(etcd, app)
            assert route is not None
            before: dict[str, str | None] = {}
            for name in names:
                desired = await etcd.get(keys.desired_key(name, app))
                before[name] = None if desired is None else desired.value.decode()
            record = {
                "deployment": deployment,
                "app": app,
                "version": release.version,
                "hosts": names,
                "hosts_at_once": len(names),
                "strategy": "edge-blue-green",
                "state": "running",
                "step": "staging",
                "previous": route.version,
                "desired_before": before,
                "cutover_revision": None,
            }
        run = _Run(fence, request, record, host_timeout, apply_timeout, drain_timeout)
        ok, message = await run.steps()
        record.update(state="succeeded" if ok else "failed", message=message)
        await fence.put(DEPLOYMENTS + app, json.dumps(record))
        return RolloutResult(ok, deployment, message, done=names if ok else [])
    finally:
        await lock.release()


class _Run:
    """One staged blue-green's steps, each recorded before it runs."""

    def __init__(
        self,
        fence: Fence,
        request: keys.DeployRequest,
        record: dict[str, Any],
        host_timeout: float,
        apply_timeout: float,
        drain_timeout: float,
    ) -> None:
        self.fence = fence
        self.etcd = fence.etcd
        self.request = request
        self.record = record
        self.release = request.release
        self.names = list(request.hosts)
        self.previous = str(record["previous"])
        self.host_timeout = host_timeout
        self.apply_timeout = apply_timeout
        self.drain_timeout = drain_timeout

    def route(self, version: str) -> EdgeRoute:
        assert self.request.edge is not None
        return EdgeRoute(
            self.release.app, self.request.edge, tuple(self.names), version,
            self.request.edge_health, instances=True,
        )  # fmt: skip

    def phase(self, phase: str) -> dict[str, keys.DesiredRelease]:
        deployment = f"{self.release.deployment}-{phase}"
        return {
            name: replace(
                self.release,
                deployment=deployment,
                phase=phase,
                config=self.request.configs.get(name, self.release.config),
                # Whatever baton.yml configures: at the edges it is one blue-green, and
                # only a blue-green starts the whole release beside the old one.
                strategy="blue-green",
            )
            for name in self.names
        }

    async def step(self, name: str) -> None:
        self.record["step"] = name
        await self.fence.put(DEPLOYMENTS + self.release.app, json.dumps(self.record))

    async def steps(self) -> tuple[bool, str]:
        app, version = self.release.app, self.release.version
        start = str(self.record.get("step", "staging"))
        if start == "discarding":
            return False, await self.discard(str(self.record.get("message", "")))
        if start == "staging":
            failures = await self.stage()
            if failures:
                return False, await self.discard("; ".join(failures))
            await self.step("cutover")
            start = "cutover"
        if start == "cutover":
            revision = await publish(self.etcd, self.route(version), self.fence)
            self.record["cutover_revision"] = revision
            try:
                await wait_applied(self.etcd, revision, self.apply_timeout)
            except TimeoutError as exc:  # back to the old instances, still running
                back = await publish(self.etcd, self.route(self.previous), self.fence)
                with contextlib.suppress(TimeoutError):
                    await wait_applied(self.etcd, back, self.apply_timeout)
                self.record["cutover_revision"] = None
                return False, await self.discard(str(exc))
            await self.step("draining")
            start = "draining"
        if start == "draining":
            await self.drain(int(self.record["cutover_revision"]))
            await self.step("switching")
        switch = self.phase("switch")
        await _write(self.fence, switch)
        deployment = f"{self.release.deployment}-switch"
        failures = await _wait(self.etcd, self.names, app, deployment, {"done"}, self.host_timeout)
        if failures:  # the edges serve the new release; say which host's proxy did not follow
            return False, (
                f"{version} serves every edge, but these hosts' own proxies did not switch: "
                + "; ".join(failures)
            )
        return True, f"{app} {version} is live on {len(self.names)} host(s), cut over at once"

    async def stage(self) -> list[str]:
        """Every host starts the release without switching (one revision); the failures."""
        reachable = {v.record.name for v in await fleet_hosts(self.etcd) if v.reachable}
        gone = [n for n in self.names if n not in reachable]
        if gone:
            return [f"{', '.join(gone)} unreachable when the deploy began"]
        await _write(self.fence, self.phase("stage"))
        deployment = f"{self.release.deployment}-stage"
        return await _wait(
            self.etcd, self.names, self.release.app, deployment, {"staged", "done"},
            self.host_timeout,
        )  # fmt: skip

    async def drain(self, revision: int) -> None:
        """Until no edge has a request in flight to the old release (measured after it
        applied the cutover), or ``drain_timeout``: then the hosts may stop it."""
        deadline = time.monotonic() + self.drain_timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(EtcdUnavailable, EtcdError):
                busy, late = await in_flight(self.etcd, self.release.app, self.previous, revision)
                if busy == 0 and not late:
                    return
            await asyncio.sleep(POLL_INTERVAL)

    async def discard(self, why: str) -> str:
        """Nothing was cut over: every host drops the staged release and gets its desired
        release back; the message of the failed deployment."""
        self.record["message"] = why
        await self.step("discarding")
        await _write(self.fence, self.phase("discard"))
        deployment = f"{self.release.deployment}-discard"
        await _wait(
            self.etcd, self.names, self.release.app, deployment, {"done", "failed"},
            self.host_timeout,
        )  # fmt: skip
        before = self.record.get("desired_before", {})
        restore = {
            name: keys.DesiredRelease.from_json(raw)
            for name, raw in before.items()
            if isinstance(raw, str)
        }
        await _write(self.fence, restore)
        return f"{why}; nothing was cut over: the fleet stays on {self.previous}"
