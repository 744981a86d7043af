"""A canary across the fleet: the weight moves on every proxy from one etcd revision, and the
verdict uses the whole fleet's traffic, judged by the single-host canary's rules.

Two topologies, one judge:

- **At the edges** (``canary``, ``edge.listen`` in baton.yml): green (the first half of the
  app's hosts) gets the release out of rotation; each weight is one edge-route revision
  naming two host sets, so every edge splits its traffic the same way; the edges publish
  their figures.
- **Without edges** (``host_canary``, topology a): every host runs the new release beside
  the old and splits its own proxy's traffic; each weight is one transaction writing every
  host's desired release with that ``canary_weight`` (``baton.cluster.hostcanary`` applies
  it on the host); the hosts publish their figures.

Each step is held and judged by ``judge_step``: the figures of every publisher (counters
and ``ttfb`` histograms, ``baton.cluster.figures``) are summed from the step's baseline on
(``FleetTally``: a publisher's proxy restart starts a new segment), and the single-host
judge decides: ``analysis.guard`` (the error ceiling, checked at every poll, fails at once),
then at the hold's end ``analysis.judge`` (error ceiling, error increase, latency ratio with
its significance test, ``min_requests``) and ``canary.decide`` (pass; abort; hold again when
inconclusive; confirm a latency failure over a fresh window). A failed step puts every host
back on the previous release; after the last step the release is promoted everywhere.

Each step is recorded in ``/baton/deployments/APP`` (``canary``: step, weight, the revision
that set it, the figures baseline, the previous releases) before it is held: a leader that
dies mid-canary is replaced by one that **resumes at that step** with the same baseline,
instead of starting the canary again. ``edge_canary`` and ``host_canary`` are the
controller's entry points; both record the outcome under the request's deployment id.

Unreachable hosts are handled as a rollout handles them: a host whose lease is gone when the
canary begins fails it before anything changes, or with ``skip_unreachable`` is left out of
it (and reported); a host of the canary that lapses while a step is held fails the step
(``judge_step``'s ``lost``, ``lapse_watch``), which puts every host back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import replace
from typing import Any

from baton.cluster import keys
from baton.cluster.cutover import APPLY_TIMEOUT, CutoverResult, blue_green, edge_blue_green, split
from baton.cluster.edge import EdgeRoute, publish, published, wait_applied
from baton.cluster.election import DeployLock
from baton.cluster.etcd import Etcd, put_op
from baton.cluster.figures import EDGE_FIGURES, HOST_FIGURES, Figures, FleetTally, read_figures
from baton.cluster.rollout import (
    DEPLOYMENTS,
    HOST_TIMEOUT,
    RolloutResult,
    deployment_record,
    roll_out,
)
from baton.deploy.analysis import AnalysisConfig, Verdict, guard, judge
from baton.deploy.canary import GUARD_MIN_REQUESTS, decide
from baton.errors import EtcdError, EtcdUnavailable

log = logging.getLogger("baton.cluster")

POLL = 0.5  # seconds between two reads of the fleet's figures during a step
Record = Callable[[dict[str, Any]], Awaitable[None]]


def analysis_of(request: keys.DeployRequest) -> AnalysisConfig:
    """The judge's settings a deploy request carries (``deploy.canary.analysis``)."""
    return AnalysisConfig(
        min_requests=request.canary_min_requests,
        max_error_rate=request.canary_max_error_rate,
        max_error_rate_increase=request.canary_max_error_rate_increase,
        max_latency_ratio=request.canary_max_latency_ratio,
        confidence=request.canary_confidence,
    )


def verdict(
    tally: FleetTally, stable: str, version: str, weight: int, cfg: AnalysisConfig
) -> Verdict:
    """The single-host judge on the whole fleet's traffic since the tally's baseline (pure).
    At weight 100 the stable release has no traffic: the canary is compared with itself."""
    canary = tally.window(version)
    baseline = canary if weight >= 100 else tally.window(stable)
    return judge(baseline, canary, cfg)


def tripped(tally: FleetTally, version: str, cfg: AnalysisConfig) -> str | None:
    """The always-on guard on the fleet's canary traffic so far: why to abort now, or None."""
    w = tally.window(version)
    if not guard(w, cfg.max_error_rate, GUARD_MIN_REQUESTS):
        return None
    return (
        f"error rate {w.error_rate:.1%} ({w.errors} of {w.requests} requests summed over the"
        f" fleet) is above the {cfg.max_error_rate:.1%} ceiling"
    )


async def judge_step(
    read: Callable[[], Awaitable[Figures]],
    baseline: Figures,
    *,
    stable: str,
    version: str,
    weight: int,
    hold: float,
    cfg: AnalysisConfig,
    max_extensions: int,
    lost: Callable[[], Awaitable[str | None]] | None = None,
) -> tuple[bool, str]:
    """Hold one step and judge it on the figures ``read`` gives (every publisher's); whether
    it passed, and why in words. ``lost``, asked at every read, says why the step cannot go
    on (a host of the canary became unreachable), or None."""
    tally = FleetTally(baseline, (stable, version))
    latest = baseline
    loop = asyncio.get_running_loop()
    deadline = loop.time() + hold
    extensions, confirming = 0, False
    while True:
        await asyncio.sleep(max(0.05, min(POLL, deadline - loop.time())))
        with contextlib.suppress(EtcdUnavailable, EtcdError):
            latest = await read()
            tally.add(latest)
            why = await lost() if lost is not None else None
            if why is not None:
                return False, why
        why = tripped(tally, version, cfg)
        if why is not None:
            return False, why
        if loop.time() < deadline:
            continue
        decision = decide(
            verdict(tally, stable, version, weight, cfg),
            cfg,
            extensions=extensions,
            max_extensions=max_extensions,
            confirming=confirming,
        )
        log.info(
            "fleet canary %s at %d%%: %s: %s", version, weight, decision.action, decision.reason
        )
        if decision.action in ("next", "abort"):
            return decision.action == "next", decision.reason
        if decision.action == "extend":
            extensions += 1
        else:  # confirm a latency failure over a fresh window
            confirming, extensions = True, 0
            tally = FleetTally(latest, (stable, version))
        deadline = loop.time() + hold


def _only(figures: Figures, publishers: Collection[str] | None) -> Figures:
    return {p: f for p, f in figures.items() if publishers is None or p in publishers}


async def reachable(etcd: Etcd) -> set[str]:
    """The hosts whose lease is alive."""
    alive, _ = await etcd.get_prefix(keys.ALIVE)
    return {keys.name_after(keys.ALIVE, kv.key) for kv in alive}


def unreachable(hosts: Sequence[str], alive: Collection[str]) -> list[str]:
    """The hosts of ``hosts`` not in ``alive``, in order (pure)."""
    return [h for h in hosts if h not in alive]


def lapse_watch(etcd: Etcd, hosts: Sequence[str]) -> Callable[[], Awaitable[str | None]]:
    """For ``judge_step``'s ``lost``: why the canary cannot go on when a host of it lapsed."""

    async def lost() -> str | None:
        gone = unreachable(hosts, await reachable(etcd))
        return f"{', '.join(gone)} became unreachable (its lease lapsed)" if gone else None

    return lost


# -- at the edges ------------------------------------------------------------------------------


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
    analysis: AnalysisConfig | None = None,
    max_extensions: int = 3,
    configs: dict[str, str] | None = None,
    health_path: str = "/up",
    holder: str = "baton",
    host_timeout: float = HOST_TIMEOUT,
    apply_timeout: float = APPLY_TIMEOUT,
    resume: dict[str, Any] | None = None,
    record: Record | None = None,
) -> CutoverResult:
    """A canary across the fleet at the edges: green gets the release out of rotation, then
    each ``(weight, hold)`` of ``steps`` is one edge-route revision (the same split on every
    edge) held and judged (``judge_step``) on the traffic summed over every edge. A failed
    step sends the edges back to blue and rolls green back: every host serves ``previous``.
    Otherwise the cutover and blue follow as in ``blue_green``. ``analysis`` defaults to
    ``max_error_rate`` and ``min_requests`` with the judge's other defaults.

    ``record`` is given each step (step, weight, revision, baseline) before it is held;
    ``resume`` (such a record, from a leader that died) starts at that step with that
    baseline, green being deployed already."""
    if len(hosts) < 2:
        raise ValueError("a canary through the edges needs at least 2 app hosts")
    cfg = analysis or AnalysisConfig(min_requests=min_requests, max_error_rate=max_error_rate)
    green, blue = split(hosts)
    result = CutoverResult(False, "", green=green, blue=blue)

    def route(names: Sequence[str], version: str) -> EdgeRoute:
        return EdgeRoute(release.app, listen, tuple(names), version, health_path)

    if resume is None:
        await wait_applied(etcd, await publish(etcd, route(blue, previous)), apply_timeout)
        first = await roll_out(
            etcd, replace(release, deployment=f"{release.deployment}-green"), green,
            hosts_at_once=len(green), configs=configs, holder=holder, host_timeout=host_timeout,
        )  # fmt: skip
        if not first.ok:
            await wait_applied(etcd, await publish(etcd, route(hosts, previous)), apply_timeout)
            result.message = f"green hosts: {first.message}; the fleet stays on {previous}"
            return result

    async def read() -> Figures:
        return await read_figures(etcd, EDGE_FIGURES, release.app)

    start = int(resume["step"]) if resume else 0
    for n, (weight, hold) in enumerate(steps):
        if n < start:
            continue
        if resume is not None and n == start:
            baseline: Figures = resume.get("baseline") or {}
        else:
            split_route = replace(
                route(blue, previous),
                canary_hosts=tuple(green),
                canary_version=release.version,
                canary_weight=weight,
            )
            revision = await publish(etcd, split_route)
            await wait_applied(etcd, revision, apply_timeout)
            baseline = await read()
            if record is not None:
                await record({"step": n, "weight": weight, "revision": revision,
                              "baseline": baseline})  # fmt: skip
        ok, why = await judge_step(
            read, baseline, stable=previous, version=release.version, weight=weight,
            hold=hold, cfg=cfg, max_extensions=max_extensions, lost=lapse_watch(etcd, hosts),
        )  # fmt: skip
        if not ok:  # the canary failed: back to previous everywhere
            await wait_applied(etcd, await publish(etcd, route(blue, previous)), apply_timeout)
            undo = replace(
                release, version=previous, deployment=f"{release.deployment}-undo", rollback=True
            )
            back = await roll_out(  # a green host that lapsed must not hold the others back
                etcd, undo, green, hosts_at_once=len(green), configs=configs, holder=holder,
                host_timeout=host_timeout, skip_unreachable=True,
            )  # fmt: skip
            # A lapsed green host may still serve the canary from its proxy: not routed to.
            served = [h for h in hosts if h not in back.skipped]
            await wait_applied(etcd, await publish(etcd, route(served, previous)), apply_timeout)
            result.message = f"canary at {weight}%: {why}; the fleet stays on {previous}"
            if back.skipped:
                result.message += (
                    f" ({', '.join(back.skipped)}: unreachable, not switched back, left out of"
                    " the edges' route)"
                )
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


async def edge_canary(etcd: Etcd, request: keys.DeployRequest, holder: str) -> RolloutResult:
    """The controller's side of ``baton deploy`` of a canary through the edges: ``canary``
    from the release the edges route to now (with no edge route yet, or a single host,
    ``edge_blue_green``'s plain rollout). Each step is recorded in ``/baton/deployments/APP``
    so a new leader resumes there; the outcome is recorded under the request's deployment id.

    An app host unreachable when the canary begins fails it before anything changes, or with
    ``skip_unreachable`` is left out (of the canary and of the edges' route, as it keeps the
    old release) and reported; a host that lapses while a step is held fails the step.
    """
    release, hosts = request.release, list(request.hosts)
    assert request.edge is not None
    known = await deployment_record(etcd, release.app, release.deployment) or {}
    if known.get("state") in ("succeeded", "failed"):
        ok = known["state"] == "succeeded"
        return RolloutResult(ok, release.deployment, str(known.get("message", "")))
    resume = known.get("canary") if isinstance(known.get("canary"), dict) else None
    skipped: list[str] = [str(h) for h in known.get("skipped", [])] if resume else []
    hosts = [h for h in hosts if h not in skipped]
    base: dict[str, Any] = {
        "deployment": release.deployment,
        "app": release.app,
        "version": release.version,
        "hosts": hosts,
        "hosts_at_once": request.hosts_at_once,
        "strategy": "edge-canary",
        "skipped": skipped,
    }
    if resume is not None:
        previous = str(known.get("previous_version"))
    else:
        route = await published(etcd, release.app)
        if route is None or len(hosts) < 2:
            return await edge_blue_green(etcd, request, holder)
        previous = route.version
        gone = unreachable(hosts, await reachable(etcd))
        if gone and (not request.skip_unreachable or len(hosts) - len(gone) < 2):
            why = "" if not request.skip_unreachable else " (a canary needs 2 reachable hosts)"
            message = (
                f"{', '.join(gone)} unreachable when the canary began{why}; nothing changed,"
                f" the fleet stays on {previous}"
            )
            failed = {**base, "state": "failed", "message": message}
            await etcd.put(DEPLOYMENTS + release.app, json.dumps(failed))
            return RolloutResult(False, release.deployment, message)
        skipped, hosts = gone, [h for h in hosts if h not in gone]
        base["hosts"], base["skipped"] = hosts, skipped

    async def record(step: dict[str, Any]) -> None:
        body = {**base, "state": "running", "previous_version": previous, "canary": step}
        await etcd.put(DEPLOYMENTS + release.app, json.dumps(body))

    cutover: int | None = None
    try:
        result = await canary(
            etcd, release, hosts, listen=request.edge, previous=previous,
            steps=request.canary, analysis=analysis_of(request),
            max_extensions=request.canary_max_hold_extensions, configs=request.configs,
            health_path=request.edge_health, holder=holder, resume=resume, record=record,
        )  # fmt: skip
        ok, message, cutover = result.ok, result.message, result.cutover_revision
    except TimeoutError as exc:
        ok, message = False, f"{exc}; the edges that did serve its route"
    if skipped:
        message += f"; skipped (unreachable, left out of the edges' route): {', '.join(skipped)}"
    final = {
        **base,
        "state": "succeeded" if ok else "failed",
        "message": message,
        "cutover_revision": cutover,
    }
    await etcd.put(DEPLOYMENTS + release.app, json.dumps(final))
    return RolloutResult(ok, release.deployment, message, done=hosts if ok else [], skipped=skipped)


# -- without edges ----------------------------------------------------------------------------


async def _switch(etcd: Etcd, releases: dict[str, keys.DesiredRelease], app: str) -> int:
    """Every host's desired release in one transaction; the revision."""
    ops = [put_op(keys.desired_key(h, app), r.to_json()) for h, r in releases.items()]
    return (await etcd.txn([], ops)).revision


async def _await_hosts(
    etcd: Etcd,
    hosts: Sequence[str],
    app: str,
    deployment: str,
    arrived: Callable[[keys.Progress], bool],
    timeout: float,
) -> list[str]:
    """Wait until every host's progress on ``deployment`` has ``arrived``; what went wrong
    (a host that failed, became unreachable or was too slow), empty when all arrived."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        problems: list[str] = []
        waiting = False
        try:
            alive, _ = await etcd.get_prefix(keys.ALIVE)
            reachable = {keys.name_after(keys.ALIVE, kv.key) for kv in alive}
            for host in hosts:
                kv = await etcd.get(keys.progress_key(host, app))
                progress = None
                if kv is not None:
                    with contextlib.suppress(ValueError):
                        progress = keys.Progress.from_json(kv.value)
                if progress is not None and progress.deployment == deployment:
                    if arrived(progress):
                        continue
                    if progress.finished:
                        problems.append(f"{host}: {progress.state}: {progress.message}")
                        continue
                if host not in reachable:
                    problems.append(f"{host} became unreachable (its lease lapsed)")
                else:
                    waiting = True
        except (EtcdUnavailable, EtcdError):
            waiting = True
        if problems or not waiting:
            return problems
        if loop.time() > deadline:
            return [f"not every host arrived within {timeout:g}s"]
        await asyncio.sleep(0.1)


def _at(weight: int) -> Callable[[keys.Progress], bool]:
    return lambda progress: progress.weight == weight and not progress.finished


async def host_canary(
    etcd: Etcd, request: keys.DeployRequest, holder: str, *, host_timeout: float = HOST_TIMEOUT
) -> RolloutResult:
    """The controller's side of a canary without edges: every host of the request runs the
    release beside its live one; each ``deploy.canary`` step is one revision of every host's
    ``canary_weight``, judged on every host's figures summed; then promoted everywhere, or
    every host back on its previous release. A first deploy (a host with no release yet, or
    hosts on different releases) is a plain ``roll_out``.

    A host unreachable when the canary begins fails it before anything changes, or with
    ``skip_unreachable`` is left out of it (no desired release written, its figures not
    judged) and reported. A host of the canary whose lease lapses fails the step (also while
    it is held): every host of it gets its previous release back."""
    release, hosts, app = request.release, list(request.hosts), request.release.app
    deployment = release.deployment
    known = await deployment_record(etcd, app, deployment) or {}
    if known.get("state") in ("succeeded", "failed"):
        ok = known["state"] == "succeeded"
        return RolloutResult(ok, deployment, str(known.get("message", "")))
    mine = known.get("canary") if isinstance(known.get("canary"), dict) else None
    previous: dict[str, keys.DesiredRelease] = {}
    skipped: list[str] = []
    if mine is not None:  # a resumed canary: its hosts are the ones it recorded
        previous = {h: keys.DesiredRelease.from_json(raw) for h, raw in mine["previous"].items()}
        skipped = [str(h) for h in mine.get("skipped", [])]
    else:
        for host in hosts:
            kv = await etcd.get(keys.desired_key(host, app))
            if kv is not None:
                previous[host] = keys.DesiredRelease.from_json(kv.value, f"etcd key {kv.key}")
    stable = {p.version for p in previous.values()}
    if mine is None and (len(previous) < len(hosts) or len(stable) != 1 or not request.canary):
        return await roll_out(
            etcd, release, hosts, hosts_at_once=request.hosts_at_once,
            skip_unreachable=request.skip_unreachable, configs=request.configs, holder=holder,
            host_timeout=host_timeout, max_unavailable=request.max_unavailable_hosts or None,
        )  # fmt: skip
    (stable_version,) = stable
    cfg = analysis_of(request)
    lock = await DeployLock.acquire(etcd, app, f"{holder} ({deployment})")
    body: dict[str, Any] = {
        "deployment": deployment,
        "app": app,
        "version": release.version,
        "hosts": hosts,
        "hosts_at_once": len(hosts),
        "strategy": "host-canary",
        "state": "running",
    }
    try:
        if mine is None:
            gone = unreachable(hosts, await reachable(etcd))
            if gone and (not request.skip_unreachable or len(gone) == len(hosts)):
                message = (
                    f"{', '.join(gone)} unreachable when the canary began; nothing changed,"
                    f" every host stays on {stable_version}"
                )
                final = {**body, "state": "failed", "message": message, "skipped": []}
                await etcd.put(DEPLOYMENTS + app, json.dumps(final))
                return RolloutResult(False, deployment, message)
            skipped = gone
            previous = {h: p for h, p in previous.items() if h not in gone}
        return await _host_canary(
            etcd, request, body, previous, skipped, mine, stable_version, cfg, host_timeout
        )
    finally:
        await lock.release()


async def _host_canary(
    etcd: Etcd,
    request: keys.DeployRequest,
    body: dict[str, Any],
    previous: dict[str, keys.DesiredRelease],
    skipped: list[str],
    mine: dict[str, Any] | None,
    stable_version: str,
    cfg: AnalysisConfig,
    host_timeout: float,
) -> RolloutResult:
    """``host_canary`` on the hosts of ``previous`` (the reachable ones), under the lock."""
    release, app, deployment = request.release, request.release.app, request.release.deployment
    members = [h for h in request.hosts if h in previous]  # the hosts in the canary, in order
    step: dict[str, Any] = dict(mine or {})
    step["previous"] = {h: p.to_json() for h, p in previous.items()}
    step["skipped"] = skipped
    body = {**body, "skipped": skipped}

    async def record() -> None:
        await etcd.put(DEPLOYMENTS + app, json.dumps({**body, "canary": step}))

    def wanted(weight: int | None) -> dict[str, keys.DesiredRelease]:
        configs = request.configs
        return {
            h: replace(release, config=configs.get(h, release.config), canary_weight=weight)
            for h in members
        }

    async def read() -> Figures:
        return _only(await read_figures(etcd, HOST_FIGURES, app), members)

    message, ok = "", False
    await record()
    start = int(step.get("step", 0))
    for n, (weight, hold) in enumerate(request.canary):
        if n < start or step.get("phase") == "promote":
            continue
        if not (mine is not None and n == start and "baseline" in step):
            revision = await _switch(etcd, wanted(weight), app)
            problems = await _await_hosts(etcd, members, app, deployment, _at(weight), host_timeout)
            if problems:
                message = f"canary at {weight}%: {'; '.join(problems)}"
                break
            step.update(step=n, weight=weight, revision=revision, baseline=await read())
            await record()
        passed, why = await judge_step(
            read, step["baseline"], stable=stable_version, version=release.version,
            weight=weight, hold=hold, cfg=cfg,
            max_extensions=request.canary_max_hold_extensions, lost=lapse_watch(etcd, members),
        )  # fmt: skip
        if not passed:
            message = f"canary at {weight}%: {why}"
            break
    else:
        step["phase"] = "promote"
        await record()
        await _switch(etcd, wanted(None), app)
        problems = await _await_hosts(
            etcd, members, app, deployment, lambda p: p.state == "done", host_timeout
        )
        ok = not problems
        message = (
            f"{app} {release.version} is live on {len(members)} host(s)"
            if ok
            else f"promoting: {'; '.join(problems)}"
        )
    if not ok:
        undo = f"{deployment}-undo"
        back = {h: replace(p, deployment=undo, rollback=True) for h, p in previous.items()}
        await _switch(etcd, back, app)
        problems = await _await_hosts(
            etcd, members, app, undo, lambda p: p.state == "done", host_timeout
        )
        message += f"; every host is back on {stable_version}"
        if problems:
            message += f" (except: {'; '.join(problems)})"
    if skipped:
        message += f"; skipped (unreachable): {', '.join(skipped)}"
    final = {**body, "state": "succeeded" if ok else "failed", "message": message}
    await etcd.put(DEPLOYMENTS + app, json.dumps(final))
    return RolloutResult(ok, deployment, message, done=members if ok else [], skipped=skipped)
